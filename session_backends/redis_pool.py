"""A connection pool for the asyncio Redis client that waits for a free connection, cheaply.

Runs share one pool per worker process; with many runs at once every connection may be busy,
and a command must then wait for one instead of failing with "Too many connections" (what
redis-py's default :class:`~redis.asyncio.ConnectionPool` does). redis-py's
:class:`~redis.asyncio.BlockingConnectionPool` waits, but pays for it on every command: an
``asyncio.Condition``, a timer, connection-count metrics and a release event per checkout.
On this project's hot path (20 or so Redis round trips per run) that was about a third of
each call's client-side CPU, measured with ``bench distributed``.

:class:`WaitingConnectionPool` keeps the plain pool's checkout and adds only an
``asyncio.Semaphore`` of ``max_connections`` slots: taking a free slot does not suspend the
task, and only a command that finds every connection busy waits (up to ``timeout`` seconds,
then ``redis.exceptions.ConnectionError``). Connections are checked as the plain pool checks
them (``ensure_connection``) before they are handed out.

Not supported here (not used by agent-runner): redis-py's connection metrics, streaming
credential providers that re-authenticate on release, and Redis Enterprise maintenance
notifications.

Its connections send each command without a task of its own (:func:`sends_in_place`): with a
``socket_timeout``, redis-py sends every command under ``asyncio.wait_for``, which on Python
3.11 is a new task, a timer and an extra turn of the loop per command, to bound a write that
almost never waits (it goes into the transport's buffer). ``bench distributed`` counted 11 such
tasks per run before.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["WaitingConnectionPool", "sends_in_place"]


class _SendsInPlace(AbstractConnection):
    """A connection that bounds a send by ``socket_timeout`` with ``asyncio.timeout`` (no
    task) instead of redis-py's ``asyncio.wait_for``; the same bound, the same errors.

    While one of its sends runs, ``socket_timeout`` reads None (that is what makes redis-py
    send in place); the send, with any health check and connect it makes first, is bounded as a
    whole. A connection serves one command at a time, so nothing else reads it meanwhile. Not
    for pub/sub connections, whose reads may run beside a send.
    """

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        timeout = self.socket_timeout
        if not timeout:
            await super().send_packed_command(command, check_health)
            return
        self.socket_timeout = None
        try:
            async with asyncio.timeout(timeout):
                await super().send_packed_command(command, check_health)
        except TimeoutError:
            # Cancelled by the timeout: redis-py dropped the connection on the way out, as
            # after its own write timeout, whose error this is.
            raise RedisTimeoutError("Timeout writing to socket") from None
        finally:
            self.socket_timeout = timeout


_IN_PLACE: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def sends_in_place(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """``cls`` (redis-py's TCP, TLS or Unix socket connection) sending as :class:`_SendsInPlace`
    does. Give it to a pool before the pool opens a connection."""
    if issubclass(cls, _SendsInPlace):
        return cls
    found = _IN_PLACE.get(cls)
    if found is None:
        found = _IN_PLACE[cls] = type(cls.__name__, (_SendsInPlace, cls), {})
    return found


class WaitingConnectionPool(aioredis.ConnectionPool):
    """A pool of at most ``max_connections`` connections; a checkout with all of them busy
    waits up to ``timeout`` seconds for one (``None``: without limit).

    Build it like the plain pool: ``WaitingConnectionPool.from_url(url, max_connections=100,
    timeout=20)``, then ``redis.asyncio.Redis.from_pool(pool)``. Use it from one event loop.
    """

    def __init__(self, *, timeout: float | None = 20.0, **kwargs: Any) -> None:
        kwargs["connection_class"] = sends_in_place(
            kwargs.get("connection_class", aioredis.Connection)
        )
        super().__init__(**kwargs)
        self.timeout = timeout
        self._slots = asyncio.Semaphore(self.max_connections)

    async def get_connection(
        self, command_name: Any = None, *keys: Any, **options: Any
    ) -> AbstractConnection:
        """A connected connection, waiting for a free one while all are in use."""
        if self._slots.locked():
            try:
                async with asyncio.timeout(self.timeout):
                    await self._slots.acquire()
            except TimeoutError as exc:
                raise RedisConnectionError(
                    f"no Redis connection became free within {self.timeout} s: all "
                    f"{self.max_connections} connections of the pool are in use; raise the "
                    "pool's max_connections or lower the number of runs per worker"
                ) from exc
        else:
            await self._slots.acquire()  # a free slot: returns without suspending
        try:
            connection: AbstractConnection = self.get_available_connection()  # type: ignore[no-untyped-call]
        except BaseException:
            self._slots.release()
            raise
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        """Return ``connection`` to the pool and wake one waiting checkout."""
        try:
            self._in_use_connections.remove(connection)
        except KeyError:
            return  # not checked out from this pool (released twice): nothing to give back
        try:
            if connection.should_reconnect():  # type: ignore[no-untyped-call]
                await connection.disconnect()
        finally:
            self._available_connections.append(connection)
            self._slots.release()
