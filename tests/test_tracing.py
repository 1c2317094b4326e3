"""The trace recorder in-process (runner_core.tracing): the graph of a run's steps by seed
003's rules, its totals, failed and cancelled runs, parallel branches, transfers, and a
redelivered run that fills in what the dead attempt left out."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from runner_core import (
    InvocationContext,
    LLMAgent,
    ModelPrice,
    ParallelAgent,
    Plugin,
    Runner,
    SequentialAgent,
    tool,
)
from runner_core.errors import SessionBackendError
from runner_core.events import Event
from runner_core.memory_sessions import InMemorySessionService
from runner_core.memory_traces import InMemoryTraceStore
from runner_core.testing import FakeModel
from runner_core.traces import MAX_FIELD_CHARS, Step, Trace
from runner_core.tracing import TraceRecorder

PRICE = ModelPrice(prompt_per_million=1_000_000, completion_per_million=2_000_000)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def shape(trace: Trace) -> list[tuple[str, str, list[str]]]:
    return [(s.step_id, s.kind, s.parent_ids) for s in trace.steps]


async def run_traced(agent: Any, message: str = "What is 2 + 3?", **options: Any) -> Trace:
    store = InMemoryTraceStore()
    async with Runner("demo", agent, plugins=[TraceRecorder(store, agent=agent)]) as runner:
        stream = runner.run("alice", "s1", message, **options)
        await stream.completion()
    trace = await store.get(stream.invocation_id)
    assert trace is not None
    return trace


async def test_a_run_with_tools_is_recorded_by_seed_003s_rules() -> None:
    model = FakeModel(price=PRICE)
    model.add_tool_calls([("c1", "add", {"a": 2, "b": 3}), ("c2", "add", {"a": 1, "b": 1})])
    model.add_text("5 and 2", chunks=1)
    agent = LLMAgent("calc", model=model, tools=[add], instruction="Be exact.")

    trace = await run_traced(agent)

    # model:1 asked for two tools; the next call follows it and both tools; then the answer
    assert shape(trace) == [
        ("model:1", "model_call", []),
        ("tool:2", "tool_call", ["model:1"]),
        ("tool:3", "tool_call", ["model:1"]),
        ("model:5", "model_call", ["model:1", "tool:2", "tool:3"]),
        ("conclusion", "conclusion", ["model:5"]),
    ]
    first, tool_1, _, last, conclusion = trace.steps
    assert first.messages == [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": "What is 2 + 3?"},
    ]
    assert first.tool_calls is not None and first.tool_calls[0]["function"]["name"] == "add"
    assert first.model == "scripted" and first.agent == "calc"
    assert (tool_1.tool_name, tool_1.arguments, tool_1.result) == ("add", {"a": 2, "b": 3}, "5")
    assert last.reply == "5 and 2" and conclusion.content == "5 and 2"
    assert last.messages is not None and last.messages[-1]["role"] == "tool"
    # Tokens and cost per model call, the run's totals on the trace
    assert first.usage is not None and first.cost == PRICE.cost(first.usage)
    assert trace.usage.model_calls == 2
    assert trace.usage.total_tokens == sum(s.usage.total_tokens for s in trace.steps if s.usage)
    assert trace.cost == pytest.approx(sum(s.cost for s in trace.steps if s.cost is not None))
    assert trace.status == "completed" and trace.task == "What is 2 + 3?"
    for step in trace.steps:
        assert step.started_at is not None and step.ended_at is not None
        assert step.ended_at >= step.started_at
    assert trace.ended_at is not None and trace.ended_at >= trace.started_at


async def test_a_failing_model_call_is_a_failed_step_and_the_trace_says_why() -> None:
    model = FakeModel()
    model.add_error(500, "upstream exploded")
    trace = await run_traced(LLMAgent("calc", model=model))

    assert trace.status == "failed" and trace.error is not None
    [step] = trace.steps
    assert step.kind == "model_call" and step.error is not None
    assert "upstream exploded" in step.error.message
    assert step.messages == [{"role": "user", "content": "What is 2 + 3?"}]


async def test_a_cancelled_run_leaves_its_steps_and_status() -> None:
    model = FakeModel()
    model.add_tool_calls([("c1", "add", {"a": 1, "b": 2})])
    model.add_hang()
    store = InMemoryTraceStore()
    agent = LLMAgent("calc", model=model, tools=[add])
    async with Runner("demo", agent, plugins=[TraceRecorder(store)]) as runner:
        stream = runner.run("alice", "s1", "go")
        async for event in stream:
            if event.type == "tool.result":
                stream.cancel()
    trace = await store.get(stream.invocation_id)
    assert trace is not None and trace.status == "cancelled"
    assert [s.kind for s in trace.steps] == ["model_call", "tool_call"]


async def test_a_running_runs_trace_shows_up_before_its_first_step_ends() -> None:
    # Given a run whose first model call never answers
    model = FakeModel()
    model.add_hang()
    store = InMemoryTraceStore()
    agent = LLMAgent("calc", model=model)
    async with Runner("demo", agent, plugins=[TraceRecorder(store)]) as runner:
        stream = runner.run("alice", "s1", "go")
        first = await anext(stream)  # the user message: the run is under way

        # Then its trace is there, running and without steps, soon after the run began (the
        # trace is started by the writer's first write, which lingers WRITE_LINGER_S at most)
        for _ in range(500):  # 10 s at most
            trace = await store.get(first.invocation_id)
            if trace is not None:
                break
            await asyncio.sleep(0.02)
        assert trace is not None and trace.status == "running" and trace.steps == []
        stream.cancel()
        await stream.completion()
    trace = await store.get(first.invocation_id)
    assert trace is not None and trace.status == "cancelled" and trace.attempts == 1


async def test_parallel_branches_each_follow_the_fork_and_the_next_step_joins_them() -> None:
    flights, hotels, planner = FakeModel(), FakeModel(), FakeModel()
    flights.add_text("Flight AF 1234.")
    hotels.add_text("Hotel du Nord.")
    planner.add_text("Fly and stay.")
    trip = SequentialAgent(
        "trip",
        sub_agents=[
            ParallelAgent(
                "search",
                sub_agents=[
                    LLMAgent("flights", model=flights),
                    LLMAgent("hotels", model=hotels),
                ],
            ),
            LLMAgent("planner", model=planner),
        ],
    )

    trace = await run_traced(trip, "A trip to Paris.")

    by_agent = {s.agent: s for s in trace.steps if s.kind == "model_call"}
    assert by_agent["flights"].branch == "search.flights" and by_agent["flights"].parent_ids == []
    assert by_agent["hotels"].branch == "search.hotels" and by_agent["hotels"].parent_ids == []
    assert sorted(by_agent["planner"].parent_ids) == sorted(
        [by_agent["flights"].step_id, by_agent["hotels"].step_id]
    )
    conclusion = trace.steps[-1]
    assert conclusion.kind == "conclusion" and conclusion.parent_ids == [
        by_agent["planner"].step_id
    ]


async def test_a_transfer_is_a_step_and_the_next_agent_follows_it() -> None:
    model = FakeModel()
    model.add_tool_calls([("t1", "transfer_to_agent", {"agent_name": "billing"})])
    model.add_text("Your invoice is paid.")
    billing = LLMAgent("billing", model=model, description="Invoices.")
    desk = LLMAgent("desk", model=model, sub_agents=[billing])

    trace = await run_traced(desk, "Is my invoice paid?")

    kinds = [(s.kind, s.agent) for s in trace.steps]
    assert kinds == [
        ("model_call", "desk"),
        ("tool_call", "desk"),
        ("transfer", "desk"),
        ("model_call", "billing"),
        ("conclusion", None),
    ]
    transfer, answer = trace.steps[2], trace.steps[3]
    assert transfer.to_agent == "billing"
    assert transfer.parent_ids == [trace.steps[0].step_id, trace.steps[1].step_id]
    assert answer.parent_ids == [transfer.step_id]


class _LosesToolSteps(InMemoryTraceStore):
    """A trace store whose writes of tool steps fail while ``failing`` is set, as if the worker
    died between storing the event and its step."""

    failing = True

    async def add_step(self, invocation_id: str, step: Step, *, fence: int | None = None) -> bool:
        if self.failing and step.kind == "tool_call":
            raise SessionBackendError("the trace store went away")
        return await super().add_step(invocation_id, step, fence=fence)


async def test_a_redelivered_run_adds_the_steps_its_first_attempt_left_out() -> None:
    # Given a run whose tool step was never written (its trace store failed there)
    model = FakeModel()
    model.add_tool_calls([("c1", "add", {"a": 2, "b": 3})])
    model.add_text("5")
    agent = LLMAgent("calc", model=model, tools=[add])
    sessions, store = InMemorySessionService(), _LosesToolSteps()
    async with Runner(
        "demo", agent, session_service=sessions, plugins=[TraceRecorder(store, agent=agent)]
    ) as runner:
        first = await runner.run("alice", "s1", "2 + 3?", invocation_id="inv-7").completion()
    assert first.status == "completed"  # a failing trace store does not fail the run
    broken = await store.get("inv-7")
    assert broken is not None and [s.kind for s in broken.steps] == ["model_call"]

    # When the same invocation is delivered again
    store.failing = False
    async with Runner(
        "demo", agent, session_service=sessions, plugins=[TraceRecorder(store, agent=agent)]
    ) as runner:
        redelivered = runner.run("alice", "s1", "2 + 3?", invocation_id="inv-7", attempt=2)
        again = await redelivered.completion()

    # Then the trace has every step once, rebuilt from the session's events
    assert again.status == "completed" and len(model.requests) == 2  # no model call again
    trace = await store.get("inv-7")
    assert trace is not None and trace.attempts == 2 and trace.status == "completed"
    assert shape(trace) == [
        ("model:1", "model_call", []),
        ("tool:2", "tool_call", ["model:1"]),
        ("model:4", "model_call", ["model:1", "tool:2"]),  # seq 3: its streamed text
        ("conclusion", "conclusion", ["model:4"]),
    ]


class _Recorder(Plugin):
    name = "seen"

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    async def after_event(self, ctx: InvocationContext, event: Event) -> None:
        self.seen.append((event.type, event.seq))


async def test_after_event_sees_each_event_numbered_the_completion_last() -> None:
    model = FakeModel()
    model.add_text("hi", chunks=2)
    plugin = _Recorder()
    async with Runner("demo", LLMAgent("a", model=model), plugins=[plugin]) as runner:
        events = [e async for e in runner.run("alice", "s1", "hello")]

    assert plugin.seen == [(e.type, e.seq) for e in events]
    assert plugin.seen[-1][0] == "runner.completion"


class _Fails(Plugin):
    name = "fails"

    async def after_event(self, ctx: InvocationContext, event: Event) -> None:
        if event.type == "message" and event.message.role == "assistant":
            raise RuntimeError("observer broke")


async def test_an_after_event_hook_that_raises_fails_the_run_after_handing_the_event_out() -> None:
    model = FakeModel()
    model.add_text("hi")
    async with Runner("demo", LLMAgent("a", model=model), plugins=[_Fails()]) as runner:
        events = [e async for e in runner.run("alice", "s1", "hello")]

    types = [e.type for e in events if e.type != "message.delta"]
    assert types == ["message", "message", "error", "runner.completion"]
    assert events[-1].status == "failed"
    assert "after_event raised RuntimeError: observer broke" in events[-2].error.message


async def test_one_recorder_records_every_run_of_its_runner() -> None:
    model = FakeModel()
    for _ in range(5):
        model.add_text("ok")
    store = InMemoryTraceStore()
    recorder = TraceRecorder(store)
    async with Runner("demo", LLMAgent("a", model=model), plugins=[recorder]) as runner:
        ids = []
        for n in range(5):
            stream = runner.run("alice", f"s{n}", "hello")
            await stream.completion()
            ids.append(stream.invocation_id)
    traces = await asyncio.gather(*(store.get(i) for i in ids))
    assert all(t is not None and t.status == "completed" for t in traces)


async def test_with_telemetry_on_the_trace_records_the_runs_opentelemetry_trace_id() -> None:
    sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
    from runner_core.telemetry import Telemetry

    model = FakeModel()
    model.add_text("hi")
    store = InMemoryTraceStore()
    telemetry = Telemetry(tracer_provider=sdk_trace.TracerProvider())
    plugins = [TraceRecorder(store), telemetry]
    async with Runner("demo", LLMAgent("a", model=model), plugins=plugins) as runner:
        stream = runner.run("alice", "s1", "hello")
        completion = await stream.completion()

    trace = await store.get(stream.invocation_id)
    assert completion.trace_id is not None and len(completion.trace_id) == 32
    assert trace is not None and trace.otel_trace_id == completion.trace_id


async def test_a_long_history_is_capped_in_the_step_keeping_the_newest_messages() -> None:
    model = FakeModel()
    model.add_text("noted")
    history = [{"role": "user", "content": f"note {n}: " + "x" * 1000} for n in range(60)]
    history += [{"role": "assistant", "content": "ok"}]

    trace = await run_traced(LLMAgent("a", model=model), "the last question", messages=history)

    [step, _] = trace.steps
    assert step.messages[0].endswith("earlier items left out]")
    assert step.messages[-1] == {"role": "user", "content": "the last question"}
    assert 1 < len(step.messages) < len(history)
    assert len(step.to_json()) < 2 * MAX_FIELD_CHARS


async def test_deleting_a_session_through_the_runner_deletes_its_traces() -> None:
    model = FakeModel()
    model.add_text("one")
    model.add_text("two")
    store = InMemoryTraceStore()
    async with Runner("demo", LLMAgent("a", model=model), plugins=[TraceRecorder(store)]) as runner:
        kept = runner.run("alice", "keep", "hello")
        await kept.completion()
        doomed = runner.run("alice", "drop", "hello")
        await doomed.completion()
        assert await store.get(doomed.invocation_id) is not None

        await runner.delete_session("alice", "drop")

    assert await store.get(doomed.invocation_id) is None
    assert await store.get(kept.invocation_id) is not None
