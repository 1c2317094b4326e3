"""Timeouts and cancels always win (issue 12, item 2), on every session store.

A run given ``timeout_s`` ends ``timeout`` and a cancelled run ends ``cancelled``, whatever
the code it was awaiting did with the cancellation: redis-py on Python 3.11 swallows one now
and then (its ``asyncio.wait_for`` returns the result of a command that finished as the cancel
came), and a model or tool may do the same. What the store holds afterwards is exactly what
the stream handed out: no half-written event, and never the final reply of a stopped run.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from runner_core import Event, LLMAgent, Message, Runner
from runner_core.events import Usage
from runner_core.model import ModelPrice, ModelRequest, ModelResponse, TextDelta
from runner_core.session import SessionService
from runner_core.testing import ScriptedModelServer, ScriptedReply, scripted_model
from session_backends import InMemorySessionService, from_url

APP = "deadlines"
RUNS = 30
#: Seconds; every one is far shorter than the model's reply.
TIMEOUTS = (0.001, 0.002, 0.005, 0.01)
#: A 2 s reply: 40 words, one every 50 ms.
SLOW_REPLY = ScriptedReply.text("word " * 40, chunk_delay=0.05)

BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="module")
def model_server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as server:
        yield server


@pytest.fixture
def slow_model(model_server: ScriptedModelServer) -> ScriptedModelServer:
    model_server.reset()
    model_server.set_default(SLOW_REPLY)
    return model_server


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SessionService]:
    url = "memory://"
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
    elif request.param == "postgres":
        url = request.getfixturevalue("postgres_dsn")
    service = from_url(url)
    yield service
    await service.close()


def make_runner(model_server: ScriptedModelServer, store: SessionService) -> Runner:
    agent = LLMAgent("helper", model=scripted_model(model_server))
    return Runner(APP, agent, session_service=store)


async def assert_store_matches_stream(
    store: SessionService, session_id: str, events: list[Event]
) -> None:
    """The store holds the complete events the stream handed out (the error event too when
    the session was there to hold it), nothing else, and never the reply."""
    completion = events[-1]
    assert completion.is_runner_completion()
    assert sum(e.is_runner_completion() for e in events) == 1
    assert [e.seq for e in events] == list(range(len(events)))
    session = await store.get_session(APP, "u", session_id)
    stored = {e.id: e for e in ([] if session is None else session.events)}
    handed_out = {e.id: e for e in events if not e.partial and not e.is_runner_completion()}
    for event in stored.values():
        assert event.id in handed_out, f"{event.type} {event.id} stored but never handed out"
        assert event.to_json() == handed_out[event.id].to_json()
    for event in handed_out.values():
        assert event.type == "error" or event.id in stored, f"{event.type} handed out, not stored"
    assert not any(e.is_final_response() and e.author == "helper" for e in stored.values())


# --- timeouts ------------------------------------------------------------------------------


async def test_millisecond_timeouts_always_end_timeout(
    slow_model: ScriptedModelServer, store: SessionService
) -> None:
    # Given a model whose reply takes 2 s and timeouts of 1-10 ms
    runner = make_runner(slow_model, store)
    runs: list[list[Event]] = []
    for n, timeout_s in zip(range(RUNS), itertools.cycle(TIMEOUTS), strict=False):
        # When a run starts
        runs.append([e async for e in runner.run("u", f"t{n}", "hi", timeout_s=timeout_s)])
    # Then every run ends timeout, with a timeout error just before the completion
    assert [events[-1].status for events in runs] == ["timeout"] * RUNS
    for n, events in enumerate(runs):
        assert events[-2].error is not None and events[-2].error.type == "timeout"
        # And the store holds only what was handed out, never the reply
        await assert_store_matches_stream(store, f"t{n}", events)


async def test_a_timeout_while_the_reader_is_slow_still_ends_timeout(
    slow_model: ScriptedModelServer, store: SessionService
) -> None:
    # Given a reader that takes its time over every event
    runner = make_runner(slow_model, store)
    events: list[Event] = []
    async for event in runner.run("u", "slow-reader", "hi", timeout_s=0.005):
        events.append(event)
        await asyncio.sleep(0.01)
    # Then the run still ends timeout, and the store matches the stream
    assert events[-1].status == "timeout"
    await assert_store_matches_stream(store, "slow-reader", events)


# --- cancels -------------------------------------------------------------------------------


async def cancel_after(stream: Any, delay: float, events: list[Event]) -> None:
    """Read the stream, cancelling it ``delay`` seconds in (0: before the first event)."""
    if delay == 0:
        stream.cancel()
    else:
        asyncio.get_running_loop().call_later(delay, stream.cancel)
    async for event in stream:
        events.append(event)


async def test_cancels_always_end_cancelled(
    slow_model: ScriptedModelServer, store: SessionService
) -> None:
    # Given a model whose reply takes 2 s
    runner = make_runner(slow_model, store)
    runs: list[list[Event]] = []
    delays = (0.0, 0.001, 0.002, 0.005, 0.01)
    for n, delay in zip(range(RUNS), itertools.cycle(delays), strict=False):
        # When the run is cancelled before it starts or a few milliseconds in
        events: list[Event] = []
        await asyncio.wait_for(cancel_after(runner.run("u", f"c{n}", "hi"), delay, events), 30)
        runs.append(events)
    # Then every run ends cancelled, and the store matches the stream
    assert [events[-1].status for events in runs] == ["cancelled"] * RUNS
    for n, events in enumerate(runs):
        await assert_store_matches_stream(store, f"c{n}", events)


async def test_cancelling_after_the_first_event_ends_cancelled(
    slow_model: ScriptedModelServer, store: SessionService
) -> None:
    runner = make_runner(slow_model, store)
    for n in range(5):
        stream = runner.run("u", f"f{n}", "hi")
        events = [await stream.__anext__()]
        stream.cancel()
        events += [e async for e in stream]
        assert events[-1].status == "cancelled"
        await assert_store_matches_stream(store, f"f{n}", events)


# --- code that swallows cancellation (injected) -------------------------------------------


class StubbornModel:
    """Streams a 2 s reply and swallows every cancellation of its stream."""

    name = "stubborn"
    price: ModelPrice | None = None

    def __init__(self) -> None:
        self.swallowed = 0

    async def generate(self, request: ModelRequest) -> AsyncIterator[TextDelta | ModelResponse]:
        words = ["word "] * 40
        for word in words:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                self.swallowed += 1
            yield TextDelta(word)
        yield ModelResponse(Message.assistant("".join(words)), Usage(model_calls=1))

    async def close(self) -> None:
        pass


class SwallowOnceThenHangModel:
    """Swallows the first cancellation, then waits for an answer that never comes."""

    name = "swallow-once"
    price: ModelPrice | None = None

    async def generate(self, request: ModelRequest) -> AsyncIterator[TextDelta | ModelResponse]:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            pass
        await asyncio.Event().wait()  # only another cancellation gets the run out of here
        yield ModelResponse(Message.assistant("never"), Usage(model_calls=1))

    async def close(self) -> None:
        pass


class SwallowingStore(InMemorySessionService):
    """Reads and appends that swallow a cancellation arriving while they are in flight, the
    way ``asyncio.wait_for`` does on Python 3.11 when the call finished as the cancel came."""

    def __init__(self) -> None:
        super().__init__()
        self.swallowed = 0

    async def _in_flight(self) -> None:
        try:
            await asyncio.sleep(0.002)
        except asyncio.CancelledError:
            self.swallowed += 1

    async def get_session(self, *args: Any, **kwargs: Any) -> Any:
        await self._in_flight()
        return await super().get_session(*args, **kwargs)

    async def append_event(self, *args: Any, **kwargs: Any) -> bool:
        await self._in_flight()
        return await super().append_event(*args, **kwargs)


@pytest.mark.parametrize("stop", ["timeout", "cancel"])
async def test_a_stop_wins_over_code_that_swallows_cancellation(stop: str) -> None:
    # Given a model and a store that swallow every cancellation they get
    model = StubbornModel()
    store = SwallowingStore()
    runner = Runner(APP, LLMAgent("helper", model=model), session_service=store)
    try:
        for n in range(10):
            events: list[Event] = []
            session_id = f"{stop}{n}"
            # When the run times out, or is cancelled, a few milliseconds in
            if stop == "timeout":
                stream = runner.run("u", session_id, "hi", timeout_s=TIMEOUTS[n % 4])
                events = [e async for e in stream]
            else:
                await cancel_after(runner.run("u", session_id, "hi"), TIMEOUTS[n % 4], events)
            # Then it ends as asked, and the store matches the stream
            assert events[-1].status == ("timeout" if stop == "timeout" else "cancelled")
            await assert_store_matches_stream(store, session_id, events)
    finally:
        await store.close()


@pytest.mark.parametrize("stop", ["timeout", "cancel"])
async def test_a_swallowed_cancellation_is_issued_again(stop: str) -> None:
    # Given a model that swallows the first cancellation, then hangs
    store = InMemorySessionService()
    agent = LLMAgent("helper", model=SwallowOnceThenHangModel())
    runner = Runner(APP, agent, session_service=store)
    try:
        for n in range(3):
            # When the run times out, or is cancelled, while the model is on it
            events: list[Event] = []
            if stop == "timeout":
                stream = runner.run("u", f"s{n}", "hi", timeout_s=0.005)
            else:
                stream = runner.run("u", f"s{n}", "hi")
                asyncio.get_running_loop().call_later(0.005, stream.cancel)
            # Then the stop is issued again and ends the run (the wait only guards the suite)
            events = await asyncio.wait_for(stream_events(stream), 30)
            assert events[-1].status == ("timeout" if stop == "timeout" else "cancelled")
            await assert_store_matches_stream(store, f"s{n}", events)
    finally:
        await store.close()


async def stream_events(stream: Any) -> list[Event]:
    return [e async for e in stream]


# --- through a worker ----------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.celery
def test_millisecond_run_timeouts_through_a_worker_always_end_timeout(
    producer: Any, start_worker: Any, slow_model: ScriptedModelServer, redis_url: str
) -> None:
    # Given a worker whose model takes 2 s to reply
    from tests.celery_workers import wait_for_completion
    from workers.tasks import submit_run

    start_worker(OPENAI_BASE_URL=slow_model.url)
    # When runs are submitted with a 5 ms timeout
    results = [
        submit_run.delay("assistant", "u", f"w{n}", "hi", run_timeout_s=0.005) for n in range(8)
    ]
    # Then every one ends timeout, after a timeout error, and no reply is stored
    streams = [wait_for_completion(redis_url, result.id) for result in results]
    assert [events[-1]["status"] for events in streams] == ["timeout"] * len(results)
    for events in streams:
        assert [e["error"]["type"] for e in events if e["type"] == "error"] == ["timeout"]
        assert not any(e["type"] == "message" and e["author"] != "user" for e in events)
