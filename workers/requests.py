"""The run request: what ``submit_run`` accepts, validated with pydantic on both sides.

The producer (:func:`workers.client.submit`) validates before sending; the worker validates
again, because any Celery client in any language can
``send_task("agent_runner.submit_run", ..., queue="runs")`` with any arguments and any task ID.
Whatever arrives, the worker can say what was wrong (:class:`RunRequest`, :class:`TaskID`)
without echoing text that cannot be encoded, and knows which invocation ID the failure is
published under.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
)

from runner_core.errors import (
    InvalidRequestError,
    describe_validation_error,
    lone_surrogate,
    safe_text,
    shown,
)
from runner_core.messages import coerce_message
from runner_core.run_config import RunConfig, coerce_run_config
from runner_core.session import validate_identifier
from runner_core.wire import ID_RE, MAX_ID_LENGTH, SUBMIT_RUN

from .settings import Settings

__all__ = [
    "INVALID_TASK_ID_PREFIX",
    "POSITIONAL_FIELDS",
    "SUBMIT_RUN",
    "MultitaskStrategy",
    "RunRequest",
    "TaskID",
    "json_kind",
]

# SUBMIT_RUN, the run task's registered name, is runner_core.wire's (re-exported here).
MultitaskStrategy = Literal["enqueue", "reject", "interrupt"]
#: The order of ``submit_run``'s positional arguments.
POSITIONAL_FIELDS = ("app_name", "user_id", "session_id", "message")
#: The invocation ID of a run whose task ID cannot name its stream is this prefix and a
#: digest of the task ID ('/' is outside the ID alphabet: no valid invocation ID looks so).
INVALID_TASK_ID_PREFIX = "invalid-task-id/"
_ID_RULE = f"1-{MAX_ID_LENGTH} letters, digits or '._:@+=-'"
#: At most this many places with unencodable text are named in one error.
_MAX_PROBLEMS = 5
#: The validation context key of the message size limit (``AGENT_RUNNER_MAX_MESSAGE_CHARS``).
_LIMIT = "max_message_chars"


def json_kind(value: object) -> str:
    """What kind of JSON value ``value`` is, for error messages that must not echo it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return f"an array of {len(value)}"
    return f"a {type(value).__name__}"


@dataclass(frozen=True, slots=True)
class TaskID:
    """A run's Celery task ID as a worker reads it.

    The task ID is the invocation ID, the name of the run's stream and channel. One that is
    not a valid invocation ID (``problem`` says why) still gets its run's failure published:

    - under the task ID itself when it is 1-128 characters of text that UTF-8 can encode
      (outside the ID alphabet, so no reader of a valid ID ever sees it);
    - otherwise (not a string, empty, longer, or holding a lone surrogate) under
      ``invalid-task-id/`` and the first 32 hex digits of the SHA-256 of the task ID written
      as ASCII JSON (``json.dumps(task_id)`` in Python: ``"a\\udfff"`` for ``"a\\udfff"``,
      ``null`` for none), which ``'/'`` keeps apart from every valid ID.
    """

    invocation_id: str
    problem: str | None = None

    @classmethod
    def read(cls, task_id: object) -> TaskID:
        """The invocation ID of ``task_id``'s events and, for an invalid one, what is wrong."""
        if isinstance(task_id, str) and ID_RE.fullmatch(task_id):
            return cls(task_id)
        problem = _task_id_problem(task_id)
        if (
            isinstance(task_id, str)
            and 0 < len(task_id) <= MAX_ID_LENGTH
            and lone_surrogate(task_id) is None
        ):
            return cls(task_id, problem)
        return cls(fallback_invocation_id(task_id), problem)

    @property
    def is_fallback(self) -> bool:
        return self.invocation_id.startswith(INVALID_TASK_ID_PREFIX)


def fallback_invocation_id(task_id: object) -> str:
    """Where the events of a run whose task ID cannot name a stream go (see :class:`TaskID`)."""
    try:
        text = json.dumps(task_id)
    except (TypeError, ValueError):  # not JSON (only a Python caller can pass one)
        text = repr(task_id)
    return INVALID_TASK_ID_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:32]


def _task_id_problem(task_id: object) -> str:
    fix = f"send task IDs of {_ID_RULE} (Celery's default UUIDs are), or let Celery make them"
    if not isinstance(task_id, str):
        return f"the task ID is not a string but {json_kind(task_id)}; {fix}"
    if not task_id:
        return f"the task ID is empty; {fix}"
    surrogate = lone_surrogate(task_id)
    if surrogate is not None:
        return f"the task ID contains {surrogate}; {fix}"
    if len(task_id) > MAX_ID_LENGTH:
        return f"the task ID is {len(task_id)} characters long; {fix}"
    position, char = next((i, c) for i, c in enumerate(task_id) if not ID_RE.fullmatch(c))
    return (
        f"the task ID {shown(task_id)} has {shown(char)} at position {position}, which no "
        f"invocation ID may hold; {fix}"
    )


def unencodable_text(fields: Mapping[Any, Any]) -> list[str]:
    """Where ``fields`` (arguments by name, values nested in any way) hold text that UTF-8
    cannot encode, as ``"message.content contains a lone surrogate (U+DFFF) at position 1"``;
    at most a few places, in order. Such text could be neither stored nor published."""
    problems: list[str] = []
    pending: list[tuple[str, Any]] = [("", fields)]
    while pending and len(problems) < _MAX_PROBLEMS:
        path, value = pending.pop()
        children: list[tuple[str, Any]] = []
        if isinstance(value, str):
            surrogate = lone_surrogate(value)
            if surrogate is not None:
                problems.append(f"{path} contains {surrogate}")
        elif isinstance(value, Mapping):
            for key, item in value.items():
                surrogate = lone_surrogate(key) if isinstance(key, str) else None
                if surrogate is None:
                    children.append((_child_path(path, key), item))
                else:
                    where = f"a key of {path}" if path else "the name of an argument"
                    problems.append(f"{where} contains {surrogate}")
        elif isinstance(value, list | tuple):
            children = [(f"{path}[{i}]", item) for i, item in enumerate(value)]
        pending.extend(reversed(children))
    return problems[:_MAX_PROBLEMS]


def _child_path(path: str, key: object) -> str:
    if isinstance(key, str) and key.isidentifier():
        return f"{path}.{key}" if path else key
    return f"{path}[{shown(key)}]"


def _check_run_config(config: RunConfig) -> None:
    """What the fields of ``run_config`` cannot say for themselves: the generation settings
    (``run_config.generation.temperature``, ...), and that every value is JSON, since a run
    request travels as JSON only.

    Raises:
        InvalidRequestError: naming the field.
    """
    coerce_run_config(config)
    for name in ("generation", "runtime_state"):
        try:
            json.dumps(getattr(config, name), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(
                f"run_config.{name} holds a value that is not JSON ({safe_text(str(exc))}); "
                "send only objects, arrays, text, finite numbers, true, false and null."
            ) from None


def _limit(context: Any) -> int:
    if isinstance(context, Mapping) and isinstance(context.get(_LIMIT), int):
        return int(context[_LIMIT])
    return Settings.from_env().max_message_chars


class RunRequest(BaseModel):
    """One ``submit_run`` call. Field names are the task's argument names."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    app_name: str
    user_id: str
    session_id: str = Field(description="'' starts a new session named after the invocation ID")
    message: str | dict[str, Any] | None
    messages: list[str | dict[str, Any]] | None = None
    resume: bool = False
    tool_confirmations: dict[str, bool | dict[str, Any]] | None = None
    request_id: str | None = Field(default=None, max_length=MAX_ID_LENGTH)
    multitask_strategy: MultitaskStrategy = "enqueue"
    run_timeout_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    run_config: RunConfig | None = Field(
        default=None,
        description=(
            "this run's options (runner_core.RunConfig) as a JSON object: streaming, model, "
            "generation, max_iterations, runtime_state"
        ),
    )

    @field_validator("app_name", "user_id")
    @classmethod
    def _identifier(cls, value: str, info: Any) -> str:
        return validate_identifier(value, info.field_name)

    @field_validator("session_id")
    @classmethod
    def _session(cls, value: str) -> str:
        return validate_identifier(value, "session_id") if value else value

    @field_validator("message")
    @classmethod
    def _message(cls, value: str | dict[str, Any] | None) -> Any:
        if value is not None and (role := coerce_message(value).role) != "user":
            raise ValueError(f"a message dict must have role 'user', got {role!r}")
        return value

    @field_validator("messages")
    @classmethod
    def _messages(cls, value: list[str | dict[str, Any]] | None) -> Any:
        for i, item in enumerate(value or ()):
            coerce_message(item, field=f"messages[{i}]")
        return value

    def model_post_init(self, context: Any, /) -> None:
        if self.message is None and not self.resume and not self.tool_confirmations:
            raise InvalidRequestError(
                "message is required (text or an OpenAI-style message dict) unless "
                "resume=True or tool_confirmations are given."
            )
        limit = _limit(context)
        size = len(json.dumps([self.message, self.messages], default=str))
        if size > limit:
            raise InvalidRequestError(
                f"message (with messages) is {size} characters of JSON; the limit is {limit} "
                "(AGENT_RUNNER_MAX_MESSAGE_CHARS). Send less, or raise the limit on the workers "
                "and producers."
            )
        if self.run_config is not None:
            _check_run_config(self.run_config)

    @field_serializer("run_config")
    def _run_config_json(self, value: RunConfig | None) -> dict[str, Any] | None:
        # On the wire: the fields that were set, as the JSON object the worker validates.
        return None if value is None else value.model_dump(exclude_defaults=True)

    @classmethod
    def validate_request(cls, **fields: Any) -> RunRequest:
        """Build a request from keyword arguments; the message size limit is
        ``AGENT_RUNNER_MAX_MESSAGE_CHARS`` (:class:`~workers.settings.Settings`).

        Raises:
            InvalidRequestError: a missing, unknown or ill-typed field, text that UTF-8 cannot
                encode, or an oversized message; the message names every bad field and never
                echoes unencodable text.
            ConfigurationError: ``AGENT_RUNNER_MAX_MESSAGE_CHARS`` (or another setting) is bad.
        """
        return cls._checked(fields, Settings.from_env().max_message_chars)

    @classmethod
    def from_task_arguments(
        cls,
        args: Sequence[Any],
        kwargs: Mapping[Any, Any],
        *,
        max_message_chars: int | None = None,
    ) -> RunRequest:
        """Bind ``submit_run``'s positional and keyword arguments, then validate.

        Args:
            args, kwargs: what the task received, of any JSON type.
            max_message_chars: the message size limit; default: from the environment
                (:class:`~workers.settings.Settings`). Workers pass their settings' value.

        Raises:
            InvalidRequestError: as :meth:`validate_request`, also for too many positionals or
                a field given twice.
        """
        if len(args) > len(POSITIONAL_FIELDS):
            raise InvalidRequestError(
                f"submit_run takes {len(POSITIONAL_FIELDS)} positional arguments "
                f"({', '.join(POSITIONAL_FIELDS)}), got {len(args)}; pass the others by keyword."
            )
        fields: dict[Any, Any] = dict(zip(POSITIONAL_FIELDS, args, strict=False))
        for name, value in kwargs.items():
            if name in fields:
                raise InvalidRequestError(
                    f"submit_run got {shown(name)} twice (positional and keyword)."
                )
            fields[name] = value
        missing = [name for name in POSITIONAL_FIELDS if name not in fields]
        if missing:
            raise InvalidRequestError(
                f"invalid run request: missing {', '.join(missing)}; submit_run needs "
                "app_name, user_id, session_id and message."
            )
        if max_message_chars is None:
            max_message_chars = Settings.from_env().max_message_chars
        return cls._checked(fields, max_message_chars)

    @classmethod
    def _checked(cls, fields: Mapping[Any, Any], max_message_chars: int) -> RunRequest:
        unencodable = unencodable_text(fields)
        if unencodable:
            raise InvalidRequestError(
                f"invalid run request: {'; '.join(unencodable)}. Text must be valid Unicode "
                "(a JSON '\\ud800'-'\\udfff' escape needs its pair); send it as UTF-8."
            )
        try:
            # strict=True reaches into run_config too (a nested model keeps its own lax
            # config otherwise): "yes" is no boolean and 2.0 no iteration count, in any field.
            return cls.model_validate(fields, strict=True, context={_LIMIT: max_message_chars})
        except ValidationError as exc:
            problems = describe_validation_error(exc, whole="request")
            raise InvalidRequestError(f"invalid run request: {problems}") from None
        except RecursionError:
            raise InvalidRequestError(
                "invalid run request: it is nested too deeply to read; send plain text or "
                "chat-message dicts."
            ) from None
        except ValueError as exc:  # raised by model_post_init / validators directly
            raise InvalidRequestError(f"invalid run request: {safe_text(str(exc))}") from None

    def task_arguments(self) -> tuple[list[Any], dict[str, Any]]:
        """``(args, kwargs)`` for ``send_task``: the positionals, then non-default options."""
        data = self.model_dump()
        args = [data.pop(name) for name in POSITIONAL_FIELDS]
        defaults = {name: info.default for name, info in type(self).model_fields.items()}
        kwargs = {k: v for k, v in data.items() if v != defaults.get(k)}
        return args, kwargs
