"""Fencing and invocation ownership, piece by piece, against a real redis-server.

- :meth:`workers.bus.EventBus.publish` refuses, in its script, an event of a delivery whose
  lease was granted to another, and an event of an invocation ID bound to another identity.
- :meth:`workers.session_lock.SessionLocks.claim` binds an invocation ID to its first
  (app, user, session) and refuses any other before reading or writing anything.
- A lease that expired is taken back only if nobody was granted the session since.
- A Runner given a fence stops quietly when a newer owner holds the session.
- Tools get a stable idempotency key.

The session stores' own fence is in the conformance suite (test_session_conformance.py); the
same guarantees with real workers, a partition and a paused worker, in test_fencing_faults.py.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from runner_core import LLMAgent, Runner
from runner_core.errors import FencedError, InvocationOwnedError
from runner_core.events import Event
from runner_core.session import SessionKey
from runner_core.testing import ScriptedModelServer, scripted_model
from runner_core.tools import ToolContext
from session_backends import InMemorySessionService
from tests.event_factory import make_event
from workers.bus import EventBus, owner_identity, owner_key, stream_key
from workers.session_lock import Busy, Claimed, SessionLocks

KEY = SessionKey("demo", "alice", "s1")
MALLORY = SessionKey("demo", "mallory", "s-evil")


def identity_of(key: SessionKey) -> str:
    return owner_identity(key.app_name, key.user_id, key.session_id)


@pytest.fixture
async def aio(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


@pytest.fixture
def locks(aio: aioredis.Redis) -> SessionLocks:
    return SessionLocks(aio, prefix="agent-runner", lease_ttl_s=30, claim_ttl_s=60)


@pytest.fixture
def bus(aio: aioredis.Redis) -> EventBus:
    return EventBus(aio)


def event(invocation_id: str, seq: int, key: SessionKey = KEY, **fields: Any) -> Event:
    fields.setdefault("type", "message.delta")
    if fields["type"] == "message.delta":
        fields.setdefault("partial", True)
        fields.setdefault("delta", "x")
    return make_event(
        invocation_id=invocation_id,
        seq=seq,
        author="assistant",
        app_name=key.app_name,
        user_id=key.user_id,
        session_id=key.session_id,
        **fields,
    )


async def claimed(locks: SessionLocks, key: SessionKey, invocation_id: str) -> Claimed:
    claim = await locks.claim(key, invocation_id, wait=True)
    assert isinstance(claim, Claimed)
    return claim


# --- publish ---------------------------------------------------------------------------------


@pytest.mark.redis
async def test_a_publish_of_a_delivery_whose_lease_was_taken_writes_nothing(
    locks: SessionLocks, bus: EventBus, aio: aioredis.Redis
) -> None:
    # Given a delivery that published, then lost its lease (expired, granted to a redelivery)
    run = str(uuid.uuid4())
    stale = await claimed(locks, KEY, run)
    await bus.publish(event(run, 0), fence=locks.fence(stale.lease), identity=identity_of(KEY))
    await aio.delete(f"agent-runner:session:{stale.lease.digest}:lease")
    owner = await claimed(locks, KEY, run)
    assert owner.lease.token > stale.lease.token

    # When the stale delivery publishes again
    with pytest.raises(FencedError, match="no longer holds its session lease"):
        await bus.publish(event(run, 1), fence=locks.fence(stale.lease), identity=identity_of(KEY))

    # Then nothing was written, and the owner publishes
    assert await aio.xlen(stream_key(run)) == 1
    await bus.publish(event(run, 1), fence=locks.fence(owner.lease), identity=identity_of(KEY))
    assert await bus.last_seq(run) == 1


@pytest.mark.redis
async def test_a_batch_publish_of_a_delivery_whose_lease_was_taken_writes_none_of_it(
    locks: SessionLocks, bus: EventBus, aio: aioredis.Redis
) -> None:
    # Given a delivery that published, then lost its lease to a redelivery
    run = str(uuid.uuid4())
    stale = await claimed(locks, KEY, run)
    await bus.publish(event(run, 0), fence=locks.fence(stale.lease), identity=identity_of(KEY))
    await aio.delete(f"agent-runner:session:{stale.lease.digest}:lease")
    owner = await claimed(locks, KEY, run)

    # When the stale delivery publishes three events in one batch
    with pytest.raises(FencedError, match="Event seq 1, 2, 3 was not published"):
        await bus.publish_many(
            [event(run, 1), event(run, 2), event(run, 3)],
            fence=locks.fence(stale.lease),
            identity=identity_of(KEY),
        )

    # Then none of them was written; the owner's batch is written whole
    assert await aio.xlen(stream_key(run)) == 1
    await bus.publish_many(
        [event(run, 1), event(run, 2)], fence=locks.fence(owner.lease), identity=identity_of(KEY)
    )
    assert await aio.xlen(stream_key(run)) == 3
    assert await bus.last_seq(run) == 2


@pytest.mark.redis
async def test_an_event_for_another_identity_s_invocation_is_refused(
    bus: EventBus, aio: aioredis.Redis
) -> None:
    run = str(uuid.uuid4())
    await bus.publish(event(run, 0), identity=identity_of(KEY))  # binds the ID to alice's session

    with pytest.raises(InvocationOwnedError, match="belongs to another"):
        await bus.publish(event(run, 1, MALLORY), identity=identity_of(MALLORY))

    assert await aio.xlen(stream_key(run)) == 1
    assert b"alice" in (await aio.get(owner_key(run)) or b"")


# --- claim -----------------------------------------------------------------------------------


@pytest.mark.redis
async def test_a_claim_for_another_identity_is_refused_and_writes_nothing(
    locks: SessionLocks, bus: EventBus, aio: aioredis.Redis
) -> None:
    # Given alice's run, finished
    run = str(uuid.uuid4())
    mine = await claimed(locks, KEY, run)
    await bus.publish(
        event(run, 0, type="runner.completion", status="completed"), identity=identity_of(KEY)
    )
    await locks.release(mine.lease, finished=True)
    keys_before = sorted(await aio.keys("*"))

    # When mallory claims the same invocation ID on her session
    with pytest.raises(InvocationOwnedError):
        await locks.claim(MALLORY, run, wait=True)

    # Then she got neither alice's completion nor any key: nothing was written
    assert sorted(await aio.keys("*")) == keys_before
    # And alice's redelivery still gets her completion
    done = await locks.claim(KEY, run, wait=True)
    assert done.type == "runner.completion"


@pytest.mark.redis
async def test_tokens_start_from_the_redis_clock_and_only_grow(
    locks: SessionLocks, aio: aioredis.Redis
) -> None:
    first = await claimed(locks, KEY, str(uuid.uuid4()))
    await locks.release(first.lease, finished=True)
    second = await claimed(locks, KEY, str(uuid.uuid4()))

    # microseconds since the epoch: tokens after a Redis that lost its data outgrow old ones
    assert first.lease.token > int((time.time() - 3600) * 1_000_000)
    assert second.lease.token > first.lease.token

    await aio.flushdb()  # Redis lost everything
    after = await claimed(locks, KEY, str(uuid.uuid4()))
    assert after.lease.token > second.lease.token


# --- an expired lease ------------------------------------------------------------------------


@pytest.mark.redis
async def test_an_expired_lease_nobody_took_is_taken_back(
    locks: SessionLocks, aio: aioredis.Redis
) -> None:
    run = str(uuid.uuid4())
    held = await claimed(locks, KEY, run)
    await aio.delete(f"agent-runner:session:{held.lease.digest}:lease")  # expired (a pause)

    assert await locks.heartbeat(held.lease) is True
    # a redelivery of the run now finds it live and waits instead of taking it over
    assert await locks.claim(KEY, run, wait=True) == Busy(run, "running")


@pytest.mark.redis
async def test_an_expired_lease_granted_meanwhile_is_never_taken_back(
    locks: SessionLocks, aio: aioredis.Redis
) -> None:
    # Given a holder paused past its lease, whose run another delivery took and finished
    run = str(uuid.uuid4())
    stale = await claimed(locks, KEY, run)
    await aio.delete(f"agent-runner:session:{stale.lease.digest}:lease")
    owner = await claimed(locks, KEY, run)
    await locks.release(owner.lease, finished=True)  # lease and claim are gone again

    # When the paused holder comes back, Then the session is not its own any more
    assert await locks.heartbeat(stale.lease) is False


@pytest.mark.redis
async def test_a_stale_delivery_never_frees_the_session_of_the_run_s_new_owner(
    locks: SessionLocks, aio: aioredis.Redis
) -> None:
    # Given a run taken over by a redelivery (same invocation, newer token)
    run, newer_run = str(uuid.uuid4()), str(uuid.uuid4())
    stale = await claimed(locks, KEY, run)
    lease_key = f"agent-runner:session:{stale.lease.digest}:lease"
    await aio.delete(lease_key)
    await claimed(locks, KEY, run)

    # When the stale delivery releases as if the run had finished, and the owner then dies
    await locks.release(stale.lease, finished=True)
    await aio.delete(lease_key)

    # Then the session still waits for the run's recovery: newer runs do not go ahead of it
    assert await locks.claim(KEY, newer_run, wait=True) == Busy(run, "claimed")


# --- the Runner ------------------------------------------------------------------------------


@pytest.fixture
def model_server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as server:
        yield server


async def test_a_fenced_run_stops_quietly_when_a_newer_owner_holds_the_session(
    model_server: ScriptedModelServer,
) -> None:
    service = InMemorySessionService()
    agent = LLMAgent("demo", model=scripted_model(model_server))
    model_server.add_text("first answer")
    runner = Runner("demo", agent, session_service=service)
    done = await runner.run("alice", "s1", "hello", fence=3).completion()
    assert done.status == "completed"

    # Given a newer owner of the session
    await service.take_fence("demo", "alice", "s1", 4)

    # When the older owner runs again
    model_server.add_text("stale answer")
    stream = runner.run("alice", "s1", "again", fence=3)
    seen: list[Event] = []
    with pytest.raises(FencedError):
        async for item in stream:
            seen.append(item)

    # Then it handed out and stored nothing, not even a completion
    assert seen == []
    session = await service.get_session("demo", "alice", "s1")
    assert session is not None and len(session.events) == 2
    with pytest.raises(FencedError):  # the stream stays ended
        await stream.__anext__()


def test_a_tool_s_idempotency_key_is_its_invocation_and_call() -> None:
    context = ToolContext(
        app_name="demo",
        user_id="alice",
        session_id="s1",
        invocation_id="inv-7",
        tool_call_id="call_2",
        state={},
    )

    assert context.idempotency_key == "inv-7:call_2"
