"""Events: the one record of everything a run does.

Every event of an invocation carries a gap-free ``seq`` (0, 1, 2, ...). Non-partial events are
appended to the session; every event (partial or not) is what subscribers receive. Encoding and
decoding go through :meth:`Event.to_json` / :meth:`Event.from_json` only.

Types:

- ``message.delta``      partial assistant text (``delta``); never stored
- ``message``            a complete message: the user input, assistant text, or assistant tool calls
- ``tool.result``        the result of one tool call (``message`` with role ``tool``)
- ``state.update``       a change of session state with no message (``state_delta``)
- ``error``              something failed (``error``); the run may go on or end
- ``run.paused``         the run waits for tool confirmations (``actions.requested_confirmations``)
- ``run.queued``         the run has not started: its session is busy with another run
                         (``waiting_for``); published by a worker, never stored
- ``run.restarted``      a new attempt at the run starts after its worker died (``attempt``);
                         the ``message.delta`` text published after ``discard_after_seq`` is
                         void; never stored
- ``runner.completion``  always the last event of a run (``status``, ``final_text``, ``usage``,
                         ``cost``, ``state``)

``python -m runner_core.schema docs/event.schema.json`` writes the JSON Schema of events.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .messages import Message, ToolCall

__all__ = [
    "COMPLETION_STATUSES",
    "Event",
    "EventActions",
    "EventError",
    "EventType",
    "RunStatus",
    "Usage",
    "event_json_schema",
]

EventType = Literal[
    "message.delta",
    "message",
    "tool.result",
    "state.update",
    "error",
    "run.paused",
    "run.queued",
    "run.restarted",
    "runner.completion",
]
RunStatus = Literal["completed", "failed", "cancelled", "timeout", "paused"]
COMPLETION_STATUSES: tuple[str, ...] = ("completed", "failed", "cancelled", "timeout", "paused")


class Usage(BaseModel):
    """Token usage. On a model's ``message`` event: that call. On the completion: the run."""

    model_config = ConfigDict(extra="forbid")

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    model_calls: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
            model_calls=self.model_calls + other.model_calls,
        )


class EventError(BaseModel):
    """What went wrong: a machine-readable ``type``, a readable ``message``, maybe a ``code``."""

    model_config = ConfigDict(extra="forbid")

    type: str
    message: str
    code: str | None = None


class EventActions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requested_confirmations: list[ToolCall] = Field(
        default_factory=list,
        description="Tool calls waiting for a confirmation (on run.paused events).",
    )
    skip_summarization: bool = False


def _now() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """One event of an invocation. See the module docstring for the types."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    invocation_id: str
    seq: int = Field(default=0, ge=0)
    type: EventType
    author: str
    partial: bool = False
    created_at: datetime = Field(default_factory=_now)
    app_name: str
    user_id: str
    session_id: str
    request_id: str | None = None
    message: Message | None = None
    delta: str | None = None
    usage: Usage | None = None
    error: EventError | None = None
    state_delta: dict[str, Any] = Field(default_factory=dict)
    actions: EventActions = Field(default_factory=EventActions)
    waiting_for: str | None = Field(
        default=None,
        description="On run.queued only: the invocation ID of the run this one waits behind.",
    )
    attempt: int | None = Field(
        default=None,
        ge=2,
        description=(
            "On run.restarted only: which attempt at the run starts here (2 for the first "
            "redelivery after its worker died)."
        ),
    )
    discard_after_seq: int | None = Field(
        default=None,
        ge=-1,
        description=(
            "On run.restarted only: the message.delta events published before this one with a "
            "greater seq are void (a reply the dead attempt never finished); drop their text. "
            "The new attempt streams that reply again."
        ),
    )
    # Set on runner.completion only.
    status: RunStatus | None = None
    final_text: str | None = None
    cost: float | None = None
    state: dict[str, Any] | None = None

    def is_runner_completion(self) -> bool:
        """True for the last event of every run; stop reading here."""
        return self.type == "runner.completion"

    def is_final_response(self) -> bool:
        """True for a complete answer to show the user: assistant text without tool calls,
        or an error."""
        if self.partial:
            return False
        if self.type == "error":
            return True
        return (
            self.type == "message"
            and self.message is not None
            and self.message.role == "assistant"
            and not self.message.tool_calls
        )

    def is_user_message(self) -> bool:
        return self.type == "message" and self.message is not None and self.message.role == "user"

    def to_json(self) -> str:
        return self.model_dump_json(exclude_defaults=False)

    @classmethod
    def from_json(cls, data: str | bytes) -> Event:
        return cls.model_validate_json(data)


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema that every event published or stored validates against."""
    schema = Event.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://agent-runner.dev/schemas/event.schema.json"
    return schema


def render_event_json_schema() -> str:
    return json.dumps(event_json_schema(), indent=2, sort_keys=True) + "\n"
