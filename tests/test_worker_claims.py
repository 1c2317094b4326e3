"""How a worker starts a delivery and hears of cancels, against a real redis-server.

- :meth:`workers.session_lock.SessionLocks.claim`: one script that returns a finished run's
  completion, or takes the session and counts the attempt, or says who holds it; it also reports
  the last published ``seq`` and a pending cancel request.
- :class:`workers.cancel_watch.CancelWatcher`: one pattern subscription per worker process that
  wakes the watched runs, including across a lost subscription.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from runner_core.events import Event, RunCompletionEvent
from runner_core.session import SessionKey
from tests.event_factory import make_event
from workers.bus import EventBus, EventBusError, owner_identity, stream_key
from workers.cancel_watch import CancelWatcher
from workers.session_lock import Busy, Claimed, SessionLocks

pytestmark = pytest.mark.redis

KEY = SessionKey("demo", "alice", "s1")

IDENTITY = owner_identity(KEY.app_name, KEY.user_id, KEY.session_id)


@pytest.fixture
async def aio(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis.from_url(redis_url)
    await connection.flushdb()
    yield connection
    await connection.aclose()


@pytest.fixture
def locks(aio: aioredis.Redis) -> SessionLocks:
    return SessionLocks(aio, prefix="agent-runner", lease_ttl_s=30, claim_ttl_s=60)


@pytest.fixture
def bus(aio: aioredis.Redis) -> EventBus:
    return EventBus(aio)


def new_id() -> str:
    return str(uuid.uuid4())


def event(invocation_id: str, seq: int, **fields: Any) -> Event:
    fields.setdefault("type", "message.delta")
    if fields["type"] == "message.delta":
        fields.setdefault("partial", True)
        fields.setdefault("delta", "x")
    return make_event(
        invocation_id=invocation_id,
        seq=seq,
        author="assistant",
        app_name="demo",
        user_id="alice",
        session_id="s1",
        **fields,
    )


# --- claim -----------------------------------------------------------------------------------


async def test_a_first_delivery_takes_a_free_session(locks: SessionLocks) -> None:
    run = new_id()

    claimed = await locks.claim(KEY, run, wait=True)

    assert isinstance(claimed, Claimed)
    assert claimed.lease.invocation_id == run
    assert (claimed.attempt, claimed.last_seq, claimed.cancel_requested) == (1, None, False)


async def test_a_second_run_waits_until_the_first_finishes(locks: SessionLocks) -> None:
    first, second = new_id(), new_id()
    claimed = await locks.claim(KEY, first, wait=True)
    assert isinstance(claimed, Claimed)

    assert await locks.claim(KEY, second, wait=True) == Busy(first, "running")

    await locks.release(claimed.lease, finished=True)
    after = await locks.claim(KEY, second, wait=True)
    assert isinstance(after, Claimed) and after.lease.token > claimed.lease.token


async def test_waiting_runs_get_the_session_in_the_order_they_came(
    locks: SessionLocks,
) -> None:
    holder, older, newer = new_id(), new_id(), new_id()
    claimed = await locks.claim(KEY, holder, wait=True)
    assert isinstance(claimed, Claimed)
    await locks.claim(KEY, older, wait=True)
    await locks.claim(KEY, newer, wait=True)
    await locks.release(claimed.lease, finished=True)

    assert await locks.claim(KEY, newer, wait=True) == Busy(older, "queued")
    assert isinstance(await locks.claim(KEY, older, wait=True), Claimed)


async def test_a_duplicate_delivery_sees_its_own_live_run(locks: SessionLocks) -> None:
    run = new_id()
    await locks.claim(KEY, run, wait=True)

    assert await locks.claim(KEY, run, wait=True) == Busy(run, "running")


async def test_an_unfinished_run_keeps_its_claim_and_counts_attempts(
    locks: SessionLocks,
) -> None:
    run, newer = new_id(), new_id()
    claimed = await locks.claim(KEY, run, wait=True)
    assert isinstance(claimed, Claimed)
    await locks.release(claimed.lease, finished=False)  # the worker died mid-run

    assert await locks.claim(KEY, newer, wait=True) == Busy(run, "claimed")
    again = await locks.claim(KEY, run, wait=True)
    assert isinstance(again, Claimed) and again.attempt == 2


async def test_a_reject_run_does_not_jump_the_queue(locks: SessionLocks) -> None:
    holder, waiter, rejecter = new_id(), new_id(), new_id()
    claimed = await locks.claim(KEY, holder, wait=True)
    assert isinstance(claimed, Claimed)
    await locks.claim(KEY, waiter, wait=True)
    await locks.release(claimed.lease, finished=True)

    assert await locks.claim(KEY, rejecter, wait=False) == Busy(waiter, "queued")


async def test_the_claim_reports_the_last_published_seq(locks: SessionLocks, bus: EventBus) -> None:
    run = new_id()
    for seq in range(3):
        await bus.publish(event(run, seq), identity=IDENTITY)

    claimed = await locks.claim(KEY, run, wait=True)

    assert isinstance(claimed, Claimed) and claimed.last_seq == 2


async def test_a_finished_run_returns_its_completion_and_takes_nothing(
    locks: SessionLocks, bus: EventBus
) -> None:
    run, other = new_id(), new_id()
    await bus.publish(event(run, 0), identity=IDENTITY)
    await bus.publish(
        event(run, 1, type="runner.completion", status="completed", final_text="done"),
        identity=IDENTITY,
    )

    done = await locks.claim(KEY, run, wait=True)

    assert isinstance(done, RunCompletionEvent) and done.is_runner_completion()
    assert (done.seq, done.final_text) == (1, "done")
    assert isinstance(await locks.claim(KEY, other, wait=True), Claimed)  # the session was free


async def test_a_pending_cancel_is_reported_to_a_claimed_and_a_waiting_run(
    locks: SessionLocks, bus: EventBus
) -> None:
    holder, waiter = new_id(), new_id()
    await bus.request_cancel(holder)
    await bus.request_cancel(waiter)

    claimed = await locks.claim(KEY, holder, wait=True)
    busy = await locks.claim(KEY, waiter, wait=True)

    assert isinstance(claimed, Claimed) and claimed.cancel_requested
    assert busy == Busy(holder, "running", cancel_requested=True)


async def test_an_unreadable_last_event_is_an_error_naming_the_stream(
    locks: SessionLocks, aio: aioredis.Redis
) -> None:
    run, other = new_id(), new_id()
    await aio.xadd(stream_key(run), {"event": "{not json"})

    with pytest.raises(EventBusError, match=stream_key(run)):
        await locks.claim(KEY, run, wait=True)
    assert isinstance(await locks.claim(KEY, other, wait=True), Claimed)  # nothing was taken


# --- cancel watch ----------------------------------------------------------------------------


@pytest.fixture
async def watcher(aio: aioredis.Redis) -> AsyncIterator[CancelWatcher]:
    cancels = CancelWatcher(aio, prefix="agent-runner", poll_s=30)
    cancels.start()
    await asyncio.wait_for(cancels.subscribed.wait(), timeout=5)
    yield cancels
    await cancels.close()


async def test_a_cancel_reaches_the_watched_run_through_the_subscription(
    watcher: CancelWatcher, bus: EventBus
) -> None:
    run, other = new_id(), new_id()
    with watcher.watch(run) as cancelled, watcher.watch(other) as other_cancelled:
        await bus.request_cancel(run)  # poll_s=30: only the pub/sub message can be in time

        await asyncio.wait_for(cancelled.wait(), timeout=2)
        assert not other_cancelled.is_set()


async def test_a_cancel_requested_earlier_is_found_by_the_sweep(
    aio: aioredis.Redis, bus: EventBus
) -> None:
    run = new_id()
    await bus.request_cancel(run)
    cancels = CancelWatcher(aio, prefix="agent-runner", poll_s=0.05)
    cancels.start()
    try:
        with cancels.watch(run) as cancelled:
            await asyncio.wait_for(cancelled.wait(), timeout=2)
    finally:
        await cancels.close()


async def test_no_request_no_cancel(aio: aioredis.Redis) -> None:
    cancels = CancelWatcher(aio, prefix="agent-runner", poll_s=0.05)
    cancels.start()
    try:
        with cancels.watch(new_id()) as cancelled:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(cancelled.wait(), timeout=0.5)
    finally:
        await cancels.close()


async def test_a_cancel_sent_while_the_subscription_is_down_still_arrives(
    watcher: CancelWatcher, bus: EventBus, aio: aioredis.Redis
) -> None:
    run = new_id()
    with watcher.watch(run) as cancelled:
        # Redis drops the subscriber (as on a restart or a network cut); the request is made
        # before the watcher has subscribed again, so its message is lost.
        await aio.client_kill_filter(_type="pubsub")
        await bus.request_cancel(run)

        await asyncio.wait_for(cancelled.wait(), timeout=5)  # the resubscribe sweep finds it


def test_a_bad_poll_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="poll_s must be > 0"):
        CancelWatcher(aioredis.Redis(), prefix="agent-runner", poll_s=0)
