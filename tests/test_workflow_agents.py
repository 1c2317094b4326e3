"""Workflow agents (issue 15): sequential, parallel and loop agents, the branch history rule,
loop limits, and pauses inside a tree, in process through the public API.

Each sub-agent has a FakeModel of its own, so a branch's replies cannot go to its sibling and
each model's recorded requests show what that agent saw. Every run is awaited under a
deadline, so a run that hangs fails its test instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from runner_core import (
    BaseAgent,
    Event,
    FunctionTool,
    InMemorySessionService,
    InvalidRequestError,
    InvocationContext,
    LLMAgent,
    LoopAgent,
    Message,
    ModelRequest,
    ParallelAgent,
    Plugin,
    Runner,
    RunOutcome,
    SequentialAgent,
    ToolContext,
    tool,
)
from runner_core.context import history_messages
from runner_core.events import MessageEvent, ToolResultEvent
from runner_core.testing import FakeModel

#: Long enough for any run here; short enough that a hang fails fast.
RUN_DEADLINE_S = 10.0


@pytest.fixture
async def service() -> AsyncIterator[InMemorySessionService]:
    svc = InMemorySessionService()
    yield svc
    await svc.close()


def llm(name: str, model: FakeModel, **options: Any) -> LLMAgent:
    return LLMAgent(name, model=model, instruction=f"You are {name}.", **options)


async def run_all(runner: Runner, message: str | None = "go", **options: Any) -> list[Event]:
    """Every event of one run in session ``s1``; fails (instead of hanging) past the deadline."""

    async def collect() -> list[Event]:
        return [event async for event in runner.run("alice", "s1", message, **options)]

    events = await asyncio.wait_for(collect(), RUN_DEADLINE_S)
    assert events[-1].is_runner_completion()
    assert [e.seq for e in events] == list(range(events[0].seq, events[0].seq + len(events)))
    return events


def answers(events: list[Event]) -> list[tuple[str, str | None, str]]:
    """(author, branch, text) of each final answer."""
    return [
        (e.author, e.branch, e.message.text)
        for e in events
        if isinstance(e, MessageEvent) and e.is_final_response()
    ]


def request_text(request: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content") or "") for m in request["messages"])


async def stored(service: InMemorySessionService) -> list[Event]:
    session = await service.get_session("demo", "alice", "s1")
    assert session is not None
    return list(session.events)


@tool
def remember(topic: str, tool_context: ToolContext) -> str:
    """Remember the topic for the agents after this one.

    Args:
        topic: what to remember.
    """
    tool_context.state["topic"] = topic
    return "remembered"


@tool
def recall(tool_context: ToolContext) -> str:
    """Recall the topic an earlier agent remembered."""
    return str(tool_context.state.get("topic"))


@tool
def approve(tool_context: ToolContext) -> str:
    """Approve the draft: the loop stops."""
    tool_context.escalate()
    return "approved"


@tool(requires_confirmation=True)
def pay(amount: int) -> str:
    """Pay an amount (a person confirms it first).

    Args:
        amount: how much.
    """
    return f"paid {amount}"


@tool
async def lookup(query: str) -> str:
    """Look something up (slowly).

    Args:
        query: what to look up.
    """
    await asyncio.sleep(0.05)
    return f"found {query}"


# --- sequential -----------------------------------------------------------------------------


async def test_sequential_runs_each_sub_agent_in_turn_on_the_shared_session(
    service: InMemorySessionService,
) -> None:
    # Given a sequence of a researcher (who stores a topic in state) and a writer (who reads it)
    research, write = FakeModel(), FakeModel()
    research.add_tool_calls([("c1", "remember", {"topic": "otters"})])
    research.add_text("Otters hold hands.")
    write.add_tool_calls([("c2", "recall", {})])
    write.add_text("A poem about otters.")
    pipeline = SequentialAgent(
        "pipeline",
        sub_agents=[
            llm("researcher", research, tools=[remember]),
            llm("writer", write, tools=[recall]),
        ],
    )
    runner = Runner("demo", pipeline, session_service=service)
    # When it runs
    events = await run_all(runner)
    # Then the researcher runs to its answer first, then the writer, on the main line
    assert answers(events) == [
        ("researcher", None, "Otters hold hands."),
        ("writer", None, "A poem about otters."),
    ]
    # And the writer saw the researcher's answer and read the state it wrote
    assert "Otters hold hands." in request_text(write.requests[0])
    recalled = [e for e in events if isinstance(e, ToolResultEvent) and e.author == "writer"]
    assert recalled[0].message.text == "otters"
    # And the run's answer is the last sub-agent's
    assert events[-1].status == "completed"
    assert events[-1].final_text == "A poem about otters."


async def test_sequential_stops_when_a_sub_agent_fails(service: InMemorySessionService) -> None:
    # Given a sequence whose first agent's model fails
    first, second = FakeModel(), FakeModel()
    first.add_error(500, "the model is down")
    pipeline = SequentialAgent("pipeline", sub_agents=[llm("a", first), llm("b", second)])
    runner = Runner("demo", pipeline, session_service=service)
    # When it runs
    events = await run_all(runner)
    # Then the run fails with the first agent's error and the second never runs
    assert [e.type for e in events][-2:] == ["error", "runner.completion"]
    assert events[-1].status == "failed"
    assert second.requests == []


async def test_sequential_pause_then_resume_goes_on_with_the_rest(
    service: InMemorySessionService,
) -> None:
    # Given a sequence whose middle agent calls a tool that needs a confirmation
    first, payer, last = FakeModel(), FakeModel(), FakeModel()
    first.add_text("The bill is 40.")
    payer.add_tool_calls([("call_pay", "pay", {"amount": 40})])
    payer.add_text("Paid.")
    last.add_text("Receipt sent.")
    pipeline = SequentialAgent(
        "pipeline",
        sub_agents=[llm("reader", first), llm("payer", payer, tools=[pay]), llm("clerk", last)],
    )
    runner = Runner("demo", pipeline, session_service=service)
    # When it runs, it pauses in the payer, which wrote the run.paused event
    paused = await run_all(runner)
    assert paused[-1].status == "paused"
    assert [(e.author, e.branch) for e in paused if e.type == "run.paused"] == [("payer", None)]
    assert last.requests == []
    # And a second run confirms the call (a fresh Runner: only the session is shared)
    resumed_runner = Runner("demo", pipeline, session_service=service)
    resumed = await run_all(resumed_runner, None, tool_confirmations={"call_pay": True})
    # Then the payer's tool runs, the payer answers, and the clerk runs after it
    assert [(e.type, e.author) for e in resumed[:-1] if e.type != "message.delta"] == [
        ("tool.result", "payer"),
        ("message", "payer"),
        ("message", "clerk"),
    ]
    assert resumed[0].message.text == "paid 40"
    assert resumed[-1].status == "completed"
    assert resumed[-1].final_text == "Receipt sent."
    # And the agent before the pause did not run again
    assert len(first.requests) == 1


# --- parallel -------------------------------------------------------------------------------


async def test_parallel_branches_stream_concurrently_on_their_own_branches(
    service: InMemorySessionService,
) -> None:
    # Given two branches that stream their answers word by word, slowly
    left, right = FakeModel(), FakeModel()
    left.add_text("alpha beta gamma delta epsilon", chunk_delay=0.01)
    right.add_text("one two three four five", chunk_delay=0.01)
    fanout = ParallelAgent("fanout", sub_agents=[llm("left", left), llm("right", right)])
    runner = Runner("demo", fanout, session_service=service)
    # When it runs (run_all checks that seq is gap-free on the one stream)
    events = await run_all(runner)
    # Then the branches' deltas interleave on the stream
    deltas = [e.author for e in events if e.type == "message.delta"]
    first_right = deltas.index("right")
    assert "left" in deltas[first_right:], deltas
    # And every event of a branch carries its branch
    for event in events[1:-1]:
        assert event.branch == f"fanout.{event.author}"
    # And each branch's answer is stored on its branch
    assert sorted(answers(await stored(service))) == [
        ("left", "fanout.left", "alpha beta gamma delta epsilon"),
        ("right", "fanout.right", "one two three four five"),
    ]
    assert events[-1].status == "completed"


async def test_a_branch_never_sees_its_siblings_turns(service: InMemorySessionService) -> None:
    # Given a branch that looks something up (slowly) while its sibling answers at once
    slow, quick = FakeModel(), FakeModel()
    slow.add_tool_calls([("call_look", "lookup", {"query": "tides"})])
    slow.add_text("Tides are high.")
    quick.add_text("Quick sibling answer.")
    fanout = ParallelAgent(
        "fanout", sub_agents=[llm("slow", slow, tools=[lookup]), llm("quick", quick)]
    )
    runner = Runner("demo", fanout, session_service=service)
    # When it runs
    events = await run_all(runner, "tell me about the sea")
    # Then the sibling's answer was in the session before the slow branch's second model call
    order = [e.message.text for e in events if isinstance(e, MessageEvent)]
    assert order.index("Quick sibling answer.") < order.index("Tides are high.")
    # But that call saw the history up to the fork and its own turns, not the sibling's
    second = request_text(slow.requests[1])
    assert "tell me about the sea" in second
    assert "found tides" in second
    assert "Quick sibling answer." not in second
    assert "You are quick." not in second


async def test_the_agent_after_a_fan_out_sees_every_branch(
    service: InMemorySessionService,
) -> None:
    # Given a fan-out of two branches with tool calls, then a merger on the main line
    left, right, merge = FakeModel(), FakeModel(), FakeModel()
    left.add_tool_calls([("call_l", "lookup", {"query": "north"})])
    left.add_text("North is cold.")
    right.add_tool_calls([("call_r", "lookup", {"query": "south"})])
    right.add_text("South is warm.")
    merge.add_text("Cold north, warm south.")
    fanout = ParallelAgent(
        "fanout",
        sub_agents=[llm("left", left, tools=[lookup]), llm("right", right, tools=[lookup])],
    )
    pipeline = SequentialAgent("pipeline", sub_agents=[fanout, llm("merger", merge)])
    runner = Runner("demo", pipeline, session_service=service)
    # When it runs
    events = await run_all(runner)
    # Then the merger's request holds both branches' results and answers
    seen = request_text(merge.requests[0])
    for text in ("found north", "North is cold.", "found south", "South is warm."):
        assert text in seen
    assert events[-1].final_text == "Cold north, warm south."


async def test_a_failing_branch_cancels_the_others_and_fails_the_run(
    service: InMemorySessionService,
) -> None:
    # Given a branch whose model fails while its sibling's model call never returns
    broken, hanging = FakeModel(), FakeModel()
    broken.add_error(500, "the model is down", delay=0.02)
    hanging.add_hang()
    fanout = ParallelAgent("fanout", sub_agents=[llm("broken", broken), llm("stuck", hanging)])
    runner = Runner("demo", fanout, session_service=service)
    # When it runs (run_all fails if the hanging branch is waited for)
    events = await run_all(runner)
    # Then the broken branch's error ends the run failed
    errors = [e for e in events if e.type == "error"]
    assert [(e.author, e.branch) for e in errors] == [("broken", "fanout.broken")]
    assert events[-1].status == "failed"
    assert events[-1].error == errors[0].error
    assert await leftover_tasks() == set()


class Crashing(BaseAgent):
    async def run(self, ctx: InvocationContext) -> AsyncIterator[Event]:
        await asyncio.sleep(0.01)
        raise RuntimeError("the branch crashed")
        yield  # an async generator


async def test_a_branch_that_raises_fails_the_run(service: InMemorySessionService) -> None:
    hanging = FakeModel()
    hanging.add_hang()
    fanout = ParallelAgent("fanout", sub_agents=[Crashing("crash"), llm("stuck", hanging)])
    runner = Runner("demo", fanout, session_service=service)
    events = await run_all(runner)
    assert events[-1].status == "failed"
    assert events[-1].error is not None
    assert "the branch crashed" in events[-1].error.message
    assert await leftover_tasks() == set()


async def test_a_confirmation_in_a_branch_pauses_after_the_others_and_resumes_only_it(
    service: InMemorySessionService,
) -> None:
    # Given a branch that asks to pay at once, and a sibling that answers slowly
    payer, writer = FakeModel(), FakeModel()
    payer.add_tool_calls([("call_pay", "pay", {"amount": 7})])
    payer.add_text("Paid 7.")
    writer.add_text("A slow summary of the bill.", chunk_delay=0.01)
    fanout = ParallelAgent(
        "fanout", sub_agents=[llm("payer", payer, tools=[pay]), llm("writer", writer)]
    )
    runner = Runner("demo", fanout, session_service=service)
    # When it runs
    paused = await run_all(runner)
    # Then the run pauses only once the sibling has answered, with the payer's branch
    kinds = [e.type for e in paused if e.type != "message.delta"]
    assert kinds[-3:] == ["message", "run.paused", "runner.completion"]
    pause = next(e for e in paused if e.type == "run.paused")
    assert (pause.author, pause.branch) == ("payer", "fanout.payer")
    assert [c.id for c in pause.requested_confirmations] == ["call_pay"]
    assert paused[-1].status == "paused"
    # When a second run (another Runner: only the session is shared) confirms the call
    resumed_runner = Runner("demo", fanout, session_service=service)
    resumed = await run_all(resumed_runner, None, tool_confirmations={"call_pay": True})
    # Then only the paused branch goes on: its tool runs and it answers, on its branch
    assert [(e.type, e.author, e.branch) for e in resumed[:-1] if e.type != "message.delta"] == [
        ("tool.result", "payer", "fanout.payer"),
        ("message", "payer", "fanout.payer"),
    ]
    assert resumed[-1].status == "completed"
    assert resumed[-1].final_text == "Paid 7."
    # And the branch that had answered was not run again
    assert len(writer.requests) == 1
    assert "A slow summary" not in request_text(payer.requests[1])


@pytest.mark.parametrize("reader_pause", [0.05, 0.0], ids=["run-waits-for-reader", "at-once"])
async def test_cancelling_mid_parallel_stops_every_branch(
    service: InMemorySessionService, reader_pause: float
) -> None:
    # Given two branches: one streams slowly, one runs a tool that takes long
    streaming, tooling = FakeModel(), FakeModel()
    streaming.add_text(" ".join(["word"] * 50), chunk_delay=0.02)
    cancelled: list[str] = []

    @tool
    async def wait_long() -> str:
        """Wait a long time."""
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append("wait_long")
            raise
        return "done"

    tooling.add_tool_calls([("call_wait", "wait_long", {})])
    fanout = ParallelAgent(
        "fanout",
        sub_agents=[llm("streamer", streaming), llm("waiter", tooling, tools=[wait_long])],
    )
    runner = Runner("demo", fanout, session_service=service)

    # When the run is cancelled once both branches are under way, while it waits for its
    # reader (or, in the second case, while it waits for the branches)
    async def cancel_mid_run(reader_pause: float) -> list[Event]:
        events: list[Event] = []
        async with runner.run("alice", "s1", "go") as stream:
            async for event in stream:
                events.append(event)
                if event.type == "runner.completion":
                    cancelled.append(f"completion after {cancelled}")
                if event.type == "message.delta" and len(events) == 6:
                    await asyncio.sleep(reader_pause)
                    stream.cancel()
        return events

    events = await asyncio.wait_for(cancel_mid_run(reader_pause), RUN_DEADLINE_S)
    # Then the run ends cancelled, and no branch outlives it: the tool was cancelled before
    # the completion came
    assert events[-1].status == "cancelled"
    assert cancelled == ["wait_long", "completion after ['wait_long']"]
    assert await leftover_tasks() == set()


async def leftover_tasks() -> set[asyncio.Task[Any]]:
    """Tasks other than the test's own, once the loop has had a few turns to finish them."""
    current = asyncio.current_task()
    for _ in range(20):
        others = {t for t in asyncio.all_tasks() if t is not current and not t.done()}
        if not others:
            break
        await asyncio.sleep(0.01)
    return others


# --- loop -----------------------------------------------------------------------------------


async def test_a_loop_repeats_until_a_sub_agent_escalates(
    service: InMemorySessionService,
) -> None:
    # Given a writer and a critic in a loop; the critic approves the second draft
    writer, critic = FakeModel(), FakeModel()
    writer.add_text("Draft one.")
    critic.add_text("Shorter, please.")
    writer.add_text("Draft two.")
    critic.add_tool_calls([("call_ok", "approve", {})])
    critic.add_text("Approved.")
    loop = LoopAgent(
        "refine",
        sub_agents=[llm("writer", writer), llm("critic", critic, tools=[approve])],
        max_iterations=5,
    )
    runner = Runner("demo", loop, session_service=service)
    # When it runs
    events = await run_all(runner)
    # Then it ran two iterations, stopping after the critic's approving turn
    assert [a for a, _, _ in answers(events)] == ["writer", "critic", "writer", "critic"]
    assert events[-1].status == "completed"
    assert events[-1].final_text == "Approved."
    assert (len(writer.requests), len(critic.requests)) == (2, 3)


async def test_an_escalation_ends_the_loop_not_the_sequence_around_it(
    service: InMemorySessionService,
) -> None:
    # Given a loop (whose only agent approves at once) followed by a publisher
    checker, publisher = FakeModel(), FakeModel()
    checker.add_tool_calls([("call_ok", "approve", {})])
    checker.add_text("Looks good.")
    publisher.add_text("Published.")
    loop = LoopAgent(
        "check", sub_agents=[llm("checker", checker, tools=[approve])], max_iterations=3
    )
    pipeline = SequentialAgent("pipeline", sub_agents=[loop, llm("publisher", publisher)])
    runner = Runner("demo", pipeline, session_service=service)
    # When it runs
    events = await run_all(runner)
    # Then the loop stops after one iteration and the publisher still runs
    assert [a for a, _, _ in answers(events)] == ["checker", "publisher"]
    assert events[-1].final_text == "Published."


async def test_a_loop_that_reaches_its_maximum_ends_the_run_with_an_error(
    service: InMemorySessionService,
) -> None:
    # Given a loop of two iterations whose agent never escalates
    worker = FakeModel()
    worker.set_default("Still working.")
    loop = LoopAgent("grind", sub_agents=[llm("worker", worker)], max_iterations=2)
    runner = Runner("demo", loop, session_service=service)
    # When it runs
    events = await run_all(runner)
    # Then it stops after two iterations with an error event and a failed completion
    assert len(worker.requests) == 2
    errors = [e for e in events if e.type == "error"]
    assert len(errors) == 1
    assert errors[0].author == "grind"
    assert errors[0].error.type == "max_loop_iterations_exceeded"
    assert "max_iterations" in errors[0].error.message
    assert events[-1].status == "failed"
    assert events[-1].error == errors[0].error


# --- callbacks and plugins inside a tree ----------------------------------------------------


class BranchRecorder(Plugin):
    name = "recorder"

    def __init__(self) -> None:
        self.model_calls: list[str | None] = []
        self.events: list[tuple[str, str | None]] = []

    async def before_model(self, ctx: InvocationContext, request: ModelRequest) -> None:
        self.model_calls.append(ctx.branch)

    async def on_event(self, ctx: InvocationContext, event: Event) -> None:
        if event.type == "message":
            self.events.append((event.author, event.branch))


async def test_plugins_see_each_branch(service: InMemorySessionService) -> None:
    left, right = FakeModel(), FakeModel()
    left.add_text("L")
    right.add_text("R")
    fanout = ParallelAgent("fanout", sub_agents=[llm("left", left), llm("right", right)])
    recorder = BranchRecorder()
    runner = Runner("demo", fanout, session_service=service, plugins=[recorder])
    await run_all(runner)
    assert sorted(recorder.model_calls, key=str) == ["fanout.left", "fanout.right"]
    assert sorted(recorder.events, key=str) == [
        ("left", "fanout.left"),
        ("right", "fanout.right"),
        ("user", None),
    ]


# --- the branch history rule ----------------------------------------------------------------


def message(author: str, text: str, branch: str | None = None) -> MessageEvent:
    role = "user" if author == "user" else "assistant"
    return MessageEvent(
        invocation_id="inv",
        author=author,
        branch=branch,
        message=Message(role=role, content=text),
    )


def test_a_branch_sees_the_main_line_its_own_branch_and_forks_below_it() -> None:
    events = [
        message("user", "question"),
        message("a", "a's turn", "fan.a"),
        message("b", "b's turn", "fan.b"),
        message("x", "x inside a", "fan.a.inner.x"),
        message("y", "y inside a", "fan.a.inner.y"),
        message("merger", "merged"),
    ]
    seen_by_a = [m.content for m in history_messages(events, branch="fan.a")]
    assert seen_by_a == ["question", "a's turn", "x inside a", "y inside a", "merged"]
    seen_by_x = [m.content for m in history_messages(events, branch="fan.a.inner.x")]
    assert seen_by_x == ["question", "a's turn", "x inside a", "merged"]
    assert len(history_messages(events)) == len(events)


def test_the_main_line_sees_concurrent_branches_one_after_another() -> None:
    events = [
        message("user", "question"),
        message("a", "a1", "fan.a"),
        message("b", "b1", "fan.b"),
        message("a", "a2", "fan.a"),
        message("b", "b2", "fan.b"),
    ]
    assert [m.content for m in history_messages(events)] == ["question", "a1", "a2", "b1", "b2"]


# --- construction ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [SequentialAgent, ParallelAgent])
def test_a_workflow_agent_needs_sub_agents(kind: type[SequentialAgent]) -> None:
    with pytest.raises(InvalidRequestError, match=r"'empty' has no sub-agents.*sub_agents="):
        kind("empty", sub_agents=[])


def test_a_loop_agent_needs_sub_agents() -> None:
    with pytest.raises(InvalidRequestError, match=r"'empty' has no sub-agents"):
        LoopAgent("empty", sub_agents=[], max_iterations=3)


def test_a_loop_agent_needs_max_iterations() -> None:
    with pytest.raises(TypeError, match="max_iterations"):
        LoopAgent("loop", sub_agents=[llm("a", FakeModel())])  # type: ignore[call-arg]


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "3", None])
def test_a_loop_agent_refuses_a_bad_max_iterations(bad: Any) -> None:
    with pytest.raises(InvalidRequestError, match=r"max_iterations must be an int >= 1"):
        LoopAgent("loop", sub_agents=[llm("a", FakeModel())], max_iterations=bad)


def test_a_sub_agent_has_one_workflow_parent() -> None:
    a = llm("a", FakeModel())
    SequentialAgent("first", sub_agents=[a])
    with pytest.raises(InvalidRequestError, match="already a sub-agent of 'first'"):
        ParallelAgent("second", sub_agents=[a])


class Echo(BaseAgent):
    async def run(self, ctx: InvocationContext) -> AsyncIterator[Event]:
        yield ctx.message_event(self.name, Message.assistant(f"{self.name} on {ctx.branch}"))
        ctx.outcome = RunOutcome(status="completed", final_text=self.name)


async def test_nested_parallel_agents_name_their_branches_under_the_outer_one(
    service: InMemorySessionService,
) -> None:
    inner = ParallelAgent("inner", sub_agents=[Echo("x"), Echo("y")])
    outer = ParallelAgent("outer", sub_agents=[inner, Echo("z")])
    runner = Runner("demo", outer, session_service=service)
    events = await run_all(runner)
    assert sorted(e.message.text for e in events if isinstance(e, MessageEvent))[1:] == [
        "x on outer.inner.inner.x",
        "y on outer.inner.inner.y",
        "z on outer.z",
    ]


# --- a redelivered run inside a tree --------------------------------------------------------
#
# A worker that dies mid-run leaves the invocation's events in the session; the redelivered run
# has the same invocation ID. Here the first attempt "dies" once its reader has an event: the
# run is closed there, as a killed worker stores and publishes nothing more, and the second
# attempt is given the same invocation ID, the next seq and attempt=2, as a worker gives it.


async def crash_after(
    runner: Runner, invocation_id: str, last_seen: str, message: str | None = "go", **options: Any
) -> list[Event]:
    """The events a first attempt hands out up to the first one whose description
    (:func:`describe`) is ``last_seen``; then the attempt dies."""
    seen: list[Event] = []
    stream = runner.run("alice", "s1", message, invocation_id=invocation_id, **options)

    async def read() -> None:
        async for event in stream:
            seen.append(event)
            if describe(event) == last_seen:
                return
        raise AssertionError(f"the run ended before {last_seen!r}: {[describe(e) for e in seen]}")

    await asyncio.wait_for(read(), RUN_DEADLINE_S)
    await stream.aclose()
    return seen


async def redeliver(
    runner: Runner,
    invocation_id: str,
    seen: list[Event],
    message: str | None = "go",
    **options: Any,
) -> list[Event]:
    """The second attempt: what the reader missed, then the rest of the run."""
    first_seq = seen[-1].seq + 1
    return await run_all(
        runner, message, invocation_id=invocation_id, first_seq=first_seq, attempt=2, **options
    )


def describe(event: Event) -> str:
    """``"type author"``, with ``: text`` for a final answer or a tool result."""
    text = ""
    if isinstance(event, MessageEvent) and event.is_final_response():
        text = f": {event.message.text}"
    elif isinstance(event, ToolResultEvent):
        text = f": {event.message.text}"
    return f"{event.type} {event.author}{text}"


def assert_one_stream(first: list[Event], second: list[Event]) -> None:
    """Both attempts' events make one gap-free stream with one completion."""
    both = first + second
    assert [e.seq for e in both] == list(range(len(both)))
    assert [e.type for e in both].count("runner.completion") == 1


def counting(executions: list[str]) -> FunctionTool:
    """A tool that appends its label to ``executions`` each time it runs."""

    @tool
    def count(label: str) -> str:
        """Count one execution.

        Args:
            label: what to count.
        """
        executions.append(label)
        return f"counted {label}"

    return count


async def test_a_sequence_redelivered_between_sub_agents_goes_on_with_the_next_one(
    service: InMemorySessionService,
) -> None:
    # Given a sequence whose first agent answered when the worker died, in the second agent's
    # model call
    first, second = FakeModel(), FakeModel()
    first.add_text("The facts.")
    second.add_hang()
    second.add_text("The essay.")
    pipeline = SequentialAgent("pipeline", sub_agents=[llm("a", first), llm("b", second)])
    runner = Runner("demo", pipeline, session_service=service)
    seen = await crash_after(runner, "inv-1", "message a: The facts.")
    # When the run is redelivered
    again = await redeliver(runner, "inv-1", seen)
    # Then it goes on with the second agent (it does not end with the first one's answer)
    assert again[-1].status == "completed"
    assert again[-1].final_text == "The essay."
    assert answers(await stored(service)) == [("a", None, "The facts."), ("b", None, "The essay.")]
    # And the first agent's model was not called again
    assert len(first.requests) == 1
    assert "The facts." in request_text(second.requests[-1])
    assert_one_stream(seen, again)


async def test_a_sequence_redelivered_mid_tool_runs_each_tool_once(
    service: InMemorySessionService,
) -> None:
    # Given a sequence of two agents with a tool each; the second one's tool result was stored
    # when the worker died, in that agent's next model call
    executions: list[str] = []
    count = counting(executions)
    first, second = FakeModel(), FakeModel()
    first.add_tool_calls([("call_a", "count", {"label": "a"})])
    first.add_text("A counted.")
    second.add_tool_calls([("call_b", "count", {"label": "b"})])
    second.add_hang()
    second.add_text("B counted.")
    pipeline = SequentialAgent(
        "pipeline", sub_agents=[llm("a", first, tools=[count]), llm("b", second, tools=[count])]
    )
    runner = Runner("demo", pipeline, session_service=service)
    seen = await crash_after(runner, "inv-2", "tool.result b: counted b")
    # When the run is redelivered
    again = await redeliver(runner, "inv-2", seen)
    # Then it completes with the second agent's answer, each tool having run once
    assert again[-1].final_text == "B counted."
    assert executions == ["a", "b"]
    assert (len(first.requests), len(second.requests)) == (2, 3)
    assert_one_stream(seen, again)


async def test_a_sequence_redelivered_while_a_tool_ran_runs_that_call_again(
    service: InMemorySessionService,
) -> None:
    # Given a sequence whose second agent's tool was running (no result stored) when the
    # worker died
    finished: list[str] = []
    release = asyncio.Event()

    @tool
    async def slow(label: str) -> str:
        """Finish once released.

        Args:
            label: what to count.
        """
        if not finished and not release.is_set():
            await asyncio.sleep(30)  # the first attempt dies in here
        finished.append(label)
        return f"finished {label}"

    first, second = FakeModel(), FakeModel()
    first.add_text("Ready.")
    second.add_tool_calls([("call_s", "slow", {"label": "b"})])
    second.add_text("Done.")
    pipeline = SequentialAgent(
        "pipeline", sub_agents=[llm("a", first), llm("b", second, tools=[slow])]
    )
    runner = Runner("demo", pipeline, session_service=service)
    seen = await crash_after(runner, "inv-3", "message b")
    assert finished == []
    # When the run is redelivered
    release.set()
    again = await redeliver(runner, "inv-3", seen)
    # Then the call without a result runs (once) and the agent answers it; nothing else reruns
    assert [describe(e) for e in again if e.type not in ("message.delta", "run.restarted")] == [
        "tool.result b: finished b",
        "message b: Done.",
        "runner.completion demo",
    ]
    assert finished == ["b"]
    assert (len(first.requests), len(second.requests)) == (1, 2)
    assert_one_stream(seen, again)


async def test_a_loop_redelivered_mid_iteration_is_back_at_that_iteration(
    service: InMemorySessionService,
) -> None:
    # Given a writer and a critic in a loop; in the second iteration the worker died in the
    # critic's model call
    writer, critic = FakeModel(), FakeModel()
    writer.add_text("Draft one.")
    critic.add_text("Shorter, please.")
    writer.add_text("Draft two.")
    critic.add_hang()
    critic.add_tool_calls([("call_ok", "approve", {})])
    critic.add_text("Approved.")
    loop = LoopAgent(
        "refine",
        sub_agents=[llm("writer", writer), llm("critic", critic, tools=[approve])],
        max_iterations=3,
    )
    runner = Runner("demo", loop, session_service=service)
    seen = await crash_after(runner, "inv-4", "message writer: Draft two.")
    # When the run is redelivered
    again = await redeliver(runner, "inv-4", seen)
    # Then the critic of the second iteration goes on and approves; the writer is not asked
    # for a third draft, and the loop did not start over
    assert again[-1].status == "completed"
    assert again[-1].final_text == "Approved."
    assert [a for a, _, _ in answers(await stored(service))] == [
        "writer", "critic", "writer", "critic",
    ]  # fmt: skip
    assert len(writer.requests) == 2
    assert_one_stream(seen, again)


async def test_a_parallel_agent_redelivered_runs_only_the_branches_still_going(
    service: InMemorySessionService,
) -> None:
    # Given two branches: one answered, the other's tool result was stored when the worker
    # died in that branch's next model call
    executions: list[str] = []
    count = counting(executions)
    quick, slow = FakeModel(), FakeModel()
    quick.add_text("Quick answer.")
    slow.add_tool_calls([("call_s", "count", {"label": "slow"})], delay=0.05)
    slow.add_hang()
    slow.add_text("Slow answer.")
    fanout = ParallelAgent(
        "fanout", sub_agents=[llm("quick", quick), llm("slow", slow, tools=[count])]
    )
    runner = Runner("demo", fanout, session_service=service)
    seen = await crash_after(runner, "inv-5", "tool.result slow: counted slow")
    assert "message quick: Quick answer." in [describe(e) for e in seen]
    # When the run is redelivered
    again = await redeliver(runner, "inv-5", seen)
    # Then only the unfinished branch goes on, on its branch; its tool is not run again
    went_on = [(e.author, e.branch) for e in again if e.type == "message"]
    assert went_on == [("slow", "fanout.slow")]
    assert again[-1].final_text == "Slow answer."
    assert len(quick.requests) == 1
    assert executions == ["slow"]
    assert_one_stream(seen, again)


async def test_a_finished_tree_redelivered_completes_without_a_model_call(
    service: InMemorySessionService,
) -> None:
    # Given a sequence that stored every event, whose completion was never published
    first, second = FakeModel(), FakeModel()
    first.add_text("One.")
    second.add_text("Two.")
    pipeline = SequentialAgent("pipeline", sub_agents=[llm("a", first), llm("b", second)])
    runner = Runner("demo", pipeline, session_service=service)
    events = await run_all(runner, invocation_id="inv-6")
    # When the run is delivered again
    again = await run_all(runner, invocation_id="inv-6", first_seq=events[-1].seq)
    # Then it completes with the stored answer and calls no model
    assert [e.type for e in again] == ["runner.completion"]
    assert again[0].final_text == "Two."
    assert (len(first.requests), len(second.requests)) == (1, 1)


async def test_a_resumed_sequence_redelivered_goes_on_after_the_paused_agent(
    service: InMemorySessionService,
) -> None:
    # Given a sequence paused in its middle agent, and a resume that died in the last agent
    paid: list[int] = []

    @tool(requires_confirmation=True)
    def pay_once(amount: int) -> str:
        """Pay (a person confirms it first).

        Args:
            amount: how much.
        """
        paid.append(amount)
        return f"paid {amount}"

    reader, payer, clerk = FakeModel(), FakeModel(), FakeModel()
    reader.add_text("The bill is 40.")
    payer.add_tool_calls([("call_pay", "pay_once", {"amount": 40})])
    payer.add_text("Paid.")
    clerk.add_hang()
    clerk.add_text("Receipt sent.")
    pipeline = SequentialAgent(
        "pipeline",
        sub_agents=[
            llm("reader", reader), llm("payer", payer, tools=[pay_once]), llm("clerk", clerk),
        ],
    )  # fmt: skip
    runner = Runner("demo", pipeline, session_service=service)
    assert (await run_all(runner))[-1].status == "paused"
    confirm = {"tool_confirmations": {"call_pay": True}}
    seen = await crash_after(runner, "inv-7", "message payer: Paid.", None, **confirm)
    # When the resume is redelivered (with the same confirmations, as the task carries them)
    again = await redeliver(runner, "inv-7", seen, None, **confirm)
    # Then the clerk answers; the payment ran once and no agent before the clerk ran again
    assert again[-1].status == "completed"
    assert again[-1].final_text == "Receipt sent."
    assert paid == [40]
    assert (len(reader.requests), len(payer.requests)) == (1, 2)
    assert_one_stream(seen, again)


async def test_a_run_redelivered_after_a_transfer_goes_on_inside_the_target(
    service: InMemorySessionService,
) -> None:
    # Given a desk agent that transferred to a sequence, which died in its second agent
    desk, first, second = FakeModel(), FakeModel(), FakeModel()
    desk.add_tool_calls([("call_t", "transfer_to_agent", {"agent_name": "pipeline"})])
    first.add_text("Step one.")
    second.add_hang()
    second.add_text("Step two.")
    pipeline = SequentialAgent("pipeline", sub_agents=[llm("a", first), llm("b", second)])
    root = llm("desk", desk, sub_agents=[pipeline])
    runner = Runner("demo", root, session_service=service)
    seen = await crash_after(runner, "inv-8", "message a: Step one.")
    # When the run is redelivered
    again = await redeliver(runner, "inv-8", seen)
    # Then it goes on in the sequence, with its second agent: no agent answers twice
    assert again[-1].final_text == "Step two."
    assert (len(desk.requests), len(first.requests)) == (1, 1)
    assert [a for a, _, _ in answers(await stored(service))] == ["a", "b"]
    assert_one_stream(seen, again)
