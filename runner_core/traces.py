"""Execution traces: the graph of the steps one invocation took (seed 003's Trace and Step).

A :class:`Trace` is the record of one invocation: its task, agent, status, totals (tokens,
cost, duration), the OpenTelemetry trace ID when telemetry is on, and its :class:`Step` s.
Each step has a kind and ``parent_ids`` naming the steps it follows:

- ``model_call``: the messages sent, the reply, the tool calls asked for, tokens and cost.
  Its parents are the previous model call of its branch and that call's tool steps (after a
  transfer, the transfer step);
- ``tool_call``: the tool's name, arguments and result (``error`` when it failed). Its parent
  is the model call that asked for it;
- ``transfer``: the conversation passed to ``to_agent``; its parents are the last steps;
- ``conclusion``: the run's final answer; its parents are the last steps of the run;
- ``memory_read``, ``memory_write``, ``feedback``: added by memory and feedback
  (:meth:`TraceStore.add_step` with ``data``), feedback after the run ended.

Every step of a parallel agent's branch carries the ``branch``; the parent rules hold per
branch, and the step after a fan-out follows the last steps of every branch.

Step IDs are fixed by what the step records (``model:{seq}``, ``tool:{seq}`` with the ``seq``
of the event that holds it, ``conclusion``), so a redelivered run writes the same IDs again and
a store keeps the first: a trace never holds a step twice.

Payload fields are capped (:data:`MAX_FIELD_CHARS` each, :func:`cap_value`): a long text keeps
its start, a long list (the messages sent) keeps its newest items, and the cut is said in the
value itself.

Stores implement :class:`TraceStore` (memory:
:class:`~runner_core.memory_traces.InMemoryTraceStore`; Redis and PostgreSQL in
``session_backends``); :func:`read_trace` is the one access rule: only
the trace's own (app, user) reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import to_json

from .errors import (
    CorruptSessionDataError,
    FencedError,
    InvalidRequestError,
    InvocationOwnedError,
    TraceNotFoundError,
)
from .events import EventError, Usage
from .session import validate_identifier

__all__ = [
    "MAX_FIELD_CHARS",
    "STEP_KINDS",
    "Step",
    "StepKind",
    "Trace",
    "TraceStatus",
    "TraceStore",
    "cap_value",
    "check_step_id",
    "decode_step",
    "decode_trace",
    "newest_items",
    "read_trace",
    "trace_fenced",
]

StepKind = Literal[
    "model_call",
    "tool_call",
    "memory_read",
    "memory_write",
    "transfer",
    "conclusion",
    "feedback",
]
STEP_KINDS: Final[tuple[str, ...]] = StepKind.__args__  # type: ignore[attr-defined]
#: ``running`` until the run's completion; then the completion's status.
TraceStatus = Literal["running", "completed", "failed", "cancelled", "timeout", "paused"]

#: The most characters one payload field of a step keeps (its JSON, for lists and objects).
MAX_FIELD_CHARS: Final = 16_000
#: What a cut adds (its note); a value within ``limit`` plus this is not cut again, so a capped
#: value read back from a store stays as it was.
_NOTE_CHARS = 64
_MAX_STEP_ID = 128


def _now() -> datetime:
    return datetime.now(UTC)


def _json(value: Any) -> str:
    """``value`` as JSON text (pydantic's encoder: several times faster than ``json``)."""
    return to_json(value, fallback=str).decode()


def _same(value: Any) -> Any:
    return value


def cap_value(value: Any, limit: int = MAX_FIELD_CHARS) -> Any:
    """``value`` cut to about ``limit`` characters of JSON, saying so in the value.

    Text keeps its start and ends with ``"... [N more characters]"``; a list keeps its newest
    items after a first item ``"[N earlier items left out]"`` (the messages sent to a model:
    the latest ones matter most); any other value that is too long becomes its JSON text, cut.
    Values within the limit are returned as they are.
    """
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        if len(value) <= limit + _NOTE_CHARS:
            return value
        return f"{value[:limit]}... [{len(value) - limit} more characters]"
    encoded = _json(value)
    if len(encoded) <= limit + _NOTE_CHARS:
        return value
    if isinstance(value, list):
        return newest_items(value, limit)
    return cap_value(encoded, limit)


def newest_items(
    items: Sequence[Any], limit: int = MAX_FIELD_CHARS, convert: Callable[[Any], Any] = _same
) -> list[Any]:
    """The newest of ``items`` (each ``convert`` ed) that fit in ``limit`` characters of JSON,
    after a first item ``"[N earlier items left out]"`` when some are left out; the older items
    are never converted. :func:`cap_value` of a list; a writer with a long list of objects to
    convert (the messages sent to a model) calls it to convert only what is kept.
    """
    kept: list[Any] = []
    used = 0
    for item in reversed(items):
        converted = convert(item)
        size = len(_json(converted)) + 1
        if used + size > limit:
            if not kept:  # the newest item alone is too long: keep it, cut
                kept.append(cap_value(converted, limit))
            break
        kept.append(converted)
        used += size
    kept.reverse()
    if len(kept) == len(items):
        return kept
    return [f"[{len(items) - len(kept)} earlier items left out]", *kept]


class Step(BaseModel):
    """One step of a trace. Which payload fields are set depends on ``kind``; the rest are
    left out of the JSON."""

    model_config = ConfigDict(extra="forbid")

    step_id: str = Field(description="Unique within the trace; fixed by what it records.")
    kind: StepKind
    parent_ids: list[str] = Field(default_factory=list)
    agent: str | None = Field(default=None, description="The agent that took the step.")
    branch: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    usage: Usage | None = Field(default=None, description="Tokens of a model call.")
    cost: float | None = None
    event_seq: int | None = Field(
        default=None, description="The seq of the event that holds the step, if one does."
    )
    # model_call
    model: str | None = None
    messages: Any = Field(default=None, description="The messages sent to the model.")
    reply: str | None = None
    tool_calls: Any = None
    # tool_call
    tool_name: str | None = None
    tool_call_id: str | None = None
    arguments: Any = None
    result: Any = None
    # model_call and tool_call
    error: EventError | None = None
    # transfer
    to_agent: str | None = None
    # conclusion
    content: str | None = None
    # memory_read, memory_write, feedback
    data: Any = None

    @field_validator("messages", "reply", "tool_calls", "arguments", "result", "content", "data")
    @classmethod
    def _capped(cls, value: Any) -> Any:
        return cap_value(value)

    @field_validator("step_id")
    @classmethod
    def _step_id(cls, value: str) -> str:
        return check_step_id(value)

    @property
    def duration_ms(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds() * 1000

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)


class Trace(BaseModel):
    """The trace of one invocation. ``steps`` are in the order they were stored."""

    model_config = ConfigDict(extra="forbid")

    invocation_id: str
    app_name: str
    user_id: str
    session_id: str
    task: str | None = Field(default=None, description="The user's request (capped).")
    agent: str | None = Field(default=None, description="The agent the run started with.")
    status: TraceStatus = "running"
    usage: Usage = Field(default_factory=Usage, description="The run's tokens.")
    cost: float | None = None
    started_at: datetime = Field(default_factory=_now)
    ended_at: datetime | None = None
    error: EventError | None = None
    otel_trace_id: str | None = Field(
        default=None, description="The OpenTelemetry trace ID of the run, when telemetry is on."
    )
    attempts: int = Field(default=1, ge=1, description="Deliveries of the run that wrote.")
    steps: list[Step] = Field(default_factory=list)

    @field_validator("task")
    @classmethod
    def _capped(cls, value: Any) -> Any:
        return cap_value(value)

    @property
    def duration_ms(self) -> float | None:
        if self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds() * 1000

    def step(self, step_id: str) -> Step | None:
        """The step with this ID, or None."""
        return next((step for step in self.steps if step.step_id == step_id), None)

    def header(self) -> Trace:
        """This trace without its steps (what :meth:`TraceStore.start` and ``finish`` store)."""
        return self.model_copy(update={"steps": []})

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)


@runtime_checkable
class TraceStore(Protocol):
    """Where traces live. Memory, Redis and PostgreSQL implement it alike.

    A trace is keyed by its invocation ID; it remembers its (app, user, session), and
    :meth:`delete_session` removes every trace of a session. Stores built beside a session
    store take its TTL (``ttl``: seconds after the trace's last write).

    Fencing: :meth:`start` with ``fence`` makes that token the trace's fence (refused when a
    greater one holds it); :meth:`add_step` and :meth:`finish` with ``fence`` write only while
    it is still the trace's fence, checked atomically with the write. Without ``fence``
    (in-process runs, feedback after a run) nothing is checked.

    Every method validates its IDs. Store failures raise
    :class:`~runner_core.errors.SessionBackendError`; undecodable stored data raises
    :class:`~runner_core.errors.CorruptSessionDataError`.
    """

    async def start(self, trace: Trace, *, fence: int | None = None) -> bool:
        """Create the trace (its header; ``steps`` are ignored), or take an existing one over
        (a redelivered run): its header is kept, its ``attempts`` counted up, its status set to
        ``running`` again.

        Returns:
            True when it was created, False when it existed.

        Raises:
            FencedError: a greater token than ``fence`` holds the trace.
            InvocationOwnedError: the invocation's trace belongs to another (app, user, session).
        """
        ...

    async def add_step(self, invocation_id: str, step: Step, *, fence: int | None = None) -> bool:
        """Add a step (a later one too, such as feedback). A step whose ID the trace holds
        already changes nothing.

        Returns:
            True when stored, False when the trace held the step ID already.

        Raises:
            TraceNotFoundError: no trace of this invocation (never started, expired, deleted).
            FencedError: ``fence`` is not the trace's fence; nothing was written.
        """
        ...

    async def finish(self, trace: Trace, *, fence: int | None = None) -> None:
        """Replace the trace's header (status, totals, end time, error, OpenTelemetry ID);
        its steps are kept.

        Raises:
            TraceNotFoundError, FencedError: as :meth:`add_step`.
        """
        ...

    async def write(
        self,
        invocation_id: str,
        steps: Sequence[Step],
        *,
        header: Trace | None = None,
        fence: int | None = None,
        start: Trace | None = None,
    ) -> None:
        """With ``start``, first :meth:`start` that trace; then :meth:`add_step` for each of
        ``steps`` in order, then with ``header`` :meth:`finish`: what a run's recorder queued
        meanwhile, in one round trip where the store can (Redis: one script call, all or
        nothing, when the trace is created; a second one to take an existing trace over). The
        fence is checked as those methods check it.

        Raises:
            TraceNotFoundError, FencedError: as :meth:`add_step` (and :meth:`start`).
            InvocationOwnedError: as :meth:`start`.
        """
        ...

    async def get(self, invocation_id: str) -> Trace | None:
        """The trace with its steps in the order stored, or None. No access check: callers
        that serve users go through :func:`read_trace`."""
        ...

    async def delete_session(self, app_name: str, user_id: str, session_id: str) -> int:
        """Delete every trace of a session; returns how many there were."""
        ...

    async def close(self) -> None:
        """Release what the store opened. Idempotent."""
        ...


# --- rules every store shares ------------------------------------------------------------


def check_step_id(value: object) -> str:
    """A step ID: 1-128 printable characters without spaces."""
    if not isinstance(value, str) or not value:
        raise InvalidRequestError(f"step_id must be a non-empty string, got {value!r}.")
    if len(value) > _MAX_STEP_ID or not value.isprintable() or any(c.isspace() for c in value):
        raise InvalidRequestError(
            f"step_id {value[:40]!r} must be 1-{_MAX_STEP_ID} printable characters without "
            "spaces (like 'model:3' or 'feedback:1')."
        )
    return value


def trace_fenced(invocation_id: str, token: int, holder: int | str | None) -> FencedError:
    """The error for a trace write with ``token`` while ``holder`` holds the trace's fence."""
    return FencedError(
        f"the trace of run {invocation_id} is fenced by token {holder}, not {token}: a newer "
        "delivery owns the run. Nothing was written; stop this run."
    )


def trace_not_found(invocation_id: str) -> TraceNotFoundError:
    return TraceNotFoundError(
        f"there is no trace of invocation {invocation_id!r}: it never ran with traces on, or "
        "its trace expired or was deleted with its session. Check the invocation ID."
    )


def check_header_of(
    invocation_id: str, header: Trace | None, start: Trace | None = None
) -> None:
    """Refuse a :meth:`TraceStore.write` whose ``header`` or ``start`` is another trace's."""
    for given in (header, start):
        if given is not None and given.invocation_id != invocation_id:
            raise ValueError(
                f"the header is trace {given.invocation_id!r}'s, not {invocation_id!r}'s"
            )


async def write_step_by_step(
    store: TraceStore,
    invocation_id: str,
    steps: Sequence[Step],
    *,
    header: Trace | None,
    fence: int | None,
    start: Trace | None = None,
) -> None:
    """:meth:`TraceStore.write` as :meth:`~TraceStore.start` (with ``start``), one
    :meth:`~TraceStore.add_step` per step, then :meth:`~TraceStore.finish`: for a store
    without a one-call write."""
    check_header_of(invocation_id, header, start)
    if start is not None:
        await store.start(start, fence=fence)
    for step in steps:
        await store.add_step(invocation_id, step, fence=fence)
    if header is not None:
        await store.finish(header, fence=fence)


def check_owner(stored: Trace, trace: Trace) -> None:
    """Refuse to take over a trace of the same invocation ID held by another session."""
    if (stored.app_name, stored.user_id, stored.session_id) != (
        trace.app_name,
        trace.user_id,
        trace.session_id,
    ):
        raise InvocationOwnedError(
            f"invocation {trace.invocation_id!r} already has a trace of another session; an "
            "invocation ID belongs to the (app, user, session) that first used it."
        )


def decode_trace(raw: str | bytes, where: str) -> Trace:
    """A stored trace header (or whole trace); corrupt data raises."""
    try:
        return Trace.model_validate_json(raw)
    except (ValidationError, ValueError) as exc:
        raise CorruptSessionDataError(
            f"stored trace data at {where} cannot be decoded ({exc}). Inspect it, then repair "
            "or delete it."
        ) from exc


def decode_step(raw: str | bytes, where: str) -> Step:
    try:
        return Step.model_validate_json(raw)
    except (ValidationError, ValueError) as exc:
        raise CorruptSessionDataError(
            f"stored trace step at {where} cannot be decoded ({exc}). Inspect it, then repair "
            "or delete it."
        ) from exc


async def read_trace(
    store: TraceStore, app_name: str | None, user_id: str | None, invocation_id: str
) -> Trace:
    """The trace of ``invocation_id`` for the user ``(app_name, user_id)``: the one access rule.

    An operator reads any trace with ``app_name=None, user_id=None``.

    Raises:
        InvalidRequestError: a malformed ID (naming it).
        TraceNotFoundError: no trace of this invocation.
        InvocationOwnedError: the trace is another user's (or another app's).
    """
    validate_identifier(invocation_id, "invocation_id")
    if (app_name is None) != (user_id is None):
        raise InvalidRequestError(
            "pass both app_name and user_id (a user reading their trace), or neither (an "
            "operator)."
        )
    if app_name is not None:
        validate_identifier(app_name, "app_name")
        validate_identifier(user_id, "user_id")
    trace = await store.get(invocation_id)
    if trace is None:
        raise trace_not_found(invocation_id)
    if app_name is not None and (trace.app_name, trace.user_id) != (app_name, user_id):
        raise InvocationOwnedError(
            f"invocation {invocation_id!r} is not a run of user {user_id!r} in app "
            f"{app_name!r}; only its own user (or an operator) may read its trace."
        )
    return trace
