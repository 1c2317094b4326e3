"""Where an invocation stands in its tree of agents, read from the session alone.

A worker that dies mid-run leaves the invocation's events in the session; its redelivered run
(the same ``invocation_id``) hands out what readers missed, runs the calls the last turn left
without results, and runs the active agent again (:meth:`Runner.run`). The rules here make that
pass go on where the dead one stopped. They hold on every pass, so a first attempt and a
redelivered one take the same path, and a resume (on any worker) finds where it paused.

**A run is done once its answer is stored.** Counted from the invocation's last
``agent.transfer`` (where the active agent started; the start of the invocation when there is
none), the k-th run of an agent on a branch is done when the session holds that agent's k-th
final answer on that branch in this invocation: a ``message`` it wrote without tool calls,
after the run's user message (a seed's assistant turns are history). A done run is not run
again: it writes nothing and ends ``completed`` with that answer (:func:`run_of`). So a
sequential agent goes on with the first sub-agent that has not answered, a loop agent is back
at the iteration it was in, a parallel agent runs only the branches still going, and an
:class:`~runner_core.agent.LLMAgent` that answered never calls its model again. A run is taken
to end with its answer, as an ``LLMAgent``'s does: a custom agent that writes more than one
answer in a run is taken to be done at its first.

**Tools run once.** The run that was under way is run again: the Runner first runs the calls
its last turn left without results, and its model then reads the stored results; a call whose
result is stored never runs again.

**A resumed workflow goes on where it paused** (:func:`resumed_sub_agents`): on its first run
in the segment, a workflow agent whose sub-agents begin the segment with tool results (the
answers a resume handed them) goes on with those sub-agents only.

Not in the stored record, so not replayed: an escalation (``escalate()``) and an
``end_invocation()``. A loop whose sub-agent escalated in the attempt that died goes on
iterating in the redelivered run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from .context import sees_branch
from .events import Event, MessageEvent
from .invocation import InvocationContext, RunOutcome
from .plugins import plugin_scopes

if TYPE_CHECKING:
    from .agent import BaseAgent

__all__ = ["resumed_sub_agents", "run_of"]


def run_of(agent: BaseAgent, ctx: InvocationContext) -> AsyncIterator[Event]:
    """The next run of ``agent`` on ``ctx``'s branch: ``agent.run(ctx)``, or, when the session
    holds its answer (a done run), no events with ``ctx.outcome`` set to that answer.

    Every agent run of a tree starts here (the Runner's active agent, each workflow's
    sub-agents), so that it is counted.
    """
    mark, segment = _segment(ctx)
    key = (mark, agent.name, ctx.branch)
    index = ctx.runs_started.get(key, 0)
    ctx.runs_started[key] = index + 1
    # Answers come after the run's input: a seed's assistant turns before it are history.
    inputs = [i for i, event in enumerate(segment) if event.is_user_message()]
    answers = [
        event
        for event in segment[inputs[-1] + 1 if inputs else 0 :]
        if isinstance(event, MessageEvent)
        and event.author == agent.name
        and event.branch == ctx.branch
        and event.is_final_response()
    ]
    if index >= len(answers):
        return _scoped_run(agent, ctx)
    text = answers[index].message.content or ""
    ctx.outcome = RunOutcome(status="completed", final_text=text, output=agent.output_of(text))
    return _no_events()


def resumed_sub_agents(agent: BaseAgent, ctx: InvocationContext) -> list[BaseAgent]:
    """The sub-agents of ``agent`` that a resume handed answers to, when this run of
    ``agent`` goes on from a resume; [] for a run that starts afresh.

    A run goes on from a resume when it is ``agent``'s first in the segment (a loop's next
    iteration starts afresh) and a sub-agent's first event in the segment, on the branch
    ``ctx`` sees, is a tool result.
    """
    mark, segment = _segment(ctx)
    if ctx.runs_started.get((mark, agent.name, ctx.branch), 0) > 1:
        return []
    resumed = []
    for sub in agent.sub_agents:
        first = next(
            (
                event
                for event in segment
                if sub.find_agent(event.author) is not None
                and sees_branch(ctx.branch, event.branch)
            ),
            None,
        )
        if first is not None and first.type == "tool.result":
            resumed.append(sub)
    return resumed


def _segment(ctx: InvocationContext) -> tuple[int, list[Event]]:
    """The events of this invocation since its last ``agent.transfer``, and the seq of that
    transfer (-1 when there is none): what the active agent's tree wrote."""
    mine = [event for event in ctx.session.events if event.invocation_id == ctx.invocation_id]
    for index in range(len(mine) - 1, -1, -1):
        if mine[index].type == "agent.transfer":
            return mine[index].seq, mine[index + 1 :]
    return -1, mine


async def _scoped_run(agent: BaseAgent, ctx: InvocationContext) -> AsyncIterator[Event]:
    """``agent.run(ctx)`` inside the plugins' agent scopes."""
    async with plugin_scopes(ctx.plugins, "agent", ctx, agent):
        events = agent.run(ctx)
        try:
            async for event in events:
                yield event
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()


async def _no_events() -> AsyncIterator[Event]:
    return
    yield  # an async generator that yields nothing
