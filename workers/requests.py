"""The run request: what ``submit_run`` accepts, validated with pydantic on both sides.

The producer (:func:`workers.client.submit`) validates before sending; the worker validates
again, because any Celery client in any language can
``send_task("agent_runner.submit_run", ..., queue="runs")``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runner_core.errors import InvalidRequestError, describe_validation_error
from runner_core.session import MAX_ID_LENGTH, validate_identifier

__all__ = [
    "DEFAULT_MAX_MESSAGE_CHARS",
    "POSITIONAL_FIELDS",
    "MultitaskStrategy",
    "RunRequest",
]

MultitaskStrategy = Literal["enqueue", "reject", "interrupt"]
#: The order of ``submit_run``'s positional arguments.
POSITIONAL_FIELDS = ("app_name", "user_id", "session_id", "message")
DEFAULT_MAX_MESSAGE_CHARS = 100_000


def _max_message_chars() -> int:
    raw = os.environ.get("AGENT_RUNNER_MAX_MESSAGE_CHARS", "")
    return int(raw) if raw.strip().isdigit() else DEFAULT_MAX_MESSAGE_CHARS


def _describe(exc: ValidationError) -> str:
    return describe_validation_error(exc, whole="request")


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
    run_timeout_s: float | None = Field(default=None, gt=0)

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
    def _message(cls, value: str | dict[str, Any] | None, info: Any) -> Any:
        if isinstance(value, dict) and value.get("role", "user") != "user":
            raise ValueError(f"a message dict must have role 'user', got {value.get('role')!r}")
        return value

    def model_post_init(self, context: Any, /) -> None:
        if self.message is None and not self.resume and not self.tool_confirmations:
            raise InvalidRequestError(
                "message is required (text or an OpenAI-style message dict) unless "
                "resume=True or tool_confirmations are given."
            )
        limit = _max_message_chars()
        size = len(json.dumps([self.message, self.messages]))
        if size > limit:
            raise InvalidRequestError(
                f"message (with messages) is {size} characters of JSON; the limit is {limit} "
                "(AGENT_RUNNER_MAX_MESSAGE_CHARS). Send less, or raise the limit on the workers "
                "and producers."
            )

    @classmethod
    def validate_request(cls, **fields: Any) -> RunRequest:
        """Build a request from keyword arguments.

        Raises:
            InvalidRequestError: a missing, unknown or ill-typed field, or an oversized message;
                the message names every bad field.
        """
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise InvalidRequestError(f"invalid run request: {_describe(exc)}") from None
        except ValueError as exc:  # raised by model_post_init / validators directly
            raise InvalidRequestError(f"invalid run request: {exc}") from None

    @classmethod
    def from_task_arguments(cls, args: Sequence[Any], kwargs: Mapping[str, Any]) -> RunRequest:
        """Bind ``submit_run``'s positional and keyword arguments, then validate.

        Raises:
            InvalidRequestError: as :meth:`validate_request`, also for too many positionals or
                a field given twice.
        """
        if len(args) > len(POSITIONAL_FIELDS):
            raise InvalidRequestError(
                f"submit_run takes {len(POSITIONAL_FIELDS)} positional arguments "
                f"({', '.join(POSITIONAL_FIELDS)}), got {len(args)}; pass the others by keyword."
            )
        fields = dict(zip(POSITIONAL_FIELDS, args, strict=False))
        for name, value in kwargs.items():
            if name in fields:
                raise InvalidRequestError(
                    f"submit_run got {name!r} twice (positional and keyword)."
                )
            fields[name] = value
        missing = [name for name in POSITIONAL_FIELDS if name not in fields]
        if missing:
            raise InvalidRequestError(
                f"invalid run request: missing {', '.join(missing)}; submit_run needs "
                "app_name, user_id, session_id and message."
            )
        return cls.validate_request(**fields)

    def task_arguments(self) -> tuple[list[Any], dict[str, Any]]:
        """``(args, kwargs)`` for ``send_task``: the positionals, then non-default options."""
        data = self.model_dump()
        args = [data.pop(name) for name in POSITIONAL_FIELDS]
        defaults = {name: info.default for name, info in type(self).model_fields.items()}
        kwargs = {k: v for k, v in data.items() if v != defaults.get(k)}
        return args, kwargs
