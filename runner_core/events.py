"""Events: the one record of everything a run does, one model per type.

``Event`` is a discriminated union on ``type``; each type has only the fields it uses:

- ``message.delta`` (:class:`MessageDeltaEvent`): partial assistant text (``delta``); never
  stored
- ``message`` (:class:`MessageEvent`): a complete message: the user input, assistant text or
  assistant tool calls (``message``; ``usage`` of the model call)
- ``tool.result`` (:class:`ToolResultEvent`): the result of one tool call (``message`` with role
  ``tool``; ``state_delta`` the tool wrote; ``error`` when it failed; ``usage`` of the model
  calls the tool made, such as an agent called as a tool)
- ``state.update`` (:class:`StateUpdateEvent`): a change of session state with no message
- ``error`` (:class:`ErrorEvent`): something failed (``error``); the run may go on or end
- ``run.paused`` (:class:`RunPausedEvent`): the run waits for a person to confirm tool calls
  (``requested_confirmations``; ``editable_params`` per call)
- ``run.queued`` (:class:`RunQueuedEvent`): the run has not started: its session is busy with
  another run (``waiting_for``); published by a worker, never stored
- ``run.restarted`` (:class:`RunRestartedEvent`): a new attempt at the run starts after its
  worker died (``attempt``); the ``message.delta`` text published after ``discard_after_seq``
  is void; never stored
- ``agent.transfer`` (:class:`AgentTransferEvent`): the conversation passes from ``author`` to
  ``to_agent`` (stored: the session's next run starts with that agent)
- ``memory.injected`` (:class:`MemoryInjectedEvent`): what long-term memory told an agent
  before its first model call (``scope``, ``query``, ``items`` with IDs and scores)
- ``runner.completion`` (:class:`RunCompletionEvent`): always the last event of a run
  (``status``, ``usage``, ``final_text``, ``cost``, ``error``) and the one that names the run
  (``app_name``, ``user_id``, ``session_id``, ``request_id``)

Every event has ``type``, ``seq`` (0, 1, 2, ... gap-free within the invocation),
``invocation_id``, ``author`` and ``created_at``; ``branch`` says which branch of a parallel
agent wrote it (absent on the main line). Its ID is ``"{invocation_id}:{seq}"``
(:attr:`EventBase.id`), so the wire leaves it out; only events stored by versions that drew
random IDs carry their own ``id``.

The wire form (:func:`encode_event`, also :meth:`EventBase.to_json`) has no null fields;
:func:`decode_event` is the one way back, and it also reads events stored by earlier versions
(one flat shape with every field, most of them null). :class:`EventNumbering` is the one owner
of ``seq`` for every path that emits events.

``python -m runner_core.schema docs/event.schema.json`` writes the JSON Schema of events.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, TypeAlias, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from .messages import Message, ToolCall

__all__ = [
    "COMPLETION_STATUSES",
    "AgentTransferEvent",
    "ErrorEvent",
    "Event",
    "EventBase",
    "EventError",
    "EventNumbering",
    "EventType",
    "InjectedMemory",
    "MemoryInjectedEvent",
    "MessageDeltaEvent",
    "MessageEvent",
    "RunCompletionEvent",
    "RunPausedEvent",
    "RunQueuedEvent",
    "RunRestartedEvent",
    "RunStatus",
    "StateUpdateEvent",
    "ToolResultEvent",
    "Usage",
    "decode_event",
    "encode_event",
    "event_json_schema",
    "state_delta_of",
    "usage_of",
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
    "agent.transfer",
    "memory.injected",
    "runner.completion",
]
RunStatus = Literal["completed", "failed", "cancelled", "timeout", "paused"]
COMPLETION_STATUSES: tuple[str, ...] = get_args(RunStatus)
#: The type of the last event of every run. Scripts that read the wire (Lua) get it from here.
COMPLETION_TYPE: Final = "runner.completion"


class Usage(BaseModel):
    """Token usage: of a model call (``message``), of a tool's calls (``tool.result``), of a run."""

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


def _now() -> datetime:
    return datetime.now(UTC)


class EventBase(BaseModel):
    """What every event has. Use the per-type classes; :data:`Event` is their union."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: str
    seq: int = Field(default=0, ge=0, description="0, 1, 2, ... within the invocation, gap-free.")
    invocation_id: str
    author: str = Field(description="Who produced it: an agent's name, or 'user'.")
    created_at: datetime = Field(default_factory=_now)
    branch: str | None = Field(
        default=None,
        description=(
            "The branch of the agent tree that wrote it: the dotted names of the parallel "
            "agent and its sub-agent ('fanout.researcher'); absent on the main line."
        ),
    )
    stored_id: str | None = Field(
        default=None,
        alias="id",
        description=(
            "Only on events stored by versions that drew random IDs; otherwise the ID is "
            "'{invocation_id}:{seq}' and not written."
        ),
    )

    @property
    def id(self) -> str:
        """The event's ID: ``"{invocation_id}:{seq}"`` (or the one it was stored with)."""
        return self.stored_id or f"{self.invocation_id}:{self.seq}"

    @property
    def partial(self) -> bool:
        """True for ``message.delta``: published, never stored."""
        return self.type == "message.delta"

    def is_runner_completion(self) -> bool:
        """True for the last event of every run; stop reading here."""
        return self.type == COMPLETION_TYPE

    def is_final_response(self) -> bool:
        """True for a complete answer to show the user: assistant text without tool calls,
        or an error."""
        return False

    def is_user_message(self) -> bool:
        return False

    def to_json(self) -> str:
        """The wire form (:func:`encode_event`)."""
        return encode_event(self)


_ARTIFACT_DELTA = (
    "The artifact versions this step saved: {name: version} ('user:' names are the user's); "
    "absent when it saved none."
)


class MessageDeltaEvent(EventBase):
    """A piece of assistant text while the model streams; the ``message`` event follows."""

    type: Literal["message.delta"] = "message.delta"
    delta: str


class MessageEvent(EventBase):
    """A complete message: the user's input, or the model's text and/or tool calls."""

    type: Literal["message"] = "message"
    message: Message
    usage: Usage | None = Field(default=None, description="The model call's usage.")
    state_delta: dict[str, Any] | None = None
    artifact_delta: dict[str, int] | None = Field(
        default=None, description=_ARTIFACT_DELTA
    )

    def is_final_response(self) -> bool:
        return self.message.role == "assistant" and not self.message.tool_calls

    def is_user_message(self) -> bool:
        return self.message.role == "user"


class ToolResultEvent(EventBase):
    """The result of one tool call; ``error`` is set when the call failed."""

    type: Literal["tool.result"] = "tool.result"
    message: Message
    state_delta: dict[str, Any] | None = Field(
        default=None, description="The state the tool wrote."
    )
    error: EventError | None = None
    usage: Usage | None = Field(
        default=None,
        description=(
            "The usage of the model calls the tool made (an agent called as a tool); counted "
            "in the run's usage. Absent for tools that call no model."
        ),
    )
    artifact_delta: dict[str, int] | None = Field(
        default=None, description=_ARTIFACT_DELTA
    )


class StateUpdateEvent(EventBase):
    """A change of session state with no message."""

    type: Literal["state.update"] = "state.update"
    state_delta: dict[str, Any]


class ErrorEvent(EventBase):
    """Something failed; the run may go on or end."""

    type: Literal["error"] = "error"
    error: EventError
    retracts_streamed_text: Literal[True] | None = Field(
        default=None,
        description=(
            "Set when the answer being streamed was refused (an output guardrail): the "
            "message.delta text since the last complete event is withdrawn; erase it."
        ),
    )

    def is_final_response(self) -> bool:
        return True


class RunPausedEvent(EventBase):
    """The run waits for a person to confirm these tool calls (resume with
    ``tool_confirmations``). Every call listed needs confirmation; the calls of the same turn
    that need none ran already (their ``tool.result`` events come before this one)."""

    type: Literal["run.paused"] = "run.paused"
    requested_confirmations: list[ToolCall]
    editable_params: dict[str, list[str]] | None = Field(
        default=None,
        description=(
            "Per requested call ID, the arguments a person may change when confirming it "
            "with {'arguments': {...}}; a call left out may only be approved or refused. "
            "Left out when no call has any (and on events stored before it existed)."
        ),
    )

    def editable(self, call_id: str) -> list[str]:
        """The arguments a person may change in the call ``call_id`` ([] for none)."""
        return list((self.editable_params or {}).get(call_id, ()))


class RunQueuedEvent(EventBase):
    """The run has not started: another run holds its session. Never stored."""

    type: Literal["run.queued"] = "run.queued"
    waiting_for: str = Field(description="The invocation ID of the run this one waits behind.")


class RunRestartedEvent(EventBase):
    """A new attempt at the run starts after its worker died. Never stored."""

    type: Literal["run.restarted"] = "run.restarted"
    attempt: int = Field(
        ge=2, description="Which attempt starts here (2 for the first redelivery)."
    )
    discard_after_seq: int = Field(
        ge=-1,
        description=(
            "The message.delta events published before this one with a greater seq are void "
            "(a reply the dead attempt never finished); drop their text. The new attempt "
            "streams that reply again."
        ),
    )


class AgentTransferEvent(EventBase):
    """The conversation passes from ``author`` to ``to_agent``; the run goes on with it, and
    so does the session's next run (stored)."""

    type: Literal["agent.transfer"] = "agent.transfer"
    to_agent: str = Field(description="The agent that takes over.")


class InjectedMemory(BaseModel):
    """One memory item an agent was told (:class:`MemoryInjectedEvent`)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="The item's ID in the memory store.")
    kind: Literal["skill", "experience", "fact"]
    score: float = Field(description="Its relevance to the query (the store's scale).")
    text: str = Field(description="The start of what the system prompt was given (capped).")


class MemoryInjectedEvent(EventBase):
    """Long-term memory found these items for the agent ``author`` and put them in its system
    prompt before its first model call of the run (runner_core.memory_injection)."""

    type: Literal["memory.injected"] = "memory.injected"
    scope: str = Field(description="The memory scope searched, 'agent:{name}'.")
    query: str = Field(description="What was searched for: the user's request (capped).")
    items: list[InjectedMemory] = Field(
        default_factory=list, description="What was injected, best first; empty when nothing."
    )


class RunCompletionEvent(EventBase):
    """The last event of every run, exactly once; the one event that names the run."""

    type: Literal["runner.completion"] = "runner.completion"
    status: RunStatus
    usage: Usage = Field(default_factory=Usage, description="The whole run's usage.")
    final_text: str | None = None
    cost: float | None = None
    error: EventError | None = None
    output: Any = Field(
        default=None,
        description="The parsed structured output (an agent with an output_schema), as JSON.",
    )
    app_name: str
    user_id: str
    session_id: str
    request_id: str | None = None
    trace_id: str | None = Field(
        default=None,
        description=(
            "The OpenTelemetry trace of the run (32 hex digits), when a tracing plugin "
            "recorded one: look it up in your tracing backend."
        ),
    )


AnyEvent: TypeAlias = (
    MessageDeltaEvent
    | MessageEvent
    | ToolResultEvent
    | StateUpdateEvent
    | ErrorEvent
    | RunPausedEvent
    | RunQueuedEvent
    | RunRestartedEvent
    | AgentTransferEvent
    | MemoryInjectedEvent
    | RunCompletionEvent
)
#: Any event: narrow it with ``event.type == "..."`` (or ``isinstance``).
Event: TypeAlias = Annotated[AnyEvent, Field(discriminator="type")]

EVENT_CLASSES: Final[dict[str, type[EventBase]]] = {
    cls.model_fields["type"].default: cls for cls in get_args(AnyEvent)
}

_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


# --- the wire --------------------------------------------------------------------------------


def encode_event(event: EventBase) -> str:
    """The event as JSON: no null fields; ``id`` only when it is not ``{invocation_id}:{seq}``."""
    return event.model_dump_json(exclude_none=True, by_alias=True)


def decode_event(data: str | bytes) -> Event:
    """An event from its JSON, in the current form or the flat one of earlier versions.

    Raises:
        pydantic.ValidationError: it is not an event (``ValueError`` for bad JSON).
    """
    try:
        return _ADAPTER.validate_json(data)
    except ValidationError:
        value = json.loads(data)
        if not isinstance(value, dict) or not _is_flat(value):
            raise
    return _ADAPTER.validate_python(upgrade_flat_event(value))


# Fields of the flat event (every field on every type) that versions before typed events wrote.
_FLAT_ONLY = ("partial", "actions", "state")
_LABELS = ("app_name", "user_id", "session_id", "request_id")


def _is_flat(value: dict[str, Any]) -> bool:
    return any(name in value for name in _FLAT_ONLY)


def upgrade_flat_event(value: dict[str, Any]) -> dict[str, Any]:
    """The typed form of an event stored in the flat shape of earlier versions.

    Keeps what the event's type uses, drops the nulls, the empty defaults and the session
    state the old completion carried, and keeps a random ``id`` (summaries refer to it).
    """
    kind = value.get("type")
    cls = EVENT_CLASSES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        return value  # not an event of a known type: validation says what is wrong
    out = {k: v for k, v in value.items() if v is not None and k not in _FLAT_ONLY}
    actions = value.get("actions") or {}
    if kind == "run.paused":
        out["requested_confirmations"] = actions.get("requested_confirmations") or []
    if kind != COMPLETION_TYPE:
        for label in _LABELS:
            out.pop(label, None)
    if not out.get("state_delta"):
        out.pop("state_delta", None)
    fields = cls.model_fields
    out = {k: v for k, v in out.items() if k in fields or k == "id"}
    seq, invocation_id = out.get("seq", 0), out.get("invocation_id")
    if out.get("id") == f"{invocation_id}:{seq}":
        del out["id"]
    return out


def state_delta_of(event: EventBase) -> dict[str, Any]:
    """The state change an event carries ({} for types that carry none)."""
    delta = getattr(event, "state_delta", None)
    return delta if delta else {}


def usage_of(event: EventBase) -> Usage | None:
    """The model usage an event adds to its run's total: a model turn's (``message``) or that
    of the model calls a tool made (``tool.result``); None for every other event."""
    if isinstance(event, MessageEvent | ToolResultEvent):
        return event.usage
    return None


class EventNumbering:
    """The one owner of ``seq``: every path that emits events of an invocation numbers them
    here, the runner and the worker's failure and queue paths alike."""

    __slots__ = ("next_seq",)

    def __init__(self, next_seq: int = 0) -> None:
        self.next_seq = next_seq

    @classmethod
    def after(cls, last_seq: int | None) -> EventNumbering:
        """Numbering that goes on after ``last_seq`` (None: nothing was published yet)."""
        return cls(0 if last_seq is None else last_seq + 1)

    def stamp(self, event: EventBase) -> None:
        event.seq = self.next_seq
        self.next_seq += 1

    def take_back(self) -> None:
        """Undo the last :meth:`stamp`: that event was neither stored nor handed out."""
        self.next_seq -= 1


# --- the schema ------------------------------------------------------------------------------


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema every event published or stored validates against: a ``oneOf`` over the
    types, each with its required fields."""
    schema = _ADAPTER.json_schema(mode="serialization", by_alias=True)
    for cls in EVENT_CLASSES.values():
        # Required on the wire: every field that is never left out (never None), defaults too.
        schema["$defs"][cls.__name__]["required"] = [
            field.alias or name
            for name, field in cls.model_fields.items()
            if field.is_required() or field.default_factory is not None or field.default is not None
        ]
    schema["title"] = "Event"
    schema["description"] = "One event of an agent-runner invocation; 'type' tells which."
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://agent-runner.dev/schemas/event.schema.json"
    return schema


def render_event_json_schema() -> str:
    return json.dumps(event_json_schema(), indent=2, sort_keys=True) + "\n"
