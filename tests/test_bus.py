"""The event bus and the client's event reading, against a real redis-server.

Given events published by :class:`workers.bus.EventBus`, subscribers (the client's
``stream_events``, plain redis-py, ``redis-cli``) see each one exactly once, in order.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from runner_core.errors import InvalidRequestError, InvocationOwnedError
from runner_core.events import Event, RunQueuedEvent, decode_event
from tests.event_factory import make_event as build_event
from tests.services import free_port
from workers import client
from workers.bus import (
    EventBus,
    EventBusError,
    EventBusUnavailableError,
    attempts_key,
    cancel_key,
    control_channel,
    events_channel,
    owner_identity,
    stream_key,
)

pytestmark = pytest.mark.redis


IDENTITY = owner_identity("demo", "alice", "s1")


def make_event(invocation_id: str, seq: int, *, last: bool = False) -> Event:
    common: dict[str, Any] = {
        "invocation_id": invocation_id,
        "seq": seq,
        "author": "assistant",
        "app_name": "demo",
        "user_id": "alice",
        "session_id": "s1",
    }
    if last:
        return build_event(
            type="runner.completion", status="completed", final_text="done", **common
        )
    return build_event(type="message.delta", partial=True, delta=f"chunk {seq} ", **common)


def make_run(invocation_id: str, count: int) -> list[Event]:
    """``count`` events, the last being the completion."""
    return [make_event(invocation_id, i, last=i == count - 1) for i in range(count)]


@pytest.fixture
def invocation_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
async def aio(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


@pytest.fixture
async def bus(aio: aioredis.Redis) -> EventBus:
    return EventBus(aio)


def publish_all(redis_url: str, events: list[Event], *, delay_s: float = 0.0) -> None:
    """Publish from a separate event loop and connection, like a worker would."""

    async def run() -> None:
        connection = aioredis.Redis.from_url(redis_url)
        try:
            worker_bus = EventBus(connection)
            for event in events:
                if delay_s:
                    await asyncio.sleep(delay_s)
                await worker_bus.publish(event, identity=IDENTITY)
        finally:
            await connection.aclose()

    asyncio.run(run())


# --- publishing ----------------------------------------------------------------------------


class CountingConnection(aioredis.Connection):
    """Counts the writes to the socket: one per round trip."""

    writes = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).writes += 1
        await super().send_packed_command(command, check_health)


async def test_publish_writes_channel_and_stream_in_one_round_trip(
    redis_url: str, sync_redis: redis.Redis, invocation_id: str
) -> None:
    # Given a bus on a connection that counts round trips, warmed up (script loaded)
    pool = aioredis.ConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    connection = aioredis.Redis(connection_pool=pool)
    bus = EventBus(connection)
    await bus.publish(make_event("warm-up", 0), identity=IDENTITY)
    sync_redis.config_resetstat()
    pubsub = sync_redis.pubsub()
    pubsub.subscribe(events_channel(invocation_id))
    pubsub.get_message(timeout=1)  # the subscribe confirmation
    CountingConnection.writes = 0

    # When three events are published
    for seq in range(3):
        await bus.publish(make_event(invocation_id, seq), identity=IDENTITY)
    await connection.aclose()

    # Then each took one round trip (one script call), and wrote the stream and the channel
    assert CountingConnection.writes == 3
    stats = sync_redis.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 3
    assert stats["cmdstat_xadd"]["calls"] == 3
    assert stats["cmdstat_publish"]["calls"] == 3
    assert sync_redis.xlen(stream_key(invocation_id)) == 3
    received = [pubsub.get_message(timeout=1) for _ in range(3)]
    assert [decode_event(m["data"]).seq for m in received if m] == [0, 1, 2]
    pubsub.close()


async def test_publish_many_writes_a_batch_in_one_round_trip_as_separate_events(
    redis_url: str, sync_redis: redis.Redis, invocation_id: str
) -> None:
    # Given a bus on a connection that counts round trips, warmed up, and a subscriber
    pool = aioredis.ConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    connection = aioredis.Redis(connection_pool=pool)
    bus = EventBus(connection)
    await bus.publish(make_event("warm-up", 0), identity=IDENTITY)
    pubsub = sync_redis.pubsub()
    pubsub.subscribe(events_channel(invocation_id))
    pubsub.get_message(timeout=1)
    CountingConnection.writes = 0

    # When four events (the last the completion) are published as one batch
    await bus.publish_many(make_run(invocation_id, 4), identity=IDENTITY)
    await connection.aclose()

    # Then it took one round trip, and readers see four events in order, as four publishes
    assert CountingConnection.writes == 1
    entries = sync_redis.xrange(stream_key(invocation_id))
    assert [decode_event(fields[b"event"]).seq for _, fields in entries] == [0, 1, 2, 3]
    received = [pubsub.get_message(timeout=1) for _ in range(4)]
    assert [decode_event(m["data"]).seq for m in received if m] == [0, 1, 2, 3]
    pubsub.close()
    events = list(client.stream_events(invocation_id, redis_url=redis_url, timeout=5))
    assert [e.seq for e in events] == [0, 1, 2, 3]


async def test_publish_many_refuses_an_empty_batch_or_two_invocations(
    bus: EventBus, invocation_id: str
) -> None:
    with pytest.raises(ValueError, match="at least one event"):
        await bus.publish_many([], identity=IDENTITY)
    with pytest.raises(ValueError, match="one invocation"):
        await bus.publish_many(
            [make_event(invocation_id, 0), make_event(str(uuid.uuid4()), 1)], identity=IDENTITY
        )


async def test_stream_entry_holds_the_event_json_in_field_event_with_a_ttl(
    bus: EventBus, sync_redis: redis.Redis, invocation_id: str
) -> None:
    event = make_event(invocation_id, 0)
    await bus.publish(event, identity=IDENTITY)

    entries = sync_redis.xrange(stream_key(invocation_id))
    assert len(entries) == 1
    _entry_id, fields = entries[0]
    assert set(fields) == {b"event"}
    assert decode_event(fields[b"event"]) == event
    assert 3500 < sync_redis.ttl(stream_key(invocation_id)) <= 3600


async def test_stream_is_capped_and_ttl_configurable(
    aio: aioredis.Redis, sync_redis: redis.Redis, invocation_id: str
) -> None:
    bus = EventBus(aio, stream_maxlen=50, stream_ttl_s=30)
    for seq in range(600):
        await bus.publish(make_event(invocation_id, seq), identity=IDENTITY)

    length = sync_redis.xlen(stream_key(invocation_id))
    assert 50 <= length < 600  # MAXLEN ~ trims whole nodes: approximately 50
    assert 0 < sync_redis.ttl(stream_key(invocation_id)) <= 30


async def test_publish_before_start_only_while_the_run_has_not_started(
    bus: EventBus, sync_redis: redis.Redis, invocation_id: str
) -> None:
    def queued(seq: int) -> Event:
        return RunQueuedEvent(
            invocation_id=invocation_id, seq=seq, author="agent-runner", waiting_for="x"
        )

    # The next event of a run nobody started is published
    assert await bus.publish_before_start(queued(0), identity=IDENTITY)
    # One that is not the next (a twin delivery published first) is not
    assert not await bus.publish_before_start(queued(0), identity=IDENTITY)
    assert not await bus.publish_before_start(queued(2), identity=IDENTITY)
    # Nor is one of another (app, user, session) than the invocation's owner
    with pytest.raises(InvocationOwnedError):
        other = owner_identity("demo", "alice", "other")
        await bus.publish_before_start(queued(1), identity=other)
    # Nor anything once a delivery took the session (the run owns the next seq then)
    sync_redis.set(attempts_key(invocation_id), 1)
    assert not await bus.publish_before_start(queued(1), identity=IDENTITY)
    entries = sync_redis.xrange(stream_key(invocation_id))
    assert [decode_event(f[b"event"]).type for _, f in entries] == ["run.queued"]


async def test_last_seq_and_completion(bus: EventBus, invocation_id: str) -> None:
    assert await bus.last_seq(invocation_id) is None
    assert await bus.completion(invocation_id) is None

    for event in make_run(invocation_id, 3)[:2]:
        await bus.publish(event, identity=IDENTITY)
    assert await bus.last_seq(invocation_id) == 1
    assert await bus.completion(invocation_id) is None

    await bus.publish(make_event(invocation_id, 2, last=True), identity=IDENTITY)
    completion = await bus.completion(invocation_id)
    assert completion is not None and completion.status == "completed"
    assert await bus.last_seq(invocation_id) == 2


# --- subscribers written without the project's code ----------------------------------------


def test_plain_redis_py_subscriber_reads_the_documented_channel(
    redis_url: str, sync_redis: redis.Redis, invocation_id: str
) -> None:
    # Given a subscriber that knows only the documented channel name
    pubsub = sync_redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"agent-runner:events:{invocation_id}")

    # When a run's events are published
    publish_all(redis_url, make_run(invocation_id, 4))

    # Then it parses each as JSON with seq and type, ending with the completion
    received = []
    deadline = time.monotonic() + 5
    while len(received) < 4 and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.5)
        if message is not None:
            received.append(json.loads(message["data"]))
    pubsub.close()
    assert [e["seq"] for e in received] == [0, 1, 2, 3]
    assert received[-1]["type"] == "runner.completion"
    # And the documented stream replays them: field "event" of each entry
    replay = [
        json.loads(f[b"event"])
        for _, f in sync_redis.xrange(f"agent-runner:stream:{invocation_id}")
    ]
    assert replay == received


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli not installed")
def test_redis_cli_subscriber_reads_the_documented_channel(
    redis_server: Any, redis_url: str, invocation_id: str
) -> None:
    channel = f"agent-runner:events:{invocation_id}"
    cli = subprocess.Popen(
        ["redis-cli", "-h", redis_server.host, "-p", str(redis_server.port), "SUBSCRIBE", channel],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert cli.stdout is not None
        # redis-cli prints "subscribe", the channel and the count once subscribed
        confirmation = [cli.stdout.readline().strip() for _ in range(3)]
        assert confirmation == ["subscribe", channel, "1"]

        publish_all(redis_url, make_run(invocation_id, 3))

        lines = [cli.stdout.readline().strip() for _ in range(9)]  # message, channel, payload
        payloads = [json.loads(line) for line in lines[2::3]]
        assert [p["seq"] for p in payloads] == [0, 1, 2]
        assert payloads[-1]["type"] == "runner.completion"
    finally:
        cli.terminate()
        cli.wait(timeout=5)


# --- stream_events: exactly once, in order -------------------------------------------------


def test_subscribed_before_the_run_starts(redis_url: str, invocation_id: str) -> None:
    events = make_run(invocation_id, 20)
    publisher = threading.Thread(
        target=publish_all, args=(redis_url, events), kwargs={"delay_s": 0.005}
    )
    publisher.start()  # it sleeps before its first event: the reader is waiting by then
    received = list(client.stream_events(invocation_id, redis_url=redis_url, timeout=10))
    publisher.join()

    assert [e.seq for e in received] == list(range(20))
    assert received == events


def test_joins_late_after_the_run_finished(redis_url: str, invocation_id: str) -> None:
    events = make_run(invocation_id, 1200)  # more than one XREAD batch
    publish_all(redis_url, events)

    received = list(client.stream_events(invocation_id, redis_url=redis_url, timeout=5))

    assert [e.seq for e in received] == list(range(1200))


def test_joins_midway_and_follows_live(redis_url: str, invocation_id: str) -> None:
    events = make_run(invocation_id, 30)
    publish_all(redis_url, events[:10])
    publisher = threading.Thread(
        target=publish_all, args=(redis_url, events[10:]), kwargs={"delay_s": 0.005}
    )
    publisher.start()
    received = list(client.stream_events(invocation_id, redis_url=redis_url, timeout=10))
    publisher.join()

    assert [e.seq for e in received] == list(range(30))


def test_reconnect_with_after_seq_repeats_nothing(redis_url: str, invocation_id: str) -> None:
    events = make_run(invocation_id, 10)
    publish_all(redis_url, events[:6])

    # Given a reader that processed seq 0..3 and lost its connection
    first = client.stream_events(invocation_id, redis_url=redis_url, timeout=5)
    seen = [next(first).seq for _ in range(4)]
    first.close()

    # When it reconnects with after_seq=3 while the run goes on
    publisher = threading.Thread(target=publish_all, args=(redis_url, events[6:]))
    publisher.start()
    rest = [
        e.seq
        for e in client.stream_events(invocation_id, after_seq=3, redis_url=redis_url, timeout=5)
    ]
    publisher.join()

    # Then together they saw every event exactly once
    assert seen + rest == list(range(10))


def test_duplicate_publish_of_a_seq_is_delivered_once(redis_url: str, invocation_id: str) -> None:
    events = make_run(invocation_id, 5)
    publish_all(
        redis_url, [events[0], events[1], events[1], events[2], events[0], events[3], events[4]]
    )

    received = list(client.stream_events(invocation_id, redis_url=redis_url, timeout=5))

    assert [e.seq for e in received] == [0, 1, 2, 3, 4]


def test_stops_after_the_completion(redis_url: str, invocation_id: str) -> None:
    run = make_run(invocation_id, 3)
    publish_all(redis_url, [*run, make_event(invocation_id, 3)])  # a stray event after the end

    received = list(client.stream_events(invocation_id, redis_url=redis_url, timeout=5))

    assert received[-1].is_runner_completion()
    assert [e.seq for e in received] == [0, 1, 2]


def test_waits_longer_than_a_socket_timeout(redis_url: str, invocation_id: str) -> None:
    # redis-py's default socket timeout is 5 s; a reader waiting longer for a slow model's
    # first event must keep waiting, not fail
    publisher = threading.Timer(6.0, publish_all, args=(redis_url, make_run(invocation_id, 1)))
    publisher.start()
    received = list(client.stream_events(invocation_id, redis_url=redis_url, timeout=30))
    publisher.join()

    assert [e.seq for e in received] == [0]


def test_timeout_raises_a_clear_timeout_error(redis_url: str, invocation_id: str) -> None:
    publish_all(redis_url, [make_event(invocation_id, 0)])

    started = time.monotonic()
    received: list[Event] = []
    with pytest.raises(TimeoutError, match=r"waited 0\.3 s for event seq 1 of invocation"):
        for event in client.stream_events(invocation_id, redis_url=redis_url, timeout=0.3):
            received.append(event)
    assert [e.seq for e in received] == [0]
    assert time.monotonic() - started < 5


def test_missing_events_raise_instead_of_being_skipped(redis_url: str, invocation_id: str) -> None:
    events = make_run(invocation_id, 5)
    publish_all(redis_url, [events[0], events[3], events[4]])

    with pytest.raises(client.EventGapError, match=r"events 1\.\.2 of invocation"):
        list(client.stream_events(invocation_id, redis_url=redis_url, timeout=5))


def test_corrupt_entry_raises(redis_url: str, sync_redis: redis.Redis, invocation_id: str) -> None:
    sync_redis.xadd(stream_key(invocation_id), {"event": "{not json"})

    with pytest.raises(EventBusError, match="does not hold a valid event"):
        list(client.stream_events(invocation_id, redis_url=redis_url, timeout=5))


async def test_async_twin_reads_live_and_late(redis_url: str, invocation_id: str) -> None:
    events = make_run(invocation_id, 15)
    publisher = asyncio.create_task(
        asyncio.to_thread(publish_all, redis_url, events, delay_s=0.005)
    )
    received = [
        e async for e in client.astream_events(invocation_id, redis_url=redis_url, timeout=10)
    ]
    await publisher
    late = [
        e.seq
        async for e in client.astream_events(
            invocation_id, after_seq=9, redis_url=redis_url, timeout=5
        )
    ]

    assert received == events
    assert late == list(range(10, 15))


async def test_async_timeout(redis_url: str, invocation_id: str) -> None:
    with pytest.raises(TimeoutError, match="for the first event"):
        async for _ in client.astream_events(invocation_id, redis_url=redis_url, timeout=0.2):
            pass


def test_bad_invocation_id_and_after_seq(redis_url: str) -> None:
    with pytest.raises(InvalidRequestError, match="invocation_id 'no spaces please'"):
        next(client.stream_events("no spaces please", redis_url=redis_url))
    with pytest.raises(InvalidRequestError, match="after_seq"):
        next(client.stream_events("abc", after_seq=-5, redis_url=redis_url))


def test_unreachable_redis_names_host_and_port(invocation_id: str) -> None:
    port = free_port()
    with pytest.raises(
        EventBusUnavailableError, match=rf"127\.0\.0\.1:{port}.*AGENT_RUNNER_REDIS_URL"
    ):
        next(client.stream_events(invocation_id, redis_url=f"redis://127.0.0.1:{port}/0"))
    with pytest.raises(EventBusUnavailableError, match=rf"127\.0\.0\.1:{port}"):
        client.cancel(invocation_id, redis_url=f"redis://127.0.0.1:{port}/0")


async def test_publish_to_unreachable_redis_names_host_and_port(invocation_id: str) -> None:
    port = free_port()
    connection = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0")
    with pytest.raises(EventBusUnavailableError, match=rf"127\.0\.0\.1:{port}"):
        await EventBus(connection).publish(make_event(invocation_id, 0), identity=IDENTITY)
    await connection.aclose()


# --- cancel ----------------------------------------------------------------------------------


async def test_request_cancel_sets_the_key_with_a_ttl(
    bus: EventBus, sync_redis: redis.Redis, invocation_id: str
) -> None:
    await bus.request_cancel(invocation_id)
    assert 0 < sync_redis.ttl(cancel_key(invocation_id)) <= 3600


async def test_async_cancel_publishes_on_the_control_channel(
    aio: aioredis.Redis, redis_url: str, invocation_id: str
) -> None:
    pubsub = aio.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(control_channel(invocation_id))

    await client.acancel(invocation_id, redis_url=redis_url)

    message = None
    deadline = time.monotonic() + 2
    while message is None and time.monotonic() < deadline:  # the first read eats the confirmation
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
    assert message is not None and message["data"] == b"cancel"
    await pubsub.aclose()
