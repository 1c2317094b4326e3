"""One conformance suite for every trace store: memory, Redis and PostgreSQL.

Each test runs against each backend (the ``make_store`` fixture); the Redis and PostgreSQL
servers are real ones started by tests/services.py, with a clean database per test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from runner_core.errors import (
    ConfigurationError,
    FencedError,
    InvalidRequestError,
    InvocationOwnedError,
    TraceNotFoundError,
)
from runner_core.events import EventError, Usage
from runner_core.traces import MAX_FIELD_CHARS, Step, Trace, TraceStore, read_trace
from session_backends.traces import trace_store_from_url

APP, USER, SESSION = "support-bot", "alice", "chat-1"
MakeStore = Callable[..., Awaitable[TraceStore]]

BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]
URL_FIXTURES = {"redis": "redis_url", "postgres": "postgres_dsn"}


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    url: str = request.getfixturevalue(URL_FIXTURES[request.param])
    return url


@pytest.fixture
async def make_store(store_url: str) -> AsyncIterator[MakeStore]:
    built: list[TraceStore] = []

    async def make(**options: Any) -> TraceStore:
        store = trace_store_from_url(store_url, **options)
        built.append(store)
        return store

    yield make
    for store in built:
        await store.close()


@pytest.fixture
async def store(make_store: MakeStore) -> TraceStore:
    return await make_store()


def a_trace(invocation_id: str = "inv-1", **fields: Any) -> Trace:
    values: dict[str, Any] = {
        "invocation_id": invocation_id,
        "app_name": APP,
        "user_id": USER,
        "session_id": SESSION,
        "task": "What is 2 + 3?",
        "agent": "calc",
    }
    values.update(fields)
    return Trace(**values)


def model_step(seq: int, parents: list[str] | None = None, **fields: Any) -> Step:
    return Step(
        step_id=f"model:{seq}",
        kind="model_call",
        parent_ids=parents or [],
        agent="calc",
        usage=Usage(prompt_tokens=10, completion_tokens=2, total_tokens=12, model_calls=1),
        messages=[{"role": "user", "content": "What is 2 + 3?"}],
        reply=None,
        **fields,
    )


def tool_step(seq: int, parent: str) -> Step:
    return Step(
        step_id=f"tool:{seq}",
        kind="tool_call",
        parent_ids=[parent],
        tool_name="add",
        tool_call_id="c1",
        arguments={"a": 2, "b": 3},
        result="5",
    )


# --- creating, adding, reading ------------------------------------------------------------


async def test_a_trace_reads_back_with_its_steps_in_the_order_added(store: TraceStore) -> None:
    assert await store.start(a_trace()) is True
    assert await store.add_step("inv-1", model_step(1))
    assert await store.add_step("inv-1", tool_step(2, "model:1"))
    assert await store.add_step("inv-1", model_step(3, ["model:1", "tool:2"]))

    trace = await store.get("inv-1")

    assert trace is not None
    assert (trace.app_name, trace.user_id, trace.session_id) == (APP, USER, SESSION)
    assert trace.task == "What is 2 + 3?" and trace.status == "running"
    assert [s.step_id for s in trace.steps] == ["model:1", "tool:2", "model:3"]
    assert trace.steps[1].arguments == {"a": 2, "b": 3} and trace.steps[1].result == "5"
    assert trace.steps[2].parent_ids == ["model:1", "tool:2"]
    assert trace.steps[0].usage is not None and trace.steps[0].usage.total_tokens == 12


async def test_a_step_id_is_stored_once(store: TraceStore) -> None:
    await store.start(a_trace())
    assert await store.add_step("inv-1", model_step(1)) is True

    again = model_step(1).model_copy(update={"reply": "a second write of the same step"})
    assert await store.add_step("inv-1", again) is False

    trace = await store.get("inv-1")
    assert trace is not None and len(trace.steps) == 1 and trace.steps[0].reply is None


async def test_finish_replaces_the_header_and_keeps_the_steps(store: TraceStore) -> None:
    await store.start(a_trace())
    await store.add_step("inv-1", model_step(1))
    finished = a_trace(
        status="failed",
        usage=Usage(total_tokens=12, model_calls=1),
        cost=0.5,
        error=EventError(type="model_error", message="boom"),
        otel_trace_id="0af7651916cd43dd8448eb211c80319c",
    )
    finished.ended_at = finished.started_at

    await store.finish(finished)

    trace = await store.get("inv-1")
    assert trace is not None
    assert trace.status == "failed" and trace.cost == 0.5 and trace.error is not None
    assert trace.otel_trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert trace.duration_ms == 0 and [s.step_id for s in trace.steps] == ["model:1"]


async def test_write_adds_steps_in_order_then_replaces_the_header(store: TraceStore) -> None:
    # Given a trace with one step
    await store.start(a_trace(), fence=4)
    await store.add_step("inv-1", model_step(1), fence=4)

    # When the step again, two new ones and the final header are written at once
    again = model_step(1).model_copy(update={"reply": "a second write of the same step"})
    steps = [again, tool_step(2, "model:1"), model_step(3, ["model:1", "tool:2"])]
    await store.write("inv-1", steps, header=a_trace(status="completed", cost=0.25), fence=4)

    # Then the known step is kept as it was, the new ones follow in order, the header is new
    trace = await store.get("inv-1")
    assert trace is not None and trace.status == "completed" and trace.cost == 0.25
    assert [s.step_id for s in trace.steps] == ["model:1", "tool:2", "model:3"]
    assert trace.steps[0].reply is None


async def test_a_fenced_off_write_writes_none_of_it(store: TraceStore) -> None:
    await store.start(a_trace(), fence=1)
    await store.add_step("inv-1", model_step(1), fence=1)
    await store.start(a_trace(), fence=2)  # a newer delivery took the run

    with pytest.raises(FencedError):
        await store.write(
            "inv-1", [model_step(5), model_step(6)], header=a_trace(status="failed"), fence=1
        )

    trace = await store.get("inv-1")
    assert trace is not None and trace.status == "running"
    assert [s.step_id for s in trace.steps] == ["model:1"]
    with pytest.raises(TraceNotFoundError):
        await store.write("never-started", [model_step(1)])
    with pytest.raises(ValueError, match="not 'inv-1'"):
        await store.write("inv-1", [], header=a_trace("inv-2"))


async def test_a_write_that_starts_its_trace_creates_it_with_its_steps(
    store: TraceStore,
) -> None:
    # When a run's first write carries the trace's start, its steps and the final header
    steps = [model_step(1), tool_step(2, "model:1")]
    await store.write(
        "inv-1", steps, header=a_trace(status="completed", cost=0.5), fence=3, start=a_trace()
    )

    # Then the trace is there with them, started once and fenced by the token
    trace = await store.get("inv-1")
    assert trace is not None and trace.status == "completed" and trace.cost == 0.5
    assert trace.attempts == 1
    assert [s.step_id for s in trace.steps] == ["model:1", "tool:2"]
    with pytest.raises(FencedError):
        await store.add_step("inv-1", model_step(7), fence=2)

    # ... and a start with nothing else written yet creates the running trace alone
    await store.write("inv-2", [], start=a_trace("inv-2"), fence=3)
    started = await store.get("inv-2")
    assert started is not None and started.status == "running" and started.steps == []
    # ... both in their session's index, as a started trace is
    assert await store.delete_session(APP, USER, SESSION) == 2
    assert await store.get("inv-1") is None


async def test_a_write_that_starts_an_existing_trace_takes_it_over(store: TraceStore) -> None:
    # Given a trace a first delivery started and wrote a step to
    await store.start(a_trace(), fence=1)
    await store.add_step("inv-1", model_step(1), fence=1)

    # When a newer delivery's first write starts it (its token 2)
    await store.write("inv-1", [model_step(2)], fence=2, start=a_trace())

    # Then it counted the attempt, kept the first step, added its own and holds the fence
    trace = await store.get("inv-1")
    assert trace is not None and trace.attempts == 2 and trace.status == "running"
    assert [s.step_id for s in trace.steps] == ["model:1", "model:2"]
    with pytest.raises(FencedError):
        await store.add_step("inv-1", model_step(3), fence=1)

    # ... and an older delivery's starting write is refused and writes nothing
    with pytest.raises(FencedError):
        await store.write("inv-1", [model_step(9)], fence=1, start=a_trace())
    with pytest.raises(InvocationOwnedError):
        await store.write("inv-1", [model_step(9)], fence=2, start=a_trace(user_id="mallory"))
    with pytest.raises(ValueError, match="not 'inv-1'"):
        await store.write("inv-1", [], start=a_trace("inv-2"))
    trace = await store.get("inv-1")
    assert trace is not None and [s.step_id for s in trace.steps] == ["model:1", "model:2"]


async def test_a_later_step_such_as_feedback_is_added_after_the_run(store: TraceStore) -> None:
    await store.start(a_trace())
    await store.add_step("inv-1", model_step(1))
    await store.finish(a_trace(status="completed"))

    feedback = Step(
        step_id="feedback:1",
        kind="feedback",
        parent_ids=["model:1"],
        data={"kind": "positive", "content": "right answer"},
    )
    assert await store.add_step("inv-1", feedback)

    trace = await store.get("inv-1")
    assert trace is not None and trace.status == "completed"
    assert trace.step("feedback:1") == feedback


async def test_starting_again_counts_the_attempt_and_keeps_the_steps(store: TraceStore) -> None:
    await store.start(a_trace(), fence=1)
    await store.add_step("inv-1", model_step(1), fence=1)

    assert await store.start(a_trace(), fence=2) is False

    trace = await store.get("inv-1")
    assert trace is not None and trace.attempts == 2 and trace.status == "running"
    assert [s.step_id for s in trace.steps] == ["model:1"]


# --- bad input ---------------------------------------------------------------------------


async def test_unknown_invocations(store: TraceStore) -> None:
    assert await store.get("nobody") is None
    with pytest.raises(TraceNotFoundError, match="no trace of invocation 'nobody'"):
        await store.add_step("nobody", model_step(1))
    with pytest.raises(TraceNotFoundError):
        await store.finish(a_trace("nobody"))


async def test_bad_ids_are_refused_naming_the_field(store: TraceStore) -> None:
    with pytest.raises(InvalidRequestError, match="invocation_id"):
        await store.get("not an id")
    with pytest.raises(InvalidRequestError, match="invocation_id"):
        await store.start(a_trace("bad/id"))
    with pytest.raises(InvalidRequestError, match="user_id"):
        await store.start(a_trace(user_id=""))
    with pytest.raises(InvalidRequestError, match="fence"):
        await store.start(a_trace(), fence=0)
    assert await store.get("bad") is None  # nothing half-written


async def test_a_trace_of_the_same_invocation_for_another_session_is_refused(
    store: TraceStore,
) -> None:
    await store.start(a_trace())
    with pytest.raises(InvocationOwnedError):
        await store.start(a_trace(user_id="mallory"))
    trace = await store.get("inv-1")
    assert trace is not None and trace.user_id == USER and trace.attempts == 1


def test_an_unknown_url_scheme_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="AGENT_RUNNER_TRACE_URL"):
        trace_store_from_url("mongodb://localhost")
    with pytest.raises(ConfigurationError, match="bad option"):
        trace_store_from_url("memory://", colour="blue")


# --- fencing -----------------------------------------------------------------------------


async def test_a_newer_owner_fences_the_older_one_off(store: TraceStore) -> None:
    await store.start(a_trace(), fence=1)
    await store.add_step("inv-1", model_step(1), fence=1)
    await store.start(a_trace(), fence=2)

    with pytest.raises(FencedError, match="token 2"):
        await store.add_step("inv-1", model_step(5), fence=1)
    with pytest.raises(FencedError):
        await store.finish(a_trace(status="completed"), fence=1)
    with pytest.raises(FencedError):
        await store.start(a_trace(), fence=1)

    assert await store.add_step("inv-1", model_step(6), fence=2)
    trace = await store.get("inv-1")
    assert trace is not None and trace.status == "running"
    assert [s.step_id for s in trace.steps] == ["model:1", "model:6"]


async def test_concurrent_writers_with_one_fence_never_duplicate_a_step(store: TraceStore) -> None:
    await store.start(a_trace(), fence=3)
    steps = [model_step(n % 5) for n in range(20)]

    results = await asyncio.gather(*(store.add_step("inv-1", s, fence=3) for s in steps))

    assert sum(results) == 5
    trace = await store.get("inv-1")
    assert trace is not None and sorted(s.step_id for s in trace.steps) == [
        f"model:{n}" for n in range(5)
    ]


# --- retention ---------------------------------------------------------------------------


async def test_deleting_a_session_deletes_its_traces_only(store: TraceStore) -> None:
    await store.start(a_trace("inv-1"))
    await store.add_step("inv-1", model_step(1))
    await store.start(a_trace("inv-2"))
    await store.start(a_trace("inv-3", session_id="chat-2"))

    assert await store.delete_session(APP, USER, SESSION) == 2

    assert await store.get("inv-1") is None and await store.get("inv-2") is None
    assert await store.get("inv-3") is not None
    with pytest.raises(TraceNotFoundError):
        await store.add_step("inv-1", model_step(2))
    assert await store.delete_session(APP, USER, SESSION) == 0


async def test_a_trace_expires_ttl_after_its_last_write(make_store: MakeStore) -> None:
    store = await make_store(ttl=1)
    await store.start(a_trace())
    await store.add_step("inv-1", model_step(1))
    assert await store.get("inv-1") is not None

    deadline = time.monotonic() + 15
    while await store.get("inv-1") is not None:
        assert time.monotonic() < deadline, "the trace did not expire"
        await asyncio.sleep(0.1)
    with pytest.raises(TraceNotFoundError):
        await store.add_step("inv-1", model_step(2))
    assert await store.start(a_trace()) is True  # a fresh trace, not the expired one


# --- payloads and access -----------------------------------------------------------------


async def test_long_payload_fields_are_capped_and_say_so(store: TraceStore) -> None:
    await store.start(a_trace(task="t" * (MAX_FIELD_CHARS + 1000)))
    history = [{"role": "user", "content": f"message {n} " + "x" * 500} for n in range(100)]
    fields = {**model_step(1).model_dump(), "messages": history, "reply": "r" * 50_000}
    step = Step.model_validate(fields)
    await store.add_step("inv-1", step)

    trace = await store.get("inv-1")

    assert trace is not None and trace.task is not None
    assert trace.task.endswith("... [1000 more characters]")
    stored = trace.steps[0]
    assert stored.reply is not None and stored.reply.endswith("... [34000 more characters]")
    assert stored.messages[0].endswith("earlier items left out]")
    assert stored.messages[-1] == history[-1]  # the newest messages are kept


async def test_only_the_traces_own_user_reads_it(store: TraceStore) -> None:
    await store.start(a_trace())

    mine = await read_trace(store, APP, USER, "inv-1")
    assert mine.invocation_id == "inv-1"
    operator = await read_trace(store, None, None, "inv-1")
    assert operator.user_id == USER
    with pytest.raises(InvocationOwnedError, match="only its own user"):
        await read_trace(store, APP, "mallory", "inv-1")
    with pytest.raises(InvocationOwnedError):
        await read_trace(store, "other-app", USER, "inv-1")
    with pytest.raises(TraceNotFoundError):
        await read_trace(store, APP, USER, "inv-404")
    with pytest.raises(InvalidRequestError, match="invocation_id"):
        await read_trace(store, APP, USER, "inv 1; DROP TABLE")
    with pytest.raises(InvalidRequestError, match="both app_name and user_id"):
        await read_trace(store, APP, None, "inv-1")
