"""The invocation context: what an agent knows about the run it is executing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from .events import EventBase, EventError, MessageEvent, RunStatus
from .messages import Message
from .session import TEMP_PREFIX, Session

__all__ = ["InvocationContext", "RunOutcome", "ToolDecision"]

E = TypeVar("E", bound=EventBase)

#: A caller's answer to a paused tool call: approve, refuse, or approve with edited arguments.
ToolDecision = bool | dict[str, Any]


@dataclass(slots=True)
class RunOutcome:
    """How the agent ended the run; the Runner turns it into the completion event."""

    status: RunStatus = "completed"
    final_text: str | None = None
    error: EventError | None = None


@dataclass(slots=True)
class InvocationContext:
    app_name: str
    user_id: str
    session: Session
    invocation_id: str
    request_id: str | None = None
    tool_confirmations: dict[str, ToolDecision] = field(default_factory=dict)
    #: ``temp:`` state of this invocation only; never stored.
    temp_state: dict[str, Any] = field(default_factory=dict)
    outcome: RunOutcome = field(default_factory=RunOutcome)

    def event(self, cls: type[E], author: str, **fields: Any) -> E:
        """A new event of this invocation; the Runner numbers it (``seq``) on emission."""
        return cls(invocation_id=self.invocation_id, author=author, **fields)

    def message_event(self, author: str, message: Message, **fields: Any) -> MessageEvent:
        return self.event(MessageEvent, author, message=message, **fields)

    @property
    def state(self) -> dict[str, Any]:
        """Session state as this invocation sees it, ``temp:`` keys included."""
        if not self.temp_state:
            return self.session.state
        merged = dict(self.session.state)
        merged.update(self.temp_state)
        return merged

    def note_temp_state(self, delta: dict[str, Any]) -> None:
        for key, value in delta.items():
            if key.startswith(TEMP_PREFIX):
                self.temp_state[key] = value
