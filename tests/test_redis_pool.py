"""The waiting connection pool (session_backends.redis_pool) against a real redis-server.

It never opens more than ``max_connections`` connections, makes a command that finds them all
busy wait for one instead of failing, and fails a wait longer than ``timeout`` with an error
that says what to change. Its connections send without a task per command, and a send to a
server that stopped reading still ends at ``socket_timeout`` with redis-py's error.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Coroutine, Generator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from session_backends.redis_pool import WaitingConnectionPool
from tests.services import RedisServer

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


async def test_commands_are_sent_without_a_task_each(redis_url: str) -> None:
    # Given a pool whose connections have a socket timeout (redis-py then sends each command
    # under asyncio.wait_for: one task per command on Python 3.11)
    pool = WaitingConnectionPool.from_url(redis_url, max_connections=4, socket_timeout=5)
    client = aioredis.Redis.from_pool(pool)
    loop = asyncio.get_running_loop()
    created: list[str] = []

    def counting_factory(
        loop: asyncio.AbstractEventLoop,
        coro: Generator[Any, None, Any] | Coroutine[Any, Any, Any],
        **kwargs: Any,
    ) -> asyncio.Task[Any]:
        created.append(getattr(coro, "__qualname__", repr(coro)))
        return asyncio.Task(coro, loop=loop, **kwargs)

    try:
        await client.ping()
        loop.set_task_factory(counting_factory)  # type: ignore[arg-type]
        # When 20 commands run one after another
        for i in range(20):
            await client.set(f"k{i}", i)
        loop.set_task_factory(None)

        # Then no task was made for them, and they all took effect
        assert created == []
        assert await client.mget([f"k{i}" for i in range(20)]) == [
            str(i).encode() for i in range(20)
        ]
    finally:
        loop.set_task_factory(None)
        await client.aclose()


async def test_a_send_to_a_stopped_server_times_out_and_writes_nothing() -> None:
    server = RedisServer()
    server.start()
    pool = WaitingConnectionPool.from_url(server.url, max_connections=1, socket_timeout=0.5)
    client = aioredis.Redis.from_pool(pool)
    try:
        # Given a connected client, and a server that stops reading (SIGSTOP)
        assert await client.ping()
        os.kill(server.pid, signal.SIGSTOP)
        try:
            # When a command too large for the socket buffers is sent
            with pytest.raises(RedisTimeoutError, match="Timeout writing to socket"):
                await client.set("big", b"x" * (64 * 1024 * 1024))
        finally:
            os.kill(server.pid, signal.SIGCONT)

        # Then the cut command was not applied, and the client works again on a new connection
        assert await client.get("big") is None
        assert await client.set("small", "1")
        assert await client.get("small") == b"1"
    finally:
        await client.aclose()
        server.close()
