"""The HTTP gateway of agent-runner (``agent-runner serve``): submit runs, stream their events
as resumable server-sent events, cancel and confirm runs, read sessions, webhooks.

Install with ``pip install 'agent-runner[gateway]'``; docs/gateway.md describes the API.
"""

from __future__ import annotations

from .app import create_app
from .settings import ApiKey, GatewaySettings

__all__ = ["ApiKey", "GatewaySettings", "create_app"]
