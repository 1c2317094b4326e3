"""The gateway's errors and how every error becomes a JSON body.

Every response that is not a success is ``{"error": {"type": ..., "message": ...}}`` with the
status below; the message says what was wrong and how to fix it, and never echoes a key::

    GatewayError                    raised by the gateway itself
    ├── UnauthorizedError    401    no API key, or one the gateway does not know
    ├── NotFoundError        404    no such run/session for this key (another user's too)
    ├── ConflictError        409    the run is not in a state that allows it (not paused)
    ├── BodyTooLargeError    413    the body is over AGENT_RUNNER_GATEWAY_MAX_BODY_BYTES
    └── BadBodyError         400    the body is not a JSON object

Errors of the layers below are mapped where they surface (:func:`error_status`):
``InvalidRequestError`` 422 (``UnknownInvocationError``, ``TraceNotFoundError`` and
``InvocationOwnedError`` 404), ``ConfigurationError`` 501 (the feature is not configured),
``EventBusUnavailableError``, ``BrokerUnavailableError`` and a store that failed 503, anything
else 500 (logged, with a message that leaks nothing).
"""

from __future__ import annotations

from runner_core.errors import (
    AgentRunnerError,
    ArtifactBackendError,
    ConfigurationError,
    InvalidRequestError,
    InvocationOwnedError,
    SessionBackendError,
    TraceNotFoundError,
)
from workers.bus import EventBusError, EventBusUnavailableError, UnknownInvocationError
from workers.client import BrokerUnavailableError

__all__ = [
    "BadBodyError",
    "BodyTooLargeError",
    "ConflictError",
    "GatewayError",
    "NotFoundError",
    "UnauthorizedError",
    "error_body",
    "error_status",
]


class GatewayError(AgentRunnerError):
    """An error the gateway answers with ``status`` and the error ``type``."""

    status = 500
    type = "internal"


class UnauthorizedError(GatewayError):
    status = 401
    type = "unauthorized"


class NotFoundError(GatewayError):
    status = 404
    type = "not_found"


class ConflictError(GatewayError):
    status = 409
    type = "conflict"


class BodyTooLargeError(GatewayError):
    status = 413
    type = "body_too_large"


class BadBodyError(GatewayError):
    status = 400
    type = "bad_body"


def error_status(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and error type of an exception raised while serving a request."""
    if isinstance(exc, GatewayError):
        return exc.status, exc.type
    if isinstance(exc, UnknownInvocationError | TraceNotFoundError | InvocationOwnedError):
        return 404, "not_found"
    if isinstance(exc, InvalidRequestError):
        return 422, "invalid_request"
    if isinstance(exc, ConfigurationError):
        return 501, "not_configured"
    unavailable = (EventBusUnavailableError, BrokerUnavailableError, SessionBackendError,
                   ArtifactBackendError)  # fmt: skip
    if isinstance(exc, unavailable):
        return 503, "unavailable"
    if isinstance(exc, EventBusError):
        return 502, "event_bus_error"
    return 500, "internal"


def error_body(error_type: str, message: str) -> dict[str, dict[str, str]]:
    """The JSON body of every error response."""
    return {"error": {"type": error_type, "message": message}}
