"""The waiting connection pool (session_backends.redis_pool) against a real redis-server.

It never opens more than ``max_connections`` connections, makes a command that finds them all
busy wait for one instead of failing, and fails a wait longer than ``timeout`` with an error
that says what to change.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from session_backends.redis_pool import WaitingConnectionPool

pytestmark = pytest.mark.redis


async def test_commands_wait_for_a_free_connection_and_never_exceed_the_limit(
    redis_url: str,
) -> None:
    # Given a pool of two connections
    pool = WaitingConnectionPool.from_url(redis_url, max_connections=2, timeout=10)
    client = aioredis.Redis.from_pool(pool)
    seen: list[int] = []

    async def blocked_pop(i: int) -> None:
        # each command holds its connection for 0.2 s
        await client.blpop([f"never-pushed-{i}"], timeout=0.2)
        seen.append(len(pool._in_use_connections))

    try:
        # When six commands run at once
        await asyncio.gather(*(blocked_pop(i) for i in range(6)))

        # Then all six ran, on at most two connections
        assert len(seen) == 6
        assert max(seen) <= 2
        assert len(pool._available_connections) + len(pool._in_use_connections) == 2
        assert await client.ping()
    finally:
        await client.aclose()


async def test_a_wait_longer_than_the_timeout_fails_clearly(redis_url: str) -> None:
    # Given a pool of one connection, busy with a 1 s command
    pool = WaitingConnectionPool.from_url(redis_url, max_connections=1, timeout=0.1)
    client = aioredis.Redis.from_pool(pool)
    try:
        busy = asyncio.create_task(client.blpop(["never-pushed"], timeout=1))
        await asyncio.sleep(0.05)

        # When another command needs a connection
        with pytest.raises(RedisConnectionError, match="all 1 connections of the pool"):
            await client.get("k")

        # Then the busy command still completes, and the freed connection serves again
        assert await busy is None
        assert await client.set("k", "v")
        assert await client.get("k") == b"v"
    finally:
        await client.aclose()


async def test_a_cancelled_wait_gives_no_slot_away(redis_url: str) -> None:
    # Given a pool of one busy connection and a command waiting for it
    pool = WaitingConnectionPool.from_url(redis_url, max_connections=1, timeout=10)
    client = aioredis.Redis.from_pool(pool)
    try:
        busy = asyncio.create_task(client.blpop(["never-pushed"], timeout=0.3))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(client.get("k"))
        await asyncio.sleep(0.05)

        # When the waiting command is cancelled
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await busy

        # Then the pool still has its one slot: a command runs, and a second one at once
        # shares it in turn
        results = await asyncio.gather(client.set("a", "1"), client.set("b", "2"))
        assert results == [True, True]
        assert len(pool._available_connections) + len(pool._in_use_connections) == 1
    finally:
        await client.aclose()
