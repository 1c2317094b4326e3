"""The Runner and LLMAgent through the public API, driven by the in-process FakeModel."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from runner_core import (
    Event,
    InvalidRequestError,
    LLMAgent,
    Message,
    ModelPrice,
    Runner,
    ToolContext,
    tool,
)
from runner_core.context import NOT_EXECUTED
from runner_core.events import decode_event
from runner_core.testing import FakeModel
from session_backends import InMemorySessionService


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


@pytest.fixture
async def service() -> AsyncIterator[InMemorySessionService]:
    svc = InMemorySessionService()
    yield svc
    await svc.close()


@tool
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first addend.
        b: the second addend.
    """
    return a + b


@tool
def explode() -> str:
    """Always fails."""
    raise RuntimeError("kaboom")


def make_runner(
    model: FakeModel,
    service: InMemorySessionService,
    *,
    tools: list[Any] | None = None,
    **agent_options: Any,
) -> Runner:
    agent = LLMAgent(
        "helper",
        model=model,
        instruction="Be brief.",
        tools=tools if tools is not None else [add],
        **agent_options,
    )
    return Runner("demo", agent, session_service=service)


async def run_all(runner: Runner, *args: Any, **kwargs: Any) -> list[Event]:
    return [event async for event in runner.run(*args, **kwargs)]


def completion_of(events: list[Event]) -> Event:
    assert events[-1].is_runner_completion()
    assert sum(e.is_runner_completion() for e in events) == 1
    return events[-1]


def assert_gap_free(events: list[Event]) -> None:
    assert [e.seq for e in events] == list(range(events[0].seq, events[0].seq + len(events)))
    assert len({e.invocation_id for e in events}) == 1


# --- the basic contract ---------------------------------------------------------------


async def test_text_run_streams_deltas_stores_complete_events_and_completes(
    model: FakeModel, service: InMemorySessionService
) -> None:
    # Given a model that answers in three chunks
    model.add_text("Hello there friend", chunks=3)
    runner = make_runner(model, service)
    # When a user sends a message to a new session
    events = await run_all(runner, "alice", "s1", "hi")
    # Then the events are: user message, deltas, assistant message, completion
    types = [e.type for e in events]
    assert types == ["message", "message.delta", "message.delta", "message.delta", "message",
                     "runner.completion"]
    assert_gap_free(events)
    assert events[0].seq == 0
    assert "".join(e.delta or "" for e in events if e.partial) == "Hello there friend"
    assert events[4].is_final_response()
    completion = completion_of(events)
    assert completion.status == "completed"
    assert completion.final_text == "Hello there friend"
    assert completion.usage is not None and completion.usage.model_calls == 1
    assert completion.usage.total_tokens > 0
    # And the session holds exactly the complete events, user message first
    session = await service.get_session("demo", "alice", "s1")
    assert session is not None
    assert [e.id for e in session.events] == [events[0].id, events[4].id]
    assert session.events[0].message == Message.user("hi")
    # And the model got the instruction and the user message
    sent = model.requests[0]["messages"]
    assert sent == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]


async def test_deltas_run_ahead_of_the_reader_but_stored_events_wait_for_it(
    model: FakeModel, service: InMemorySessionService
) -> None:
    # Given a model that streams five chunks, and a reader that is slow after its first delta
    model.add_text("one two three four five", chunks=5)
    runner = make_runner(model, service)
    stream = runner.run("alice", "s1", "hi")
    assert (await anext(stream)).type == "message"  # the user's message
    assert (await anext(stream)).type == "message.delta"
    await asyncio.sleep(0.05)

    # When it takes what the run handed out meanwhile
    ready = stream.ready()

    # Then that is the other deltas, in order, and nothing stored: the assistant's message waits
    # until the reader asks for more, so only the user's message is in the session
    assert [e.type for e in ready] == ["message.delta"] * 4
    assert [e.seq for e in ready] == [2, 3, 4, 5]
    assert stream.ready() == []
    session = await service.get_session("demo", "alice", "s1")
    assert session is not None and len(session.events) == 1
    # And asking for more goes on with the stored message, then the completion
    rest = [event async for event in stream]
    assert [e.type for e in rest] == ["message", "runner.completion"]
    assert [e.seq for e in rest] == [6, 7]


async def test_ready_ends_at_the_completion(
    model: FakeModel, service: InMemorySessionService
) -> None:
    model.add_text("done", chunks=1)
    runner = make_runner(model, service)
    stream = runner.run("alice", "s1", "hi")
    taken = [await anext(stream)]
    while taken[-1].type != "runner.completion":
        await asyncio.sleep(0.01)
        taken.extend(stream.ready() or [await anext(stream)])
    assert stream.ready() == []
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert_gap_free(taken)


async def test_tool_call_run_makes_two_model_calls_and_totals_usage_and_cost(
    model: FakeModel, service: InMemorySessionService
) -> None:
    model.add_tool_calls([("call_1", "add", {"a": 2, "b": 3})],
                         usage={"prompt_tokens": 100, "completion_tokens": 10})
    model.add_text("It is 5.", usage={"prompt_tokens": 200, "completion_tokens": 20})
    agent = LLMAgent(
        "helper",
        model=model,
        tools=[add],
    )
    agent.model.price = ModelPrice(prompt_per_million=1.0, completion_per_million=10.0)
    runner = Runner("demo", agent, session_service=service)
    events = await run_all(runner, "alice", "s1", "what is 2+3?")
    complete = [e for e in events if not e.partial]
    assert [e.type for e in complete] == ["message", "message", "tool.result", "message",
                                          "runner.completion"]
    assert complete[2].message == Message.tool("call_1", "5", name="add")
    completion = completion_of(events)
    assert completion.usage is not None
    assert completion.usage.model_calls == 2
    assert completion.usage.prompt_tokens == 300
    assert completion.usage.completion_tokens == 30
    assert completion.cost == pytest.approx((300 * 1.0 + 30 * 10.0) / 1_000_000)
    # The second model call saw the call and its result.
    second = model.requests[1]["messages"]
    assert second[-2]["tool_calls"][0]["id"] == "call_1"
    assert second[-1] == {"role": "tool", "content": "5", "tool_call_id": "call_1", "name": "add"}
    # Tool schema sent to the model came from the type hints and docstring.
    tool_schema = model.requests[0]["tools"][0]["function"]
    assert tool_schema["name"] == "add"
    assert tool_schema["parameters"]["properties"]["a"] == {
        "type": "integer", "description": "the first addend."
    }


async def test_empty_session_id_creates_a_session_with_a_generated_id(
    model: FakeModel, service: InMemorySessionService
) -> None:
    model.add_text("ok")
    events = await run_all(make_runner(model, service), "alice", "", "hi")
    session_id = completion_of(events).session_id  # the completion names the run
    assert session_id
    session = await service.get_session("demo", "alice", session_id)
    stored = [e.id for e in events if not e.partial and not e.is_runner_completion()]
    assert session is not None and [e.id for e in session.events] == stored


async def test_independent_tool_calls_of_one_turn_run_concurrently(
    model: FakeModel, service: InMemorySessionService
) -> None:
    # Each tool waits for the other to start: run one after the other, they would time out.
    started = {"ping": asyncio.Event(), "pong": asyncio.Event()}

    @tool
    async def ping() -> str:
        """Ping."""
        started["ping"].set()
        await asyncio.wait_for(started["pong"].wait(), 10)
        return "ping done"

    @tool
    async def pong() -> str:
        """Pong."""
        started["pong"].set()
        await asyncio.wait_for(started["ping"].wait(), 10)
        return "pong done"

    model.add_tool_calls([("c1", "ping", {}), ("c2", "pong", {})])
    model.add_text("both done")
    events = await run_all(make_runner(model, service, tools=[ping, pong]), "u", "s", "go")
    results = [e for e in events if e.type == "tool.result"]
    assert [r.message.content for r in results if r.message] == ["ping done", "pong done"]
    assert completion_of(events).status == "completed"


# --- state ------------------------------------------------------------------------------


@tool
def remember(value: str, context: ToolContext) -> str:
    """Store a value in every scope."""
    context.state["note"] = value
    context.state["user:name"] = value
    context.state["app:visits"] = int(context.state.get("app:visits", 0)) + 1
    context.state["temp:scratch"] = value
    return f"stored {value} for {context.invocation_id}"


@tool
def read_scratch(context: ToolContext) -> str:
    """Read the temp value."""
    return str(context.state.get("temp:scratch"))


async def state_of(
    service: InMemorySessionService, user_id: str, session_id: str
) -> dict[str, Any]:
    session = await service.get_session("demo", user_id, session_id)
    assert session is not None
    return session.state


async def test_state_scopes_app_user_session_and_temp(
    model: FakeModel, service: InMemorySessionService
) -> None:
    runner = make_runner(model, service, tools=[remember, read_scratch])
    model.add_tool_calls([("c1", "remember", {"value": "x"})])
    model.add_tool_calls([("c2", "read_scratch", {})])
    model.add_text("done")
    events = await run_all(runner, "alice", "s1", "remember x")
    results = [e for e in events if e.type == "tool.result"]
    # temp: is visible to a later tool in the same run
    assert results[1].message is not None and results[1].message.content == "x"
    assert results[0].message is not None
    assert results[0].message.content == f"stored x for {events[0].invocation_id}"
    expected = {"note": "x", "user:name": "x", "app:visits": 1}
    assert await state_of(service, "alice", "s1") == expected
    # Another session of the same user shares user: and app:, not the session key.
    model.add_text("hi again")
    await run_all(runner, "alice", "s2", "hello")
    assert await state_of(service, "alice", "s2") == {"user:name": "x", "app:visits": 1}
    # Another user shares only app:.
    model.add_text("hi bob")
    await run_all(runner, "bob", "s3", "hello")
    assert await state_of(service, "bob", "s3") == {"app:visits": 1}
    # temp: is never stored.
    stored = await service.get_session("demo", "alice", "s1")
    assert stored is not None and "temp:scratch" not in stored.state


# --- seeding, resume, confirmations --------------------------------------------------------


async def test_messages_seed_an_empty_session_without_duplicating_the_last_user_turn(
    model: FakeModel, service: InMemorySessionService
) -> None:
    model.add_text("answer")
    seed = [Message.user("first"), Message.assistant("reply"), {"role": "user", "content": "q"}]
    events = await run_all(make_runner(model, service), "u", "s", "q", messages=seed)
    session = await service.get_session("demo", "u", "s")
    assert session is not None
    assert [m.message.content for m in session.events if m.message] == [
        "first", "reply", "q", "answer"
    ]
    assert completion_of(events).status == "completed"
    # A second run with messages= does not seed again (the session is no longer empty).
    model.add_text("more")
    await run_all(make_runner(model, service), "u", "s", "next", messages=seed)
    session = await service.get_session("demo", "u", "s")
    assert session is not None
    assert [m.message.content for m in session.events if m.message][-2:] == ["next", "more"]


async def test_seed_ending_with_another_user_turn_appends_the_message(
    model: FakeModel, service: InMemorySessionService
) -> None:
    model.add_text("answer")
    await run_all(make_runner(model, service), "u", "s", "new question",
                  messages=[Message.user("old question"), Message.assistant("old answer")])
    session = await service.get_session("demo", "u", "s")
    assert session is not None
    assert [m.message.content for m in session.events if m.message] == [
        "old question", "old answer", "new question", "answer"
    ]


@tool(requires_confirmation=True)
def refund(order_id: str, amount: int) -> str:
    """Refund an order."""
    return f"refunded {amount} on {order_id}"


async def paused_run(model: FakeModel, runner: Runner) -> list[Event]:
    model.add_tool_calls([("call_r", "refund", {"order_id": "A1", "amount": 5})])
    events = await run_all(runner, "u", "s", "refund A1")
    assert events[-2].type == "run.paused"
    assert [c.id for c in events[-2].requested_confirmations] == ["call_r"]
    assert completion_of(events).status == "paused"
    return events


async def test_confirmation_approved_runs_the_tool_then_continues(
    model: FakeModel, service: InMemorySessionService
) -> None:
    runner = make_runner(model, service, tools=[refund])
    await paused_run(model, runner)
    model.add_text("Refunded.")
    events = await run_all(runner, "u", "s", None, resume=True,
                           tool_confirmations={"call_r": True})
    result = next(e for e in events if e.type == "tool.result")
    assert result.message is not None and result.message.content == "refunded 5 on A1"
    assert completion_of(events).final_text == "Refunded."


async def test_confirmation_refused_tells_the_model(
    model: FakeModel, service: InMemorySessionService
) -> None:
    runner = make_runner(model, service, tools=[refund])
    await paused_run(model, runner)
    model.add_text("Not refunded.")
    events = await run_all(runner, "u", "s", None, tool_confirmations={"call_r": False})
    result = next(e for e in events if e.type == "tool.result")
    assert result.message is not None and "declined" in (result.message.content or "")
    assert model.requests[-1]["messages"][-1]["tool_call_id"] == "call_r"
    assert completion_of(events).status == "completed"


async def test_confirmation_with_edited_arguments(
    model: FakeModel, service: InMemorySessionService
) -> None:
    runner = make_runner(model, service, tools=[refund])
    await paused_run(model, runner)
    model.add_text("Refunded 3.")
    events = await run_all(
        runner, "u", "s", None,
        tool_confirmations={"call_r": {"arguments": {"order_id": "A1", "amount": 3}}},
    )
    result = next(e for e in events if e.type == "tool.result")
    assert result.message is not None and result.message.content == "refunded 3 on A1"


async def test_confirmation_for_an_unknown_call_id_fails_and_changes_nothing(
    model: FakeModel, service: InMemorySessionService
) -> None:
    runner = make_runner(model, service, tools=[refund])
    await paused_run(model, runner)
    before = await service.get_session("demo", "u", "s")
    events = await run_all(runner, "u", "s", None, tool_confirmations={"nope": True})
    assert events[0].type == "error"
    assert events[0].error is not None
    assert "nope" in events[0].error.message and "call_r" in events[0].error.message
    assert completion_of(events).status == "failed"
    after = await service.get_session("demo", "u", "s")
    assert before is not None and after is not None
    # only the error event was added; the paused call is still waiting
    assert [e.id for e in after.events[:-1]] == [e.id for e in before.events]


async def test_bad_confirmation_value_is_refused_at_once(
    model: FakeModel, service: InMemorySessionService
) -> None:
    runner = make_runner(model, service, tools=[refund])
    with pytest.raises(InvalidRequestError, match="tool_confirmations"):
        runner.run("u", "s", None, tool_confirmations={"call_r": "yes"})


async def test_resume_runs_dangling_tool_calls_before_the_next_model_call(
    model: FakeModel, service: InMemorySessionService
) -> None:
    # Given a session whose last turn called a tool that never ran (a crashed run)
    runner = make_runner(model, service)
    model.add_tool_calls([("call_1", "add", {"a": 1, "b": 1})])
    model.add_hang()
    stream = runner.run("u", "s", "1+1?")
    async for event in stream:
        if event.type == "message" and event.message and event.message.tool_calls:
            break
    await stream.aclose()
    # When resumed
    model.reset()
    model.add_text("2")
    events = await run_all(runner, "u", "s", None, resume=True)
    # Then the tool ran once, before the model call
    results = [e for e in events if e.type == "tool.result"]
    assert len(results) == 1 and results[0].message is not None
    assert model.requests[0]["messages"][-1]["content"] == "2"
    assert completion_of(events).final_text == "2"


async def test_dangling_tool_calls_never_reach_the_model_unanswered(
    model: FakeModel, service: InMemorySessionService
) -> None:
    runner = make_runner(model, service, tools=[refund])
    await paused_run(model, runner)
    # The user moves on without resuming: the request must still be valid.
    model.add_text("ok")
    events = await run_all(runner, "u", "s", "never mind")
    assert completion_of(events).status == "completed"
    sent = model.requests[-1]["messages"]
    call_index = next(i for i, m in enumerate(sent) if m.get("tool_calls"))
    assert sent[call_index + 1] == {
        "role": "tool", "content": NOT_EXECUTED, "tool_call_id": "call_r", "name": "refund"
    }
    assert sent[-1] == {"role": "user", "content": "never mind"}


async def test_resume_with_nothing_pending_is_a_clear_error(
    model: FakeModel, service: InMemorySessionService
) -> None:
    runner = make_runner(model, service)
    model.add_text("hi")
    await run_all(runner, "u", "s", "hello")
    events = await run_all(runner, "u", "s", None, resume=True)
    assert events[0].error is not None and "no tool calls waiting" in events[0].error.message
    assert completion_of(events).status == "failed"


# --- tool and model failures ------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "expected_type", "expected_text"),
    [
        (("c1", "nonexistent", {}), "tool_not_found", "no tool named 'nonexistent'"),
        (("c1", "add", "{not json"), "tool_invalid_arguments", "not valid JSON"),
        (("c1", "add", {"a": "x", "b": 1}), "tool_invalid_arguments", "a: Input should be"),
        (("c1", "add", {"a": 1}), "tool_invalid_arguments", "b: Field required"),
        (("c1", "add", "[1, 2]"), "tool_invalid_arguments", "must be a JSON object"),
        (("c1", "explode", {}), "tool_execution_error", "RuntimeError: kaboom"),
    ],
)
async def test_tool_failures_become_results_the_model_can_correct(
    model: FakeModel,
    service: InMemorySessionService,
    call: tuple[str, str, Any],
    expected_type: str,
    expected_text: str,
) -> None:
    model.add_tool_calls([call])
    model.add_tool_calls([("c2", "add", {"a": 1, "b": 2})])
    model.add_text("3")
    events = await run_all(make_runner(model, service, tools=[add, explode]), "u", "s", "go")
    results = [e for e in events if e.type == "tool.result"]
    assert results[0].error is not None and results[0].error.type == expected_type
    assert results[0].message is not None
    assert expected_text in (results[0].message.content or "")
    # the model saw the error and its corrected call worked
    assert results[1].message is not None and results[1].message.content == "3"
    assert completion_of(events).status == "completed"


@pytest.mark.parametrize("status", [400, 429, 500])
async def test_model_http_error_gives_error_event_and_failed_completion(
    model: FakeModel, service: InMemorySessionService, status: int
) -> None:
    model.add_error(status, "scripted failure")
    events = await run_all(make_runner(model, service), "u", "s", "hi")
    error = next(e for e in events if e.type == "error")
    assert error.error is not None and error.error.code == str(status)
    assert error.error.type == "model_http_error"
    completion = completion_of(events)
    assert completion.status == "failed" and completion.error == error.error
    session = await service.get_session("demo", "u", "s")
    assert session is not None
    assert [e.type for e in session.events] == ["message", "error"]


async def test_model_timeout_and_refused_connection_fail_the_run(
    model: FakeModel, service: InMemorySessionService
) -> None:
    model.add_hang()
    model.timeout = 0.3
    slow = LLMAgent("helper", model=model)
    events = await run_all(Runner("demo", slow, session_service=service), "u", "s", "hi")
    assert next(e for e in events if e.type == "error").error.type == "model_timeout"  # type: ignore[union-attr]
    assert completion_of(events).status == "failed"

    from runner_core.openai_model import OpenAIModel

    closed = LLMAgent("helper", model=OpenAIModel("m", base_url="http://127.0.0.1:9/v1",
                                                  api_key="sk-x", max_retries=0))
    events = await run_all(Runner("demo", closed, session_service=service), "u", "s2", "hi")
    error = next(e for e in events if e.type == "error").error
    assert error is not None and error.type == "model_connection_error"
    assert "127.0.0.1:9" in error.message
    assert "sk-x" not in events[-1].to_json()


async def test_max_iterations_exceeded_fails_clearly(
    model: FakeModel, service: InMemorySessionService
) -> None:
    for i in range(3):
        model.add_tool_calls([(f"c{i}", "add", {"a": i, "b": i})])
    events = await run_all(make_runner(model, service, max_iterations=2), "u", "s", "loop")
    error = next(e for e in events if e.type == "error").error
    assert error is not None and error.type == "max_iterations_exceeded"
    assert "max_iterations" in error.message
    assert completion_of(events).status == "failed"
    assert len(model.requests) == 2


# --- cancel, timeout, redelivery --------------------------------------------------------


async def test_cancel_yields_cancelled_completion_and_leaves_session_consistent(
    model: FakeModel, service: InMemorySessionService
) -> None:
    model.add_hang()
    runner = make_runner(model, service)
    stream = runner.run("u", "s", "hi")
    events = [await stream.__anext__()]  # the user message is stored
    stream.cancel()
    events += [e async for e in stream]
    assert completion_of(events).status == "cancelled"
    assert_gap_free(events)
    session = await service.get_session("demo", "u", "s")
    assert session is not None and [e.type for e in session.events] == ["message"]
    # and the session is usable afterwards
    model.reset()
    model.add_text("back")
    assert completion_of(await run_all(runner, "u", "s", "again")).status == "completed"


async def test_cancelling_the_consuming_task_cancels_the_run(
    model: FakeModel, service: InMemorySessionService
) -> None:
    model.add_hang()
    stream = make_runner(model, service).run("u", "s", "hi")
    first_seen = asyncio.Event()

    async def consume() -> None:
        async for _ in stream:
            first_seen.set()

    task = asyncio.create_task(consume())
    await first_seen.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    completion = await stream.completion()
    assert completion.status == "cancelled"


async def test_leaving_the_stream_context_early_cancels_the_run(
    model: FakeModel, service: InMemorySessionService
) -> None:
    model.add_hang()
    async with make_runner(model, service).run("u", "s", "hi") as stream:
        async for event in stream:
            assert event.type == "message"
            break
    assert (await stream.completion()).status == "cancelled"


async def test_timeout_ends_the_run_with_timeout_status(
    model: FakeModel, service: InMemorySessionService
) -> None:
    model.add_hang()
    events = await run_all(make_runner(model, service), "u", "s", "hi", timeout_s=0.3)
    assert events[-2].type == "error" and events[-2].error is not None
    assert events[-2].error.type == "timeout"
    assert completion_of(events).status == "timeout"
    assert_gap_free(events)


async def test_redelivered_invocation_continues_without_rerunning_completed_tools(
    model: FakeModel, service: InMemorySessionService
) -> None:
    calls: list[int] = []

    @tool
    def count(n: int) -> int:
        """Count a call."""
        calls.append(n)
        return n

    runner = make_runner(model, service, tools=[count])
    # First attempt: the tool runs, then the process "dies" during the second model call.
    model.add_tool_calls([("c1", "count", {"n": 1})])
    model.add_hang()
    first = runner.run("u", "s", "count", invocation_id="inv-42")
    seen = []
    async for event in first:
        seen.append(event)
        if event.type == "tool.result":
            break
    await first.aclose()
    assert calls == [1]
    # Second attempt with the same invocation ID. Say the tool result was stored but the
    # worker died before publishing it: the reader saw everything before it.
    model.reset()
    model.add_text("counted")
    tool_result = seen[-1]
    events = await run_all(runner, "u", "s", "count", invocation_id="inv-42",
                           first_seq=tool_result.seq)
    assert calls == [1]  # not run again
    assert events[0] == tool_result  # handed out again, not stored again
    assert_gap_free(events)
    assert completion_of(events).final_text == "counted"
    session = await service.get_session("demo", "u", "s")
    assert session is not None
    assert [e.type for e in session.events] == ["message", "message", "tool.result", "message"]
    assert len({e.id for e in session.events}) == 4
    # A third delivery of a finished invocation does not call the model again.
    before = len(model.requests)
    again = await run_all(runner, "u", "s", "count", invocation_id="inv-42",
                          first_seq=events[-1].seq + 1)
    assert len(model.requests) == before
    assert [e.type for e in again] == ["runner.completion"]
    assert again[0].final_text == "counted"


# --- bad input and lifecycle ------------------------------------------------------------


@pytest.mark.parametrize(
    ("app_name", "expected"),
    [("", "app_name is empty"), ("x" * 129, "app_name is 129 characters"),
     ("bad name!", "app_name 'bad name!' has characters")],
)
def test_bad_app_name_is_refused(app_name: str, expected: str,
                                 model: FakeModel) -> None:
    agent = LLMAgent("helper", model=model)
    with pytest.raises(InvalidRequestError, match=expected):
        Runner(app_name, agent)


@pytest.mark.parametrize(
    ("user_id", "message", "expected"),
    [
        ("", "hi", "user_id is empty"),
        ("u" * 200, "hi", "user_id is 200 characters"),
        ("u", 42, "message must be text or a chat-message dict, got int"),
        ("u", {"role": "wizard", "content": "x"}, "message is not a valid chat message"),
        ("u", {"role": "user", "content": "x", "extra": 1}, "extra"),
        ("u", "   ", "message is empty"),
        ("u", {"role": "assistant", "content": "x"}, "role 'user'"),
        ("u", None, "message is required unless resume=True"),
    ],
)
async def test_bad_run_arguments_are_refused_before_anything_is_stored(
    model: FakeModel,
    service: InMemorySessionService,
    user_id: str,
    message: Any,
    expected: str,
) -> None:
    runner = make_runner(model, service)
    with pytest.raises(InvalidRequestError, match=expected):
        runner.run(user_id, "s", message)
    assert await service.list_sessions("demo", "u") == []
    assert model.requests == []


def test_bad_agent_configuration_is_refused(model: FakeModel) -> None:
    with pytest.raises(InvalidRequestError, match="max_iterations"):
        LLMAgent("a", model=model, max_iterations=0)
    with pytest.raises(InvalidRequestError, match="two tools are named 'add'"):
        LLMAgent("a", model=model, tools=[add, add])


async def test_runner_closes_only_what_it_created(model: FakeModel) -> None:
    shared = InMemorySessionService()
    runner = Runner("demo", LLMAgent("a", model=model), session_service=shared)
    await runner.close()
    await runner.close()  # idempotent
    assert await shared.create_session("demo", "u", "still-open") is not None
    await shared.close()
    with pytest.raises(InvalidRequestError, match="closed"):
        runner.run("u", "s", "hi")
    async with Runner("demo", LLMAgent("a", model=model)) as own:
        model.add_text("ok")
        assert (await own.run("u", "s", "hi").completion()).status == "completed"


def test_run_sync_returns_the_completion(model: FakeModel) -> None:
    runner = Runner("demo", LLMAgent("a", model=model))
    model.add_text("one")
    model.add_text("two")
    try:
        assert runner.run_sync("u", "s", "hi").final_text == "one"
        assert runner.run_sync("u", "s", "again").final_text == "two"
    finally:
        runner.close_sync()


async def test_completion_event_json_is_valid_for_subscribers(
    model: FakeModel, service: InMemorySessionService
) -> None:
    model.add_text("fine")
    events = await run_all(make_runner(model, service), "u", "s", "hi")
    for event in events:
        assert decode_event(event.to_json()) == event
    payload = json.loads(events[-1].to_json())
    assert payload["status"] == "completed" and payload["type"] == "runner.completion"
