"""The routes the web console needs besides the gateway's run and session routes.

- ``GET /v1/apps``: the app names the workers serve (the built-in ``assistant`` and the names
  of ``AGENT_RUNNER_AGENTS``, read from the same settings the workers read);
- ``GET /v1/sessions/{app_name}``: the key's user's live sessions of an app, newest first,
  without their events (an operator key names the user with ``?user_id=``).

Everything else the console does (runs, events, confirmations, history, traces, feedback) goes
through the gateway's own routes, like any other client. Both routes need an API key
(:func:`gateway.deps.api_key`); a key only ever lists its own user's sessions.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from runner_core.session import validate_identifier
from workers.agents import BUILTIN_APP

from .deps import Gateway, Key, gateway_of, user_of

__all__ = ["router"]

router = APIRouter(tags=["console"])


GatewayDep = Annotated[Gateway, Depends(gateway_of)]


@router.get("/v1/apps")
async def list_apps(key: Key, gateway: GatewayDep) -> dict[str, list[str]]:
    """The apps a run can be submitted to: ``assistant`` and those of ``AGENT_RUNNER_AGENTS``."""
    configured = gateway.settings.workers.agents
    return {"apps": [BUILTIN_APP, *sorted(name for name in configured if name != BUILTIN_APP)]}


@router.get("/v1/sessions/{app_name}")
async def list_sessions(
    app_name: str,
    key: Key,
    gateway: GatewayDep,
    user_id: Annotated[str | None, Query()] = None,
) -> dict[str, Any]:
    """The user's live sessions of ``app_name``, most recently updated first (no events)."""
    validate_identifier(app_name, "app_name")
    user = user_of(key, user_id)
    sessions = await gateway.sessions.list_sessions(app_name, user)
    sessions.sort(key=lambda session: session.updated_at, reverse=True)
    return {
        "app_name": app_name,
        "user_id": user,
        "sessions": [
            {
                "session_id": session.id,
                "event_count": session.event_count,
                "created_at": session.created_at.isoformat(),
                "updated_at": session.updated_at.isoformat(),
            }
            for session in sessions
        ],
    }
