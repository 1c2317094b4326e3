"""``agent-runner serve``: the gateway under uvicorn.

The settings are read and checked here first, so a bad or missing variable is one line naming
it, not an ASGI server's traceback; each uvicorn worker process then builds its app with
:func:`gateway.app.create_app`.
"""

from __future__ import annotations

from runner_core.errors import ConfigurationError
from workers.webhooks import WebhookSettings

from .settings import GatewaySettings

__all__ = ["serve"]

#: Seconds a stopping gateway gives open event streams before closing them (clients resume
#: on another instance with Last-Event-ID).
GRACEFUL_SHUTDOWN_S = 5


def serve(*, host: str, port: int, workers: int = 1, log_level: str = "info") -> None:
    """Serve the gateway until interrupted.

    Raises:
        ConfigurationError: a bad setting (or no API key), or uvicorn is not installed.
    """
    GatewaySettings.from_env()
    WebhookSettings.from_env()
    try:
        import uvicorn
    except ImportError:
        raise ConfigurationError(
            "agent-runner serve needs the gateway extra: pip install 'agent-runner[gateway]'."
        ) from None
    uvicorn.run(
        "gateway.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
