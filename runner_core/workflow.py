"""Workflow agents: run their sub-agents in an order of their own, with no model of their own.

- :class:`SequentialAgent`: each sub-agent in turn, on the shared session (the next one reads
  what the previous one wrote).
- :class:`ParallelAgent`: every sub-agent at once, each on a branch of its own
  (``"{parallel agent}.{sub-agent}"``, under the parallel agent's own branch if it has one);
  their events are merged into the run's one stream as they come, and an agent on a branch
  sees the history up to the fork and its own branch, never a sibling's turns
  (:func:`runner_core.context.sees_branch`). The branches' answers are in the session, each
  on its branch, for the agents that come after.
- :class:`LoopAgent`: its sub-agents in order, again and again, until one escalates or
  ``max_iterations`` is reached (an ``error`` event, ``max_loop_iterations_exceeded``).

**Stops.** A workflow agent runs no further sub-agents once the run failed or paused, was
ended (``end_invocation()``), a transfer was asked for, or a sub-agent escalated
(``ctx.escalate()``, ``ToolContext.escalate()``). An escalation stops every sequential agent
up to the nearest loop agent, and that loop; the agent that escalated finishes its turn first
(an :class:`~runner_core.agent.LLMAgent` answers its tool's result). A failed branch cancels
its siblings and fails the parallel agent. Cancelling the run or its timeout cancels every
branch; none outlives the run.

**Pause and resume.** A sub-agent that asks for a confirmation pauses the run; in a parallel
agent, the pause comes (its ``run.paused`` event, carrying the branch) once the other
branches have finished. The resume needs nothing but the session, so any worker can run it:
``resume`` hands the answers to the agent that wrote the waiting calls (the author of their
assistant turn, on its branch), and ``run`` then goes on where the run paused: a sequential or
loop agent with the paused sub-agent and then the ones after it, a parallel agent only with
the branches that got answers (the others answered already). A loop counts its iterations
afresh in the resumed run, as an ``LLMAgent`` counts its model calls.

**Redelivery.** A run redelivered after its worker died goes on where it was: the sub-agents
that answered in this invocation are not run again, a loop is back at the iteration it was
in, a parallel agent runs only the branches still going. :mod:`runner_core.progress` owns
these rules, and where a resumed run goes on; every sub-agent run starts through its
:func:`~runner_core.progress.run_of`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .agent import BaseAgent
from .context import waiting_turns
from .errors import InvalidRequestError
from .events import ErrorEvent, Event, EventError
from .invocation import InvocationContext, RunOutcome
from .progress import resumed_sub_agents, run_of

if TYPE_CHECKING:
    from .summarizer import Summarizer

__all__ = ["LoopAgent", "ParallelAgent", "SequentialAgent"]


class _WorkflowAgent(BaseAgent):
    """What the three workflow agents share: the construction check, the stops, and where a
    resumed run goes on."""

    def __init__(
        self,
        name: str,
        *,
        sub_agents: Iterable[BaseAgent],
        description: str = "",
        summarizer: Summarizer | None = None,
    ) -> None:
        super().__init__(
            name, description=description, sub_agents=sub_agents, summarizer=summarizer
        )
        if not self.sub_agents:
            raise InvalidRequestError(
                f"{type(self).__name__} {name!r} has no sub-agents, so it has nothing to run; "
                "pass sub_agents=[...]."
            )

    async def _run_in_turn(
        self, ctx: InvocationContext, sub_agents: Sequence[BaseAgent]
    ) -> AsyncIterator[Event]:
        """Run ``sub_agents`` one after another on ``ctx`` until one stops the workflow."""
        for sub in sub_agents:
            async with _closing(run_of(sub, ctx)) as events:
                async for event in events:
                    yield event
            if _stops_workflow(ctx):
                return

    def _resumed_at(self, ctx: InvocationContext) -> int:
        """The index of the sub-agent a resumed run goes on with; 0 for a fresh start."""
        resumed = resumed_sub_agents(self, ctx)
        return self.sub_agents.index(resumed[0]) if resumed else 0

    async def resume(self, ctx: InvocationContext) -> AsyncIterator[Event]:
        """Hand the paused calls' answers to the sub-agent that wrote them."""
        holders = _waiting_authors(ctx, ctx.branch)
        for sub in self.sub_agents:
            if any(_wrote(sub, author) for author in holders):
                async with _closing(sub.resume(ctx)) as events:
                    async for event in events:
                        yield event
                if ctx.outcome.status == "paused":
                    return


class SequentialAgent(_WorkflowAgent):
    """Runs its sub-agents one after another on the shared session; the run's answer is the
    last one's.

    It stops early when a sub-agent fails, pauses, ends the run, transfers or escalates (see
    :mod:`runner_core.workflow`). A resumed run goes on with the paused sub-agent, then the
    ones after it.

    Args:
        name: the agent's name.
        sub_agents: the agents to run, in order (at least one).
        description, summarizer: see :class:`~runner_core.agent.BaseAgent`.

    Raises:
        InvalidRequestError: no sub-agents, or what :class:`BaseAgent` refuses.
    """

    async def run(self, ctx: InvocationContext) -> AsyncIterator[Event]:
        subs = self.sub_agents[self._resumed_at(ctx) :]
        async with _closing(self._run_in_turn(ctx, subs)) as events:
            async for event in events:
                yield event


class LoopAgent(_WorkflowAgent):
    """Runs its sub-agents in order, again and again, until one escalates.

    A sub-agent stops the loop with ``ctx.escalate()`` (a tool: ``tool_context.escalate()``):
    it finishes its turn, the sub-agents after it do not run, and the loop completes with that
    turn's answer. After ``max_iterations`` rounds with no escalation the run ends ``failed``
    with an ``error`` event (``max_loop_iterations_exceeded``). It also stops when a sub-agent
    fails, pauses, ends the run or transfers; a resumed run goes on with the paused sub-agent
    and counts its iterations afresh.

    Args:
        name: the agent's name.
        sub_agents: the agents of one iteration, in order (at least one).
        max_iterations: the most iterations one run makes (required, >= 1).
        description, summarizer: see :class:`~runner_core.agent.BaseAgent`.

    Raises:
        InvalidRequestError: no sub-agents, a ``max_iterations`` that is not an int >= 1, or
            what :class:`BaseAgent` refuses.
    """

    def __init__(
        self,
        name: str,
        *,
        sub_agents: Iterable[BaseAgent],
        max_iterations: int,
        description: str = "",
        summarizer: Summarizer | None = None,
    ) -> None:
        if (
            isinstance(max_iterations, bool)
            or not isinstance(max_iterations, int)
            or max_iterations < 1
        ):
            raise InvalidRequestError(
                f"LoopAgent {name!r}: max_iterations must be an int >= 1 (the most rounds one "
                f"run makes before it fails), got {max_iterations!r}."
            )
        super().__init__(
            name, sub_agents=sub_agents, description=description, summarizer=summarizer
        )
        self.max_iterations = max_iterations

    async def run(self, ctx: InvocationContext) -> AsyncIterator[Event]:
        start = self._resumed_at(ctx)
        for _ in range(self.max_iterations):
            async with _closing(self._run_in_turn(ctx, self.sub_agents[start:])) as events:
                async for event in events:
                    yield event
            if ctx.escalated:
                ctx.escalated = False  # taken in here: an enclosing workflow goes on
                return
            if _stops_workflow(ctx):
                return
            start = 0
        error = EventError(
            type="max_loop_iterations_exceeded",
            message=(
                f"loop agent {self.name!r} ran {self.max_iterations} iterations and no "
                "sub-agent escalated; raise max_iterations, or have a sub-agent call "
                "escalate() (ctx.escalate(), or tool_context.escalate() in a tool) when done."
            ),
        )
        yield ctx.event(ErrorEvent, self.name, error=error)
        ctx.outcome = RunOutcome(status="failed", error=error)


class ParallelAgent(_WorkflowAgent):
    """Runs its sub-agents concurrently, each on a branch of its own; their events are merged
    into the run's stream as they come, and each branch's answer is in the session on its
    branch.

    The run's answer is that of the branch that finished last. A branch that fails cancels
    the others and fails the parallel agent; a branch that pauses pauses the run once the
    others have finished, and the resumed run goes on only with the branches that got answers.

    Args:
        name: the agent's name; the first part of its branches' names.
        sub_agents: the agents to run at once (at least one).
        description, summarizer: see :class:`~runner_core.agent.BaseAgent`.

    Raises:
        InvalidRequestError: no sub-agents, or what :class:`BaseAgent` refuses.
    """

    def branch_of(self, ctx: InvocationContext, sub: BaseAgent) -> str:
        """The branch ``sub`` runs on: ``"{self.name}.{sub.name}"`` under ``ctx.branch``."""
        own = f"{self.name}.{sub.name}"
        return own if ctx.branch is None else f"{ctx.branch}.{own}"

    async def run(self, ctx: InvocationContext) -> AsyncIterator[Event]:
        # A resumed run: only the branches with answers their agent has not read yet.
        subs = resumed_sub_agents(self, ctx) or self.sub_agents
        branches = [(sub, _branch_context(ctx, self.branch_of(ctx, sub))) for sub in subs]
        fan_out = _FanOut(ctx, [(bctx, run_of(sub, bctx)) for sub, bctx in branches])
        async with _closing(fan_out.events()) as events:
            async for event in events:
                yield event

    async def resume(self, ctx: InvocationContext) -> AsyncIterator[Event]:
        """Hand the paused calls' answers to their branches, concurrently."""
        runs = []
        for sub in self.sub_agents:
            bctx = _branch_context(ctx, self.branch_of(ctx, sub))
            if any(_wrote(sub, author) for author in _waiting_authors(bctx, bctx.branch)):
                runs.append((bctx, sub.resume(bctx)))
        async with _closing(_FanOut(ctx, runs).events()) as events:
            async for event in events:
                yield event


# --- running branches ----------------------------------------------------------------------


def _branch_context(ctx: InvocationContext, branch: str) -> InvocationContext:
    """A context for one branch: the run's session, state, ``temp:`` state, options, plugins
    and confirmations, with an outcome and stop flags of its own."""
    return dataclasses.replace(
        ctx, branch=branch, outcome=RunOutcome(), escalated=False, transfer_to=None
    )


@dataclass(slots=True)
class _Item:
    """What a branch's task puts in the merged queue: an event (the branch waits for
    ``taken`` before it goes on), or its end (``event`` None, with what it raised)."""

    index: int
    event: Event | None
    taken: asyncio.Future[None] | None = None
    error: Exception | None = None


class _FanOut:
    """Branches run at once: each ``(branch context, events)`` is driven in a task of its
    own, and :meth:`events` merges their events as they come.

    A branch goes on only once its event was taken, which is after the Runner stored and
    handed it out: so each branch reads a session that holds everything it wrote, and no
    branch runs ahead of the run's reader. When every branch has ended, ``ctx.outcome`` and
    the stop flags say what they did.
    """

    def __init__(
        self, ctx: InvocationContext, runs: Sequence[tuple[InvocationContext, AsyncIterator[Event]]]
    ) -> None:
        self.ctx = ctx
        self.runs = runs
        self.contexts = [bctx for bctx, _ in runs]
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        #: The branches' ``run.paused`` events, handed out once every branch has ended.
        self.held: list[Event] = []
        #: The branch that ended last; its answer is the parallel agent's.
        self.last: InvocationContext | None = None

    async def events(self) -> AsyncIterator[Event]:
        tasks = [
            asyncio.create_task(self._drive(index, events), name=f"branch {bctx.branch}")
            for index, (bctx, events) in enumerate(self.runs)
        ]
        try:
            running = len(tasks)
            while running:
                item = await self.queue.get()
                if item.event is None:
                    running -= 1
                    if self._failed(item):
                        return  # the other branches are cancelled on the way out
                    continue
                if item.event.type == "run.paused":
                    self.held.append(item.event)
                else:
                    yield item.event
                self._taken(item)
        finally:
            await _cancel(tasks)
        self._gather()
        for event in self.held:
            yield event

    async def _drive(self, index: int, events: AsyncIterator[Event]) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with _closing(events):
                async for event in events:
                    taken: asyncio.Future[None] = loop.create_future()
                    self.queue.put_nowait(_Item(index, event, taken))
                    await taken
        except Exception as exc:  # the branch failed: events() raises it in the run
            self.queue.put_nowait(_Item(index, None, error=exc))
        else:
            self.queue.put_nowait(_Item(index, None))

    def _failed(self, end: _Item) -> bool:
        """A branch ended: whether it failed the fan-out (raises what the branch raised)."""
        if end.error is not None:
            raise end.error
        bctx = self.contexts[end.index]
        if bctx.outcome.status == "failed":
            self.ctx.outcome = bctx.outcome
            return True
        self.last = bctx
        return False

    def _taken(self, item: _Item) -> None:
        """The run has the branch's event: let the branch go on. An ``end_invocation()`` in
        one branch ends them all, each at its next step."""
        assert item.taken is not None
        item.taken.set_result(None)
        if self.contexts[item.index].ended and not self.ctx.ended:
            self.ctx.end_invocation()
            for bctx in self.contexts:
                bctx.end_invocation()

    def _gather(self) -> None:
        """Every branch has ended: the parallel agent's outcome, escalation and transfer."""
        if any(bctx.escalated for bctx in self.contexts):
            self.ctx.escalate()
        transfer = next((bctx.transfer_to for bctx in self.contexts if bctx.transfer_to), None)
        if self.ctx.transfer_to is None and transfer is not None:
            self.ctx.transfer_to = transfer
        if self.held:
            self.ctx.outcome = RunOutcome(status="paused")
        elif self.last is not None:
            self.ctx.outcome = dataclasses.replace(self.last.outcome)


async def _cancel(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Cancel the branches' tasks and wait until each has ended.

    A stop of the run (re-sent until the run takes it in, :mod:`runner_core.stopping`) does
    not cut the wait short: each one cancels the branches still running again, and is raised
    once they have all ended, so no branch outlives the run.
    """
    pending = {task for task in tasks if not task.done()}
    for task in pending:
        task.cancel()
    stopped = False
    while pending:
        try:
            await asyncio.wait(pending)
        except asyncio.CancelledError:
            stopped = True
            for task in pending:
                task.cancel()
        pending = {task for task in pending if not task.done()}
    if stopped:
        raise asyncio.CancelledError


@contextlib.asynccontextmanager
async def _closing(events: AsyncIterator[Event]) -> AsyncIterator[AsyncIterator[Event]]:
    """Close an agent's event generator on the way out, so that its clean-up (a branch's
    tasks, a model stream) runs before the workflow goes on or ends."""
    try:
        yield events
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


# --- where a run goes on ---------------------------------------------------------------------


def _stops_workflow(ctx: InvocationContext) -> bool:
    """Whether a workflow agent runs no further sub-agents (see the module's "Stops")."""
    return (
        ctx.outcome.status != "completed"
        or ctx.ended
        or ctx.transfer_to is not None
        or ctx.escalated
    )


def _wrote(agent: BaseAgent, author: str) -> bool:
    """Whether ``author`` is ``agent`` or one of the agents below it."""
    return agent.find_agent(author) is not None


def _waiting_authors(ctx: InvocationContext, branch: str | None) -> set[str]:
    """The agents whose tool calls wait for answers on ``branch`` or below it."""
    return {turn.event.author for turn in waiting_turns(ctx.session.events, branch=branch)}
