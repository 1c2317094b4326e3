"""Events, session leases and Redis sessions on a real three-node Redis Cluster.

The cluster is started by tests/redis_cluster.py (``redis+cluster://`` URL; every node a
primary). What is proved here, against it:

- every key one fenced write touches (a run's stream, channel and owner, its session's lease,
  claim, fence and token counter) hashes to one slot, which the servers themselves report
  (``CLUSTER KEYSLOT``), and different sessions spread over the nodes;
- a run's events are published (sharded pub/sub heard by a subscriber that had only the
  invocation ID), kept in its stream, and replayed by :func:`workers.client.stream_events`;
- a fenced publish of a delivery that lost its lease writes nothing;
- session leases: one run at a time, the line, release, a stale heartbeat refused;
- an invocation ID is bound to its first session (the locator) and refused for another;
- a cancel requested before the run started is seen by its claim;
- one real run through a ``celery worker`` whose events, leases and sessions are on the
  cluster (the broker on the suite's single Redis), read back by a subscriber.

The Redis session store's conformance on the cluster is the ``redis-cluster`` variant of
tests/test_session_conformance.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.cluster
from redis.asyncio.cluster import RedisCluster

from runner_core.errors import ConfigurationError, FencedError, InvocationOwnedError
from runner_core.events import Event, StateUpdateEvent
from runner_core.messages import Message
from runner_core.session import Session, SessionKey
from runner_core.wire import (
    cancel_key,
    events_channel,
    locator_key,
    owner_key,
    session_digest,
    session_lock_key,
    session_tag,
    stream_key,
)
from session_backends import from_url
from session_backends.redis_target import async_client, cluster_node_url, sync_client
from tests.event_factory import make_event
from tests.redis_cluster import RedisClusterServers
from workers import client
from workers.bus import EventBus, owner_identity
from workers.cancel_watch import CancelWatcher
from workers.client import ReplyText, acancel, astream_events, stream_events
from workers.session_lock import Busy, Claimed, SessionLocks
from workers.settings import Settings

pytestmark = pytest.mark.redis

KEY = SessionKey("demo", "alice", "s1")
MALLORY = SessionKey("demo", "mallory", "s-evil")
PREFIX = "agent-runner"


def identity_of(key: SessionKey) -> str:
    return owner_identity(key.app_name, key.user_id, key.session_id)


def event(invocation_id: str, seq: int, key: SessionKey = KEY, **fields: Any) -> Event:
    fields.setdefault("type", "message.delta")
    if fields["type"] == "message.delta":
        fields.setdefault("delta", f"part {seq} ")
    return make_event(
        invocation_id=invocation_id,
        seq=seq,
        author="assistant",
        app_name=key.app_name,
        user_id=key.user_id,
        session_id=key.session_id,
        **fields,
    )


@pytest.fixture
async def cluster(redis_cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = async_client(redis_cluster_url)
    assert isinstance(client, RedisCluster)
    yield client
    await client.aclose()


@pytest.fixture
def sync_cluster(redis_cluster_url: str) -> Iterator[redis.cluster.RedisCluster]:
    client = sync_client(redis_cluster_url)
    assert isinstance(client, redis.cluster.RedisCluster)
    yield client
    client.close()


@pytest.fixture
def locks(cluster: RedisCluster, bus: EventBus) -> SessionLocks:
    return SessionLocks(cluster, prefix=PREFIX, lease_ttl_s=30, claim_ttl_s=60, locator=bus.locator)


@pytest.fixture
def bus(cluster: RedisCluster) -> EventBus:
    return EventBus(cluster, prefix=PREFIX)


async def claimed(locks: SessionLocks, key: SessionKey, invocation_id: str) -> Claimed:
    claim = await locks.claim(key, invocation_id, wait=True)
    assert isinstance(claim, Claimed), claim
    return claim


def keyslot(client: redis.cluster.RedisCluster, key: str) -> int:
    return int(client.cluster_keyslot(key))


# --- one slot per session ----------------------------------------------------------------------


def test_the_keys_of_a_fenced_write_share_one_slot_and_sessions_spread(
    sync_cluster: redis.cluster.RedisCluster, redis_cluster: RedisClusterServers
) -> None:
    # Given a run of alice's session and the names its fenced writes touch on a cluster
    run = str(uuid.uuid4())
    digest = session_digest(KEY.app_name, KEY.user_id, KEY.session_id)
    tag = session_tag(digest)
    names = [
        stream_key(run, PREFIX, tag),
        events_channel(run, PREFIX, tag),
        owner_key(run, PREFIX, tag),
        *(
            session_lock_key(digest, part, PREFIX, cluster=True)
            for part in ("lease", "claim", "waiters", "waiters-seen", "fence", "token")
        ),
    ]
    # When the cluster hashes them, Then they are all in one slot
    assert len({keyslot(sync_cluster, name) for name in names}) == 1
    # And the single-Redis names are unchanged (no braces: a running deployment keeps its keys)
    assert stream_key(run, PREFIX) == f"agent-runner:stream:{run}"
    assert session_lock_key(digest, "lease", PREFIX) == f"agent-runner:session:{digest}:lease"
    # And sessions are spread: 60 sessions land on every node of the cluster
    slots = {
        keyslot(sync_cluster, session_lock_key(session_digest("demo", "u", f"s{n}"), "lease"))
        for n in range(60)
    }
    owners = {
        sync_cluster.get_node_from_key(
            session_lock_key(session_digest("demo", "u", f"s{n}"), "lease", cluster=True)
        ).port
        for n in range(60)
    }
    assert len(slots) > 1
    assert owners == set(redis_cluster.nodes)


# --- events -----------------------------------------------------------------------------------


async def test_a_run_s_events_are_published_sharded_stored_and_replayed(
    bus: EventBus,
    locks: SessionLocks,
    sync_cluster: redis.cluster.RedisCluster,
    redis_cluster_url: str,
    redis_cluster: RedisClusterServers,
) -> None:
    # Given a run that took its session, and a subscriber that knows only the invocation ID:
    # it finds the run's session through the locator and subscribes to its sharded channel
    run = str(uuid.uuid4())
    claim = await claimed(locks, KEY, run)
    digest = sync_cluster.get(locator_key(run, PREFIX))
    assert digest is not None
    channel = events_channel(run, PREFIX, session_tag(digest.decode()))
    pubsub = sync_cluster.pubsub()
    sharded = redis_cluster.version >= (7,)
    if sharded:
        pubsub.ssubscribe(channel)
    else:
        pubsub.subscribe(channel)

    # When it publishes its events, fenced by its lease
    fence = locks.fence(claim.lease)
    for seq in range(3):
        await bus.publish(event(run, seq), identity=identity_of(KEY), fence=fence)
    await bus.publish(
        event(run, 3, type="runner.completion", status="completed"),
        identity=identity_of(KEY),
        fence=fence,
    )

    # Then the subscriber heard every event live, in order
    heard: list[dict[str, Any]] = []
    while len(heard) < 4:
        if sharded:
            message = pubsub.get_sharded_message(timeout=10)
        else:
            message = pubsub.get_message(timeout=10)
        assert message is not None, f"heard only {heard}"
        if message["type"] in ("smessage", "message"):
            heard.append(json.loads(message["data"]))
    pubsub.close()
    assert [e["seq"] for e in heard] == [0, 1, 2, 3]
    # And a late reader replays them all from the stream, sync and async alike
    replayed = list(stream_events(run, redis_url=redis_cluster_url, timeout=30, known_wait=5))
    assert [e.seq for e in replayed] == [0, 1, 2, 3]
    assert replayed[-1].is_runner_completion()
    later = [e.seq async for e in astream_events(run, redis_url=redis_cluster_url, after_seq=1)]
    assert later == [2, 3]
    assert (await bus.completion(run)) is not None
    assert await bus.last_seq(run) == 3


def test_submit_binds_the_invocation_to_its_session_before_sending(
    redis_cluster_url: str,
    sync_cluster: redis.cluster.RedisCluster,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an invocation ID already bound to alice's session on the cluster
    monkeypatch.setenv("AGENT_RUNNER_REDIS_URL", redis_cluster_url)
    run = str(uuid.uuid4())
    alice = session_digest(KEY.app_name, KEY.user_id, KEY.session_id)
    sync_cluster.set(locator_key(run, PREFIX), alice)

    # When a producer submits a run of mallory's session with that ID, Then it is refused
    # before anything is sent, and the binding is still alice's
    with pytest.raises(InvocationOwnedError):
        client.submit(
            MALLORY.app_name, MALLORY.user_id, MALLORY.session_id, "hi", invocation_id=run
        )
    assert sync_cluster.get(locator_key(run, PREFIX)) == alice.encode()


def test_a_reader_of_an_unknown_invocation_gives_up_on_a_cluster(redis_cluster_url: str) -> None:
    from workers.bus import UnknownInvocationError

    with pytest.raises(UnknownInvocationError):
        list(stream_events(str(uuid.uuid4()), redis_url=redis_cluster_url, known_wait=0.3))


async def test_a_publish_of_a_delivery_whose_lease_was_taken_writes_nothing(
    bus: EventBus, locks: SessionLocks, cluster: RedisCluster
) -> None:
    # Given a delivery that published, then lost its lease to a redelivery of its run
    run = str(uuid.uuid4())
    stale = await claimed(locks, KEY, run)
    await bus.publish(event(run, 0), identity=identity_of(KEY), fence=locks.fence(stale.lease))
    await locks.release(stale.lease, finished=False)  # its lease is gone, its claim stays
    owner = await claimed(locks, KEY, run)
    assert owner.lease.token > stale.lease.token and owner.attempt == 2

    # When the stale delivery publishes again, Then it is refused and nothing is written
    with pytest.raises(FencedError, match="no longer holds its session lease"):
        await bus.publish(event(run, 1), identity=identity_of(KEY), fence=locks.fence(stale.lease))
    tag = session_tag(stale.lease.digest)
    assert await cluster.xlen(stream_key(run, PREFIX, tag)) == 1
    # And the owner publishes
    await bus.publish(event(run, 1), identity=identity_of(KEY), fence=locks.fence(owner.lease))
    assert await bus.last_seq(run) == 1


# --- leases -----------------------------------------------------------------------------------


async def test_session_leases_one_run_at_a_time_then_the_next(
    bus: EventBus, locks: SessionLocks
) -> None:
    # Given run A holding alice's session
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    a = await claimed(locks, KEY, first)

    # When run B asks for it, Then it waits behind A
    busy = await locks.claim(KEY, second, wait=True)
    assert isinstance(busy, Busy) and busy.holder == first and busy.reason == "running"

    # When A finishes and releases, Then B gets the session with a newer token
    await bus.publish(
        event(first, 0, type="runner.completion", status="completed"),
        identity=identity_of(KEY),
        fence=locks.fence(a.lease),
    )
    await locks.release(a.lease, finished=True)
    b = await claimed(locks, KEY, second)
    assert b.lease.token > a.lease.token
    # And A's lease is no longer A's: its heartbeat says so
    assert await locks.heartbeat(a.lease) is False
    assert await locks.heartbeat(b.lease) is True
    # And a claim of A's finished run returns its completion instead of the session
    done = await locks.claim(KEY, first, wait=False)
    assert not isinstance(done, Claimed | Busy) and done.status == "completed"


async def test_an_invocation_id_is_bound_to_its_first_session(
    bus: EventBus, locks: SessionLocks, cluster: RedisCluster
) -> None:
    # Given alice's run
    run = str(uuid.uuid4())
    await claimed(locks, KEY, run)

    # When mallory claims or publishes the same invocation ID for her session
    with pytest.raises(InvocationOwnedError):
        await locks.claim(MALLORY, run, wait=True)
    fresh_bus = EventBus(cluster, prefix=PREFIX)  # no cached binding: the locator refuses
    with pytest.raises(InvocationOwnedError):
        await fresh_bus.publish(event(run, 0, MALLORY), identity=identity_of(MALLORY))

    # Then nothing of hers was written: no lease of her session, no stream in her slot
    mallory = session_digest(MALLORY.app_name, MALLORY.user_id, MALLORY.session_id)
    assert not await cluster.exists(session_lock_key(mallory, "lease", PREFIX, cluster=True))
    assert not await cluster.exists(stream_key(run, PREFIX, session_tag(mallory)))


async def test_a_cancel_before_the_run_starts_is_seen_by_its_claim(
    bus: EventBus, locks: SessionLocks, redis_cluster_url: str, cluster: RedisCluster
) -> None:
    # Given a run nobody took yet, cancelled by a client that knows only its ID
    run = str(uuid.uuid4())
    assert await acancel(run, redis_url=redis_cluster_url) is None
    assert await cluster.exists(cancel_key(run, PREFIX))

    # When a worker claims it, Then the claim says it was cancelled
    claim = await claimed(locks, KEY, run)
    assert claim.cancel_requested

    # And a cancel of a finished run returns its completion and records nothing
    await bus.publish(
        event(run, 0, type="runner.completion", status="cancelled"),
        identity=identity_of(KEY),
        fence=locks.fence(claim.lease),
    )
    await cluster.delete(cancel_key(run, PREFIX))
    done = await acancel(run, redis_url=redis_cluster_url)
    assert done is not None and done.status == "cancelled"
    assert not await cluster.exists(cancel_key(run, PREFIX))


async def test_a_worker_s_cancel_watch_hears_requests_on_a_cluster(
    cluster: RedisCluster, bus: EventBus
) -> None:
    # Given a worker's cancel watch on the cluster (one subscription, sweeps every 30 s)
    watcher = CancelWatcher(cluster, prefix=PREFIX, poll_s=30)
    watcher.start()
    try:
        await asyncio.wait_for(watcher.subscribed.wait(), timeout=10)
        run, other = str(uuid.uuid4()), str(uuid.uuid4())
        with watcher.watch(run) as cancelled, watcher.watch(other) as other_cancelled:
            # When a client cancels one run (its key and message in the run's own slot)
            await bus.request_cancel(run)
            # Then the message reaches the watch, whichever node it subscribed on
            await asyncio.wait_for(cancelled.wait(), timeout=10)
            assert not other_cancelled.is_set()
    finally:
        await watcher.close()

    # And a request made before the watch started is found by its sweep (keys on many nodes)
    early = [str(uuid.uuid4()) for _ in range(6)]
    for run in early:
        await bus.request_cancel(run)
    sweeper = CancelWatcher(cluster, prefix=PREFIX, poll_s=0.05)
    sweeper.start()
    try:
        with contextlib.ExitStack() as stack:
            events = [stack.enter_context(sweeper.watch(run)) for run in early]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), timeout=10)
    finally:
        await sweeper.close()


# --- the Redis session store -----------------------------------------------------------------


def test_a_session_s_store_keys_share_one_slot(sync_cluster: redis.cluster.RedisCluster) -> None:
    # Given the keys a fenced append touches (the store's own layout, module docstring of
    # session_backends/redis.py): the session, its state, events, IDs, summaries, fence, its
    # pending app state, the user's state and session index
    tag, sid = "{demo/alice}", "s1"
    names = [
        f"agent-runner:{kind}:{tag}/{sid}"
        for kind in ("session", "state", "events", "event_ids", "summaries", "summary_counts")
    ]
    names += [
        f"agent-runner:fence:{tag}/{sid}",
        f"agent-runner:app_pending:{tag}/{sid}",
        f"agent-runner:user_state:{tag}",
        f"agent-runner:sessions:{tag}",
    ]
    # Then the cluster puts them in one slot
    assert len({keyslot(sync_cluster, name) for name in names}) == 1


async def test_app_state_a_dead_writer_left_pending_is_copied_by_the_next_read(
    redis_cluster_url: str, cluster: RedisCluster
) -> None:
    # Given a session whose app-state change was stored (in its pending hash, with its event)
    # by a writer that died before copying it to the app state
    store = from_url(redis_cluster_url)
    try:
        session = await store.create_session("demo", "alice", "s1")
        event = StateUpdateEvent(
            author="agent", invocation_id="inv-1", seq=0, state_delta={"app:motd": "hello"}
        )
        assert await store.append_event(session, event)
        assert await store.get_app_state("demo") == {"motd": "hello"}
        pending = "agent-runner:app_pending:{demo/alice}/s1"
        assert not await cluster.exists(pending)  # copied, then removed
        await cluster.hset(pending, "motd", json.dumps("left behind"))

        # When the session is read, Then the pending value reaches the app state, for everyone
        loaded = await store.get_session("demo", "alice", "s1")
        assert loaded is not None and loaded.state["app:motd"] == "left behind"
        assert await store.get_app_state("demo") == {"motd": "left behind"}
        assert not await cluster.exists(pending)
        bobs = await store.create_session("demo", "bob", "s9")
        assert bobs.state == {"app:motd": "left behind"}
    finally:
        await store.close()


# --- a real worker ------------------------------------------------------------------------------


async def read_session(url: str, app_name: str, user_id: str, session_id: str) -> Session | None:
    store = from_url(url)
    try:
        return await store.get_session(app_name, user_id, session_id)
    finally:
        await store.close()


@pytest.mark.celery
def test_a_run_through_a_celery_worker_whose_events_and_sessions_are_on_the_cluster(
    start_worker: Any,
    producer: Any,
    redis_url: str,
    redis_cluster_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a worker whose events, leases and sessions are on the cluster, its broker (and
    # results) on the suite's single Redis, with the offline demo model
    on_cluster = {
        "AGENT_RUNNER_REDIS_URL": redis_cluster_url,
        "AGENT_RUNNER_SESSION_URL": redis_cluster_url,
    }
    start_worker(OPENAI_API_KEY="", OPENAI_BASE_URL="", **on_cluster)
    for name, value in on_cluster.items():
        monkeypatch.setenv(name, value)

    # When a producer submits a run and a subscriber reads it back by its ID
    invocation_id = client.submit("assistant", "alice", "s-cluster", Message.user("what is 12*7"))
    events = list(stream_events(invocation_id, timeout=60, known_wait=30))

    # Then every event arrived once, in order, ending with the completion
    assert [e.seq for e in events] == list(range(len(events)))
    assert events[-1].is_runner_completion() and events[-1].status == "completed"
    reply = ReplyText()
    texts = [text for e in events if (text := reply.feed(e)) is not None]
    assert texts == ["12*7 = 84."]
    # And the session is in the cluster's session store, the events' stream in the cluster;
    # of the run's keys the single Redis holds only its execution trace (which needs one Redis:
    # its default is the broker's on a cluster)
    session = asyncio.run(read_session(redis_cluster_url, "assistant", "alice", "s-cluster"))
    assert session is not None
    assert [e.invocation_id for e in session.events] == [invocation_id] * len(session.events)
    assert session.events[-1].type == "message"
    single = redis.Redis.from_url(redis_url)
    try:
        left = single.keys(f"agent-runner:*{invocation_id}*")
        assert all(key.startswith(b"agent-runner:trace") for key in left), left
    finally:
        single.close()


# --- configuration ----------------------------------------------------------------------------


def test_cluster_urls_are_taken_for_events_and_sessions_and_refused_for_the_broker() -> None:
    cluster = "redis+cluster://127.0.0.1:7000"
    settings = Settings.from_env(
        {
            "AGENT_RUNNER_BROKER_URL": "redis://127.0.0.1:6379/0",
            "AGENT_RUNNER_REDIS_URL": cluster,
        }
    )
    assert settings.redis_url == cluster and settings.session_url == cluster
    # Execution traces need one Redis: on a cluster they default to the broker's
    assert settings.trace_url == "redis://127.0.0.1:6379/0"
    with pytest.raises(ConfigurationError, match=r"AGENT_RUNNER_BROKER_URL.*single Redis"):
        Settings.from_env({"AGENT_RUNNER_BROKER_URL": cluster})
    with pytest.raises(ConfigurationError, match="AGENT_RUNNER_RESULT_BACKEND"):
        Settings.from_env({"AGENT_RUNNER_RESULT_BACKEND": cluster})
    with pytest.raises(ConfigurationError, match="only database 0"):
        Settings.from_env({"AGENT_RUNNER_REDIS_URL": cluster + "/3"})
    with pytest.raises(ConfigurationError, match="names no host"):
        cluster_node_url("redis+cluster://")
    assert cluster_node_url("rediss+cluster://h:7000/0") == "rediss://h:7000"
