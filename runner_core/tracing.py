"""The trace recorder: a plugin that writes each run's execution trace as the run goes.

``TraceRecorder(store)`` in ``Runner(..., plugins=[...])`` (workers add one to every run unless
``AGENT_RUNNER_TRACES=off``) records, through the public plugin hooks:

- ``before_run``: the trace is started (:meth:`TraceStore.start`, with the run's fence) by the
  run's first write (``TraceStore.write(start=...)``, one round trip for both where the store
  can), at most :data:`WRITE_LINGER_S` after the run began, with the steps queued by then;
  on a redelivered run (the session holds events of the invocation) it is started here, and the
  steps the session's stored events hold but the trace lacks (the dead attempt stored the
  event and died before its step) are added first;
- ``before_model`` / ``after_model``: when a model call started and ended and what it was sent;
- ``before_tool`` / ``after_tool``: when a tool call started and ended, its arguments;
- ``after_event``: one step per stored event that records one (an assistant turn: a model call;
  a ``tool.result``: a tool call; an ``agent.transfer``: a transfer; a ``memory.injected``: a
  memory read; an ``error`` ending a model call: that model call, failed), queued for the run's
  writer as the event is stored;
- ``after_event`` on the ``runner.completion``: the conclusion step (a completed run's answer)
  and the trace's status, totals (usage and cost as the completion reports them) and end; the
  completion waits until every write of the run has landed, so a completed run's trace is
  whole when its completion is out;
- ``run_scope``: a run fenced off (no completion) stops its writer.

The writes go through one task per run (:class:`_Writer`), in order, so the run never waits
for the trace store between its steps and a cancel of the run never cuts a write short.

Steps are derived from events alone (:class:`TraceBuilder`), with IDs fixed by the event's
``seq``, so a redelivered run rebuilds the same graph from the session and never writes a step
twice. The hooks add what events do not hold (timings, the messages sent).

A trace store that fails does not fail the run: the recorder logs it and stops writing that
run's trace. A write refused by the fence (a newer delivery owns the run) stops the run at its
next event, as a refused session append does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import AgentRunnerError, FencedError
from .events import (
    AgentTransferEvent,
    ErrorEvent,
    Event,
    MemoryInjectedEvent,
    MessageEvent,
    RunCompletionEvent,
    ToolResultEvent,
)
from .messages import ToolCall
from .plugins import Plugin
from .traces import Step, Trace, TraceStore, newest_items

if TYPE_CHECKING:
    from .agent import BaseAgent
    from .invocation import InvocationContext
    from .model import ModelRequest, ModelResponse

__all__ = ["TraceBuilder", "TraceRecorder", "current_otel_trace_id"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

Branch = str | None


def _now() -> datetime:
    return datetime.now(UTC)


def current_otel_trace_id(ctx: InvocationContext) -> str | None:
    """The OpenTelemetry trace ID of the run, when a telemetry plugin set one on the context
    (:class:`~runner_core.telemetry.Telemetry` does, in its run scope)."""
    return ctx.trace_id or None


def _descends(branch: Branch, ancestor: Branch) -> bool:
    """``branch`` is below ``ancestor`` (every branch is below the main line, None)."""
    if branch == ancestor or branch is None:
        return False
    return ancestor is None or branch.startswith(ancestor + ".")


def _ancestors(branch: Branch) -> Iterable[Branch]:
    """The branches above ``branch``, nearest first, ending with the main line."""
    while branch is not None:
        branch = branch.rpartition(".")[0] or None
        yield branch


@dataclass(slots=True)
class _ModelCall:
    """What the hooks saw of a model call in flight on one branch."""

    started_at: datetime
    request: ModelRequest
    ended_at: datetime | None = None
    reply: str | None = None


@dataclass(slots=True)
class _ToolCallSeen:
    started_at: datetime
    arguments: Any
    ended_at: datetime | None = None


class TraceBuilder:
    """Seed 003's parent rules, per branch: the steps that events make.

    Feed it the invocation's events in order (:meth:`step_for`); it returns the step each one
    records (None for events that record none). It holds, per branch, the last steps (the
    "frontier") and which model call asked for each tool call.
    """

    def __init__(self, prices: dict[str, Any] | None = None) -> None:
        self.frontier: dict[Branch, list[str]] = {}
        #: (branch, tool call ID) -> (the model call step that asked, the call)
        self.asked: dict[tuple[Branch, str], tuple[str, ToolCall]] = {}
        #: Agent name -> its model's price, for the cost of its steps.
        self.prices = prices or {}

    def parents(self, branch: Branch) -> list[str]:
        """The parents of the next step on ``branch`` that follows the last steps: the last
        steps of the branches that ran below it since (a fan-in), else its own last steps,
        else those of the nearest branch above it (a fan-out)."""
        below = [b for b in self.frontier if _descends(b, branch)]
        if below:
            joined = [step for b in below for step in self.frontier.pop(b)]
            return joined
        if branch in self.frontier:
            return list(self.frontier[branch])
        for ancestor in _ancestors(branch):
            if ancestor in self.frontier:
                return list(self.frontier[ancestor])
        return []

    def _cost(self, agent: str, step: Step) -> float | None:
        price = self.prices.get(agent)
        if price is None or step.usage is None:
            return None
        cost: float = price.cost(step.usage)
        return cost

    def step_for(self, event: Event, call: _ModelCall | None = None) -> Step | None:
        """The step ``event`` records, with the parent rules applied, or None."""
        branch = event.branch
        if isinstance(event, MessageEvent):
            message = event.message
            if message.role != "assistant" or (call is None and event.usage is None):
                return None  # a user message, or a seeded turn no model made
            step = Step(
                step_id=f"model:{event.seq}",
                kind="model_call",
                parent_ids=self.parents(branch),
                agent=event.author,
                branch=branch,
                started_at=call.started_at if call else None,
                ended_at=(call.ended_at if call else None) or event.created_at,
                usage=event.usage,
                event_seq=event.seq,
                model=call.request.model if call else None,
                messages=_sent(call),
                reply=message.content,
                tool_calls=[c.model_dump() for c in message.tool_calls or ()] or None,
            )
            step.cost = self._cost(event.author, step)
            self.frontier[branch] = [step.step_id]
            for tool_call in message.tool_calls or ():
                self.asked[(branch, tool_call.id)] = (step.step_id, tool_call)
            return step
        if isinstance(event, ToolResultEvent):
            call_id = event.message.tool_call_id or ""
            asked = self.asked.pop((branch, call_id), None)
            if asked is None:
                return None  # a seeded result: no model call of this run asked for it
            model_step, tool_call = asked
            step = Step(
                step_id=f"tool:{event.seq}",
                kind="tool_call",
                parent_ids=[model_step],
                agent=event.author,
                branch=branch,
                ended_at=event.created_at,
                usage=event.usage,
                event_seq=event.seq,
                tool_name=event.message.name or tool_call.function.name,
                tool_call_id=call_id,
                arguments=_arguments(tool_call.function.arguments),
                result=event.message.content,
                error=event.error,
            )
            if step.usage is not None:
                step.cost = self._cost(event.author, step)
            self.frontier.setdefault(branch, []).append(step.step_id)
            return step
        if isinstance(event, AgentTransferEvent):
            step = Step(
                step_id=f"transfer:{event.seq}",
                kind="transfer",
                parent_ids=self.parents(branch),
                agent=event.author,
                branch=branch,
                started_at=event.created_at,
                ended_at=event.created_at,
                event_seq=event.seq,
                to_agent=event.to_agent,
            )
            self.frontier[branch] = [step.step_id]
            return step
        if isinstance(event, MemoryInjectedEvent):
            step = Step(
                step_id=f"memory:{event.seq}",
                kind="memory_read",
                parent_ids=self.parents(branch),
                agent=event.author,
                branch=branch,
                started_at=event.created_at,
                ended_at=event.created_at,
                event_seq=event.seq,
                data={
                    "scope": event.scope,
                    "query": event.query,
                    "items": [item.model_dump() for item in event.items],
                },
            )
            self.frontier[branch] = [step.step_id]
            return step
        if isinstance(event, ErrorEvent) and call is not None:
            step = Step(
                step_id=f"model:{event.seq}",
                kind="model_call",
                parent_ids=self.parents(branch),
                agent=event.author,
                branch=branch,
                started_at=call.started_at,
                ended_at=call.ended_at or event.created_at,
                event_seq=event.seq,
                model=call.request.model,
                messages=_sent(call),
                reply=call.reply,
                error=event.error,
            )
            self.frontier[branch] = [step.step_id]
            return step
        return None

    def conclusion(self, completion: RunCompletionEvent) -> Step | None:
        """The conclusion step of a completed run (its final answer), after the last steps."""
        if completion.status != "completed" or completion.final_text is None:
            return None
        return Step(
            step_id="conclusion",
            kind="conclusion",
            parent_ids=self.parents(None),
            agent=None,
            started_at=completion.created_at,
            ended_at=completion.created_at,
            event_seq=completion.seq,
            content=completion.final_text,
        )


def _sent(call: _ModelCall | None) -> list[Any] | None:
    """The messages sent, newest first until the field's cap: a long history costs no more
    than the part of it that is kept."""
    if call is None:
        return None
    return newest_items(call.request.messages, convert=lambda m: m.model_dump(exclude_none=True))


def _task_of(events: Iterable[Event]) -> str | None:
    """The text of the first user message among ``events`` (the run's request)."""
    for event in events:
        if isinstance(event, MessageEvent) and event.is_user_message():
            return event.message.text
    return None


def _arguments(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


@dataclass(slots=True)
class _Recording:
    """One run's trace while it goes."""

    trace: Trace
    fence: int | None
    builder: TraceBuilder
    #: Step IDs the store holds.
    stored: set[str] = field(default_factory=set)
    models: dict[Branch, _ModelCall] = field(default_factory=dict)
    tools: dict[tuple[Branch, str], _ToolCallSeen] = field(default_factory=dict)
    #: Writes the run's steps in order, off the run's path.
    writer: _Writer | None = None


#: Seconds a run's trace writer waits after a write is queued before it writes, so the steps
#: of a quick stretch of the run (and a short run's whole trace) go to the store in one
#: write. The completion cuts the wait short, so a finished run's trace is whole when the
#: completion is out.
WRITE_LINGER_S = 0.2


class _Writer:
    """One run's trace writes, in order, in a task of their own: the run does not wait for
    the store (a step costs it no round trip), a cancel of the run never cuts a write short,
    and the completion waits for all of them (:meth:`close`).

    What was queued meanwhile goes in one :meth:`TraceStore.write`: the writer waits
    :data:`WRITE_LINGER_S` after the first queued item (not once :meth:`close` was called),
    then writes every step queued and the newest header.

    A store failure stops the writes (logged); a fenced write stops them and is kept in
    :attr:`fenced`, which the recorder raises on the run's next event.
    """

    def __init__(
        self,
        store: TraceStore,
        invocation_id: str,
        fence: int | None,
        *,
        start: Trace | None = None,
    ) -> None:
        self.store = store
        self.invocation_id = invocation_id
        self.fence = fence
        #: The trace to start with the first write (a run's first delivery), if not started.
        self._start = start
        self.fenced: FencedError | None = None
        self.failed = False
        self._steps: list[Step] = []
        self._header: Trace | None = None
        self._queued = asyncio.Event()
        if start is not None:
            # The trace shows up at most WRITE_LINGER_S after the run began, with what was
            # queued by then (a short run's whole trace: close cuts the wait short).
            self._queued.set()
        self._closing = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run())

    def add(self, step: Step) -> None:
        self._steps.append(step)
        self._queued.set()

    def finish(self, header: Trace) -> None:
        self._header = header
        self._queued.set()

    async def _run(self) -> None:
        while True:
            await self._queued.wait()
            if not self._closing.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(WRITE_LINGER_S):
                        await self._closing.wait()
            self._queued.clear()
            steps, header = self._steps, self._header
            self._steps, self._header = [], None
            if not self.failed and (steps or header is not None or self._start is not None):
                await self._write(steps, header)
            if self._closing.is_set() and not self._queued.is_set():
                return

    async def _write(self, steps: list[Step], header: Trace | None) -> None:
        start, self._start = self._start, None
        try:
            await self.store.write(
                self.invocation_id, steps, header=header, fence=self.fence, start=start
            )
        except FencedError as exc:
            self.failed, self.fenced = True, exc
        except Exception as exc:  # a failing trace store never fails the run
            self.failed = True
            logger.warning(
                "run %s: its trace is not written any more: %s: %s",
                self.invocation_id, type(exc).__name__, exc,
            )  # fmt: skip

    async def close(self) -> None:
        """Write what is queued at once, wait for it, then stop."""
        self._closing.set()
        self._queued.set()
        await asyncio.shield(self.task)


class TraceRecorder(Plugin):
    """Records each run's execution trace in ``store`` (see the module docstring).

    Args:
        store: where traces go (:class:`~runner_core.traces.TraceStore`).
        agent: the root of the agent tree the Runner runs; with it each model call's step
            carries its cost (at its agent's model price) and its model's name.
        fence: the run's fencing token, for a recorder made for one run (a worker's lease
            token); default: the context's ``fence`` when it has one.
    """

    name = "traces"

    def __init__(
        self, store: TraceStore, *, agent: BaseAgent | None = None, fence: int | None = None
    ) -> None:
        self.store = store
        self.agent = agent
        self.fence = fence
        self._runs: dict[str, _Recording] = {}
        self._model_names: dict[str, str | None] = {}

    def _prices(self) -> dict[str, Any]:
        if self.agent is None:
            return {}
        return {
            a.name: a.model.price
            for a in self.agent.walk()
            if a.model is not None and getattr(a.model, "price", None) is not None
        }

    def _model_name(self, author: str) -> str | None:
        if author not in self._model_names:
            agent = self.agent.find_agent(author) if self.agent is not None else None
            name = getattr(agent.model if agent is not None else None, "name", None)
            self._model_names[author] = name if isinstance(name, str) else None
        return self._model_names[author]

    async def _read(self, recording: _Recording, call: Awaitable[T]) -> T | None:
        """A store call the run waits for (starting the trace, reading it back on a
        redelivery). A fenced one stops the run; any other failure stops the trace."""
        try:
            return await asyncio.shield(call)
        except FencedError:
            raise
        except AgentRunnerError as exc:
            logger.warning(
                "run %s: its trace is not written: %s", recording.trace.invocation_id, exc
            )
            return None

    # --- the hooks -----------------------------------------------------------------------

    async def before_run(self, ctx: InvocationContext) -> None:
        prior = [e for e in ctx.session.events if e.invocation_id == ctx.invocation_id]
        trace = Trace(
            invocation_id=ctx.invocation_id,
            app_name=ctx.app_name,
            user_id=ctx.user_id,
            session_id=ctx.session.id,
            task=_task_of(prior),
            agent=self.agent.name if self.agent is not None else None,
            otel_trace_id=current_otel_trace_id(ctx),
        )
        fence = self.fence if self.fence is not None else getattr(ctx, "fence", None)
        recording = _Recording(trace, fence, TraceBuilder(self._prices()))
        self._runs[ctx.invocation_id] = recording
        if not prior:
            # Nothing of this invocation is in the session: the trace is started by the first
            # write (one round trip for both where the store can), not here.
            recording.writer = _Writer(self.store, ctx.invocation_id, fence, start=trace.header())
            return
        created = await self._read(recording, self.store.start(trace, fence=fence))
        if created is None:
            return  # the trace store failed: no trace for this run
        recording.writer = _Writer(self.store, ctx.invocation_id, fence)
        if not prior:
            return
        if not created:
            stored = await self._read(recording, self.store.get(ctx.invocation_id))
            if stored is not None:
                recording.trace = stored.header()
                recording.trace.task = recording.trace.task or trace.task
                recording.trace.otel_trace_id = trace.otel_trace_id or stored.otel_trace_id
                recording.stored = {step.step_id for step in stored.steps}
        # A redelivered run: rebuild the graph from the stored events; add what is missing.
        for event in prior:
            step = recording.builder.step_for(event)
            if step is not None and step.step_id not in recording.stored:
                self._add(recording, step)

    async def before_model(
        self, ctx: InvocationContext, request: ModelRequest
    ) -> ModelResponse | None:
        recording = self._runs.get(ctx.invocation_id)
        if recording is not None:
            recording.models[ctx.branch] = _ModelCall(_now(), request)
        return None

    async def after_model(
        self, ctx: InvocationContext, response: ModelResponse
    ) -> ModelResponse | None:
        recording = self._runs.get(ctx.invocation_id)
        call = recording.models.get(ctx.branch) if recording is not None else None
        if call is not None:
            call.ended_at = _now()
            call.reply = response.message.content
        return None

    async def before_tool(
        self, ctx: InvocationContext, call: ToolCall, args: dict[str, Any]
    ) -> Any | None:
        recording = self._runs.get(ctx.invocation_id)
        if recording is not None:
            recording.tools[(ctx.branch, call.id)] = _ToolCallSeen(_now(), dict(args))
        return None

    async def after_tool(
        self, ctx: InvocationContext, call: ToolCall, args: dict[str, Any], result: str
    ) -> str | None:
        recording = self._runs.get(ctx.invocation_id)
        seen = recording.tools.get((ctx.branch, call.id)) if recording is not None else None
        if seen is not None:
            seen.ended_at = _now()
        return None

    async def after_event(self, ctx: InvocationContext, event: Event) -> None:
        if event.type == "message.delta":
            return
        recording = self._runs.get(ctx.invocation_id)
        if recording is None:
            return
        if recording.writer is not None and recording.writer.fenced is not None:
            raise recording.writer.fenced  # a newer delivery owns the run: stop it
        if isinstance(event, RunCompletionEvent):
            await self._finish(ctx, recording, event)
            return
        if recording.trace.task is None and event.is_user_message():
            recording.trace.task = _task_of([event])
        call = None
        if isinstance(event, MessageEvent | ErrorEvent):
            call = recording.models.pop(event.branch, None)
        step = recording.builder.step_for(event, call)
        if step is None:
            return
        if step.kind == "model_call" and step.model is None:
            step.model = self._model_name(event.author)
        if isinstance(event, ToolResultEvent) and step.tool_call_id is not None:
            seen = recording.tools.pop((event.branch, step.tool_call_id), None)
            if seen is not None:
                step.started_at = seen.started_at
                step.ended_at = seen.ended_at or step.ended_at
                step.arguments = seen.arguments
        self._add(recording, step)

    # --- writes --------------------------------------------------------------------------

    def _add(self, recording: _Recording, step: Step) -> None:
        """Queue the step's write (the run goes on at once)."""
        if recording.writer is None:
            return
        recording.writer.add(step)
        recording.stored.add(step.step_id)

    async def _finish(
        self, ctx: InvocationContext, recording: _Recording, completion: RunCompletionEvent
    ) -> None:
        try:
            if recording.writer is None:
                return
            conclusion = recording.builder.conclusion(completion)
            if conclusion is not None and conclusion.step_id not in recording.stored:
                self._add(recording, conclusion)
            trace = recording.trace
            trace.status = completion.status
            trace.usage = completion.usage
            trace.cost = completion.cost
            trace.error = completion.error
            trace.ended_at = completion.created_at
            trace.otel_trace_id = trace.otel_trace_id or current_otel_trace_id(ctx)
            recording.writer.finish(trace.header())
            await recording.writer.close()  # the trace is whole before the completion is out
        finally:
            self._runs.pop(ctx.invocation_id, None)

    async def after_session_deleted(self, app_name: str, user_id: str, session_id: str) -> None:
        """The session's traces go with it."""
        await self.store.delete_session(app_name, user_id, session_id)

    def run_scope(self, ctx: InvocationContext) -> AbstractAsyncContextManager[None]:
        return self._run_scope(ctx)

    @asynccontextmanager
    async def _run_scope(self, ctx: InvocationContext) -> AsyncIterator[None]:
        """A run that loses its session to a newer owner ends without a completion: stop its
        writer here (what it queued is written, fenced)."""
        try:
            yield
        except FencedError:
            recording = self._runs.pop(ctx.invocation_id, None)
            if recording is not None and recording.writer is not None:
                await recording.writer.close()
            raise
