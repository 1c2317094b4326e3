"""Every error agent-runner raises, in one tree.

::

    AgentRunnerError
    ├── InvalidRequestError          a caller mistake: bad argument, unknown name, bad message
    │   ├── SessionNotFoundError     resume/confirm against a session that does not exist
    │   ├── InvocationOwnedError     an invocation ID bound to another (app, user, session)
    │   ├── TraceNotFoundError       no trace of that invocation (runner_core.traces)
    │   └── UnknownToolCallError     a confirmation for a call ID nobody is waiting on
    ├── ConfigurationError           a bad setting (environment variable, URL, option)
    ├── FencedError                  a write refused: the writer no longer owns its run
    ├── ModelError                   the model endpoint failed or misbehaved
    │   ├── ModelHTTPError           the endpoint answered 4xx/5xx
    │   ├── ModelTimeoutError        no answer in time
    │   └── ModelConnectionError     the endpoint could not be reached
    ├── RunFailedError               a worker's run ended failed, timeout or cancelled
    ├── ToolError                    a tool call could not be carried out (shown to the model)
    │   ├── ToolNotFoundError
    │   ├── ToolArgumentsError
    │   └── ToolExecutionError
    ├── SessionBackendError          the session store failed (server down, timeout, ...)
    │   └── CorruptSessionDataError  stored data that cannot be decoded; never skipped
    ├── MemoryBackendError           the memory store failed, or holds data it cannot read
    └── ArtifactBackendError         the artifact store failed (server down, bytes missing, ...)

Messages say what was wrong and how to fix it. Driver errors are translated at the
boundary with ``raise ... from exc`` so the original stays in ``__cause__``.
"""

from __future__ import annotations

import re
import reprlib
from typing import Any

from pydantic import ValidationError

__all__ = [
    "AgentRunnerError",
    "ArtifactBackendError",
    "ConfigurationError",
    "CorruptSessionDataError",
    "FencedError",
    "InvalidRequestError",
    "InvocationOwnedError",
    "MemoryBackendError",
    "ModelConnectionError",
    "ModelError",
    "ModelHTTPError",
    "ModelTimeoutError",
    "RunFailedError",
    "SessionBackendError",
    "SessionNotFoundError",
    "ToolArgumentsError",
    "ToolError",
    "ToolExecutionError",
    "ToolNotFoundError",
    "TraceNotFoundError",
    "UnknownToolCallError",
    "describe_validation_error",
    "lone_surrogate",
    "safe_text",
    "shown",
]


_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxdict, _SHOWN.maxlist = 2, 4, 4
_SHOWN.maxstring = _SHOWN.maxother = 60


def shown(value: object) -> str:
    """``value`` as an error message may quote it: a ``repr`` cut short (long text, deep or
    large containers), with lone surrogates and control characters escaped, so the message is
    always short, printable and valid UTF-8."""
    return safe_text(_SHOWN.repr(value))


def lone_surrogate(text: str) -> str | None:
    """Why ``text`` cannot be encoded as UTF-8 (so it can be neither stored nor sent as JSON):
    ``"a lone surrogate (U+DFFF) at position 1"``, or None when it can. JSON decoders accept
    an escaped ``"\\udfff"`` without its pair, so such text does reach the workers."""
    found = _SURROGATE_RE.search(text)
    if found is None:
        return None
    return f"a lone surrogate (U+{ord(found.group()):04X}) at position {found.start()}"


def safe_text(text: str) -> str:
    """``text`` with every lone surrogate written as its escape (``\\udfff``): valid UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def describe_validation_error(exc: ValidationError, *, whole: str) -> str:
    """``field.path: problem; ...`` for a pydantic error; ``whole`` names an error on the root.

    Path parts that are not plain names (the keys of a caller's dict, an unknown argument's
    name) are quoted with :func:`shown`, so the message never echoes unencodable or huge text.
    """

    def part(item: object) -> str:
        return str(item) if isinstance(item, int) or _NAME_RE.fullmatch(str(item)) else shown(item)

    return safe_text(
        "; ".join(
            f"{'.'.join(part(p) for p in e['loc']) or whole}: "
            f"{e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
    )


class AgentRunnerError(Exception):
    """Root of every error raised by agent-runner."""


class InvalidRequestError(AgentRunnerError, ValueError):
    """The caller passed something invalid. The message names the field and the fix."""


class SessionNotFoundError(InvalidRequestError):
    """An operation needs an existing session and there is none."""


class UnknownToolCallError(InvalidRequestError):
    """A tool confirmation names a call ID that no paused run is waiting on."""


class TraceNotFoundError(InvalidRequestError):
    """No trace of that invocation: it never ran with traces on, or its trace expired or was
    deleted with its session."""


class InvocationOwnedError(InvalidRequestError):
    """A delivery's invocation ID is bound to another (app, user, session): the first claim
    of an invocation ID binds it, and a delivery for anyone else is refused without writing."""


class FencedError(AgentRunnerError):
    """A write was refused because the writer no longer owns the run: a newer owner (a
    greater fencing token) took the session or the run's lease. Nothing was written; the
    writer must stop quietly and leave the run to its owner."""


class ConfigurationError(AgentRunnerError, ValueError):
    """A setting is invalid. The message names the variable or option."""


class ModelError(AgentRunnerError):
    """The model endpoint failed.

    Attributes:
        error_type: a short machine-readable kind (``http_error``, ``timeout``, ...).
        code: the HTTP status or provider error code when known.
    """

    error_type = "model_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class ModelHTTPError(ModelError):
    error_type = "model_http_error"


class ModelTimeoutError(ModelError):
    error_type = "model_timeout"


class ModelConnectionError(ModelError):
    error_type = "model_connection_error"


class RunFailedError(AgentRunnerError):
    """A run ended ``failed``, ``timeout`` or ``cancelled``.

    The run task (``agent_runner.submit_run``) raises it after publishing the run's
    ``runner.completion``, so the task's state in Flower and in the result backend follows the
    run; ``AsyncResult.get()`` re-raises it in the producer. The arguments are plain JSON, so
    Celery's JSON result backend rebuilds the same exception.

    Attributes:
        status: the run's status: ``failed``, ``timeout`` or ``cancelled``.
        error_type: the completion's ``error.type`` (``model_http_error``, ``timeout``,
            ``cancelled``, ...), or the status when the completion carries no error.
        message: the completion's ``error.message``.
        completion: the ``runner.completion`` event as published, as a JSON dict.
    """

    def __init__(
        self,
        status: str,
        error_type: str,
        message: str,
        completion: dict[str, Any] | None = None,
    ) -> None:
        completion = completion or {}
        super().__init__(status, error_type, message, completion)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.completion = completion

    @classmethod
    def from_completion(cls, completion: dict[str, Any]) -> RunFailedError:
        """The error for a ``runner.completion`` event's JSON dict."""
        status = str(completion.get("status"))
        error = completion.get("error") or {}
        return cls(
            status,
            str(error.get("type") or status),
            str(error.get("message") or f"the run ended {status}."),
            completion,
        )

    def __str__(self) -> str:
        return f"run {self.status}: {self.error_type}: {self.message}"

    def __repr__(self) -> str:
        # What Flower and the worker log show: the completion is left out (it can be long).
        return (
            f"{type(self).__name__}(status={self.status!r}, error_type={self.error_type!r}, "
            f"message={self.message!r})"
        )


class ToolError(AgentRunnerError):
    """A tool call failed. The runner turns it into a tool result the model can read."""

    error_type = "tool_error"


class ToolNotFoundError(ToolError):
    error_type = "tool_not_found"


class ToolArgumentsError(ToolError):
    error_type = "tool_invalid_arguments"


class ToolExecutionError(ToolError):
    error_type = "tool_execution_error"


class SessionBackendError(AgentRunnerError):
    """The session store failed. The message names the server and what to check."""


class CorruptSessionDataError(SessionBackendError):
    """Stored session data could not be decoded. It is reported, never skipped."""


class MemoryBackendError(AgentRunnerError):
    """The long-term memory store failed (server down, timeout, ...) or holds an item it
    cannot decode (reported, never skipped). The message names the store and what to check."""


class ArtifactBackendError(AgentRunnerError):
    """The artifact store failed (its index, its blob store or its database). The message
    names the store and what to check; stored data that cannot be read is reported here too,
    never skipped."""
