"""The producer API in-process: ``submit`` validates, then a real worker runs the request and
``stream_events`` / ``astream_events`` read it back; unknown invocations fail fast when asked."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from runner_core.errors import InvalidRequestError
from runner_core.events import Event
from runner_core.messages import Message
from tests.event_factory import make_event
from workers import client
from workers.bus import EventBus, cancel_key, owner_identity, submitted_key

NO_MODEL = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}


def test_invalid_request_is_refused_before_sending(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[Any] = []
    from workers.app import app

    monkeypatch.setattr(app, "send_task", lambda *a, **k: sent.append((a, k)))

    with pytest.raises(InvalidRequestError, match="user_id"):
        client.submit("assistant", "no spaces allowed", "s1", "hi")
    with pytest.raises(InvalidRequestError, match="multitask_strategy"):
        client.submit("assistant", "alice", "s1", "hi", multitask_strategy="sometimes")
    with pytest.raises(InvalidRequestError, match="surprise"):
        client.submit("assistant", "alice", "s1", "hi", surprise=True)
    assert sent == []


@pytest.mark.celery
async def test_submit_and_read_back_through_a_real_worker(
    start_worker: Callable[..., Any], producer: Any, redis_url: str
) -> None:
    start_worker(**NO_MODEL)

    invocation_id = client.submit("assistant", "alice", "s1", Message.user("what is 12*7"))
    events = list(client.stream_events(invocation_id, timeout=30))

    assert [e.seq for e in events] == list(range(len(events)))
    assert events[-1].is_runner_completion() and events[-1].status == "completed"
    assert events[-1].final_text == "12*7 = 84."
    calls = [c for e in events if e.type == "message" for c in e.message.tool_calls or []]
    assert [c.function.name for c in calls] == ["calculator"]

    replayed = [e async for e in client.astream_events(invocation_id, after_seq=1, timeout=30)]
    assert replayed == events[2:]


# --- known and unknown invocations -------------------------------------------------------------


IDENTITY = owner_identity("assistant", "alice", "s1")


def completion_of(invocation_id: str) -> Event:
    return make_event(
        invocation_id=invocation_id,
        type="runner.completion",
        author="assistant",
        app_name="assistant",
        user_id="alice",
        session_id="s1",
        status="completed",
    )


async def publish(redis_url: str, event: Event) -> None:
    connection = aioredis.Redis.from_url(redis_url)
    try:
        await EventBus(connection).publish(event, identity=IDENTITY)
    finally:
        await connection.aclose()


@pytest.mark.redis
async def test_readers_give_up_on_an_unknown_invocation(redis_url: str) -> None:
    # Given an ID nobody submitted
    invocation_id = str(uuid.uuid4())

    # Then both readers say so once known_wait is over, and the error names the ID
    with pytest.raises(client.UnknownInvocationError, match=invocation_id):
        next(client.stream_events(invocation_id, known_wait=0, redis_url=redis_url))
    with pytest.raises(InvalidRequestError, match=r"is known after waiting 0\.3 s"):
        async for _ in client.astream_events(invocation_id, known_wait=0.3, redis_url=redis_url):
            pass
    with pytest.raises(InvalidRequestError, match="known_wait"):
        next(client.stream_events(invocation_id, known_wait=-1, redis_url=redis_url))


@pytest.mark.redis
def test_a_submitted_run_is_known_before_a_worker_takes_it(producer: Any, redis_url: str) -> None:
    # Given a run submitted while no worker runs
    invocation_id = client.submit("assistant", "alice", "s1", "hi")

    # Then its submission is recorded (with a TTL) and readers wait for it instead of giving up
    connection = redis.Redis.from_url(redis_url)
    try:
        assert connection.ttl(submitted_key(invocation_id)) > 0
    finally:
        connection.close()
    with pytest.raises(client.EventStreamTimeout, match="first event"):
        next(client.stream_events(invocation_id, known_wait=0, timeout=0.5))
    # And it can be cancelled before it starts
    assert client.cancel(invocation_id, require_known=True) is None


@pytest.mark.redis
async def test_cancel_of_unknown_and_finished_runs(redis_url: str) -> None:
    unknown, finished = str(uuid.uuid4()), str(uuid.uuid4())
    await publish(redis_url, completion_of(finished))

    # An unknown run is refused only when asked to be, and then nothing is recorded
    with pytest.raises(client.UnknownInvocationError, match=unknown):
        client.cancel(unknown, require_known=True, redis_url=redis_url)
    with pytest.raises(client.UnknownInvocationError):
        await client.acancel(unknown, require_known=True, redis_url=redis_url)
    connection = redis.Redis.from_url(redis_url)
    try:
        assert not connection.exists(cancel_key(unknown))
        assert client.cancel(unknown, redis_url=redis_url) is None
        assert connection.exists(cancel_key(unknown))

        # A finished run returns its completion, and nothing is recorded for it
        done = client.cancel(finished, require_known=True, redis_url=redis_url)
        assert done is not None and done.status == "completed"
        assert (await client.acancel(finished, redis_url=redis_url)) == done
        assert not connection.exists(cancel_key(finished))
    finally:
        connection.close()
