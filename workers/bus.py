"""The event bus: every event of a run, live over Redis pub/sub and replayable from a stream.

For an invocation ``I`` and the prefix ``agent-runner`` (configurable):

- ``agent-runner:events:I``   pub/sub channel; each message is one event's JSON. At-most-once:
                              a subscriber that is not connected when an event is published
                              misses it.
- ``agent-runner:stream:I``   a Redis Stream, capped (``MAXLEN ~``) and expiring; each entry has
                              one field, ``event``, holding the same JSON. Read it from ``0`` to
                              replay, or with ``XREAD BLOCK`` to follow.
- ``agent-runner:cancel:I``   a key set (with a TTL) when someone asked the run to stop.
- ``agent-runner:control:I``  pub/sub channel that wakes the run when a cancel is requested
                              (workers listen with :mod:`workers.cancel_watch`).

:meth:`EventBus.publish` writes the stream entry, refreshes the expiry and publishes on the
channel in one Lua script: one round trip, atomic, and the stream entry exists before any pub/sub
subscriber hears of the event. docs/events.md describes the wire format for other languages.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions

from runner_core.errors import AgentRunnerError
from runner_core.events import Event

__all__ = [
    "DEFAULT_PREFIX",
    "STREAM_FIELD",
    "EventBus",
    "EventBusError",
    "EventBusUnavailableError",
    "cancel_key",
    "control_channel",
    "describe_redis",
    "events_channel",
    "stream_key",
]

DEFAULT_PREFIX = "agent-runner"
#: The one field of every stream entry; its value is the event JSON.
STREAM_FIELD = "event"
#: How long a cancel request is remembered when the run has not picked it up.
CANCEL_TTL_S = 3600
#: What is published on the control channel to ask a run to stop.
CANCEL_MESSAGE = "cancel"

T = TypeVar("T")


class EventBusError(AgentRunnerError):
    """The event bus failed: Redis answered with an error, or stored events are unusable."""


class EventBusUnavailableError(EventBusError, ConnectionError):
    """Redis could not be reached. The message names the host and port."""


def events_channel(invocation_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The pub/sub channel carrying an invocation's events: ``{prefix}:events:{invocation_id}``."""
    return f"{prefix}:events:{invocation_id}"


def stream_key(invocation_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The capped stream holding an invocation's events: ``{prefix}:stream:{invocation_id}``."""
    return f"{prefix}:stream:{invocation_id}"


def cancel_key(invocation_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The key that marks a cancel request: ``{prefix}:cancel:{invocation_id}``."""
    return f"{prefix}:cancel:{invocation_id}"


def control_channel(invocation_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The channel that wakes a run on a cancel request: ``{prefix}:control:{invocation_id}``."""
    return f"{prefix}:control:{invocation_id}"


def describe_redis(client: Any) -> str:
    """Where a redis-py client (sync or asyncio) connects, as ``host:port/db`` or a socket path."""
    kwargs: dict[str, Any] = getattr(client.connection_pool, "connection_kwargs", {})
    if "path" in kwargs:
        return f"unix:{kwargs['path']}"
    host = kwargs.get("host", "localhost")
    port = kwargs.get("port", 6379)
    return f"{host}:{port}/{kwargs.get('db', 0)}"


def unavailable(client: Any, exc: BaseException) -> EventBusUnavailableError:
    """The error for a Redis that cannot be reached, naming where it was expected."""
    return EventBusUnavailableError(
        f"cannot reach Redis at {describe_redis(client)} for events ({exc}). Start redis-server "
        "there, or point AGENT_RUNNER_REDIS_URL at a running Redis."
    )


# KEYS[1] stream, ARGV: event JSON, channel, maxlen, ttl seconds.
# XADD before PUBLISH, so a subscriber that hears of an event can always find it in the stream.
_PUBLISH_LUA = """
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'event', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return redis.call('PUBLISH', ARGV[2], ARGV[1])
"""


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def decode_entry(fields: dict[Any, Any], *, where: str) -> Event:
    """The event held by one stream entry's fields.

    Raises:
        EventBusError: the entry has no ``event`` field or it is not a valid event. Corrupt
            entries are reported, never skipped, so a reader can never silently lose an event.
    """
    raw = fields.get(STREAM_FIELD, fields.get(STREAM_FIELD.encode()))
    if raw is None:
        raise EventBusError(f"stream entry {where} has no {STREAM_FIELD!r} field: {fields!r}")
    try:
        return Event.from_json(raw)
    except ValueError as exc:
        raise EventBusError(f"stream entry {where} does not hold a valid event: {exc}") from exc


class EventBus:
    """Publishes events of runs and carries cancel requests, over one Redis.

    Args:
        redis: an asyncio redis-py client; the bus never closes it (whoever opened it does).
        prefix: the first part of every channel and key name.
        stream_maxlen: roughly how many entries each invocation's stream keeps (``MAXLEN ~``).
        stream_ttl_s: seconds a stream lives after its last event.

    Every method raises :class:`EventBusUnavailableError` when Redis cannot be reached and
    :class:`EventBusError` when it answers with an error.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        stream_maxlen: int = 10000,
        stream_ttl_s: int = 3600,
    ) -> None:
        if stream_maxlen < 1:
            raise ValueError(f"stream_maxlen must be >= 1, got {stream_maxlen}")
        if stream_ttl_s < 1:
            raise ValueError(f"stream_ttl_s must be >= 1, got {stream_ttl_s}")
        self.redis = redis
        self.prefix = prefix
        self.stream_maxlen = stream_maxlen
        self.stream_ttl_s = stream_ttl_s
        self._publish_script = redis.register_script(_PUBLISH_LUA)

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        try:
            return await operation()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            raise unavailable(self.redis, exc) from exc
        except redis.exceptions.RedisError as exc:
            raise EventBusError(f"Redis at {describe_redis(self.redis)} failed: {exc}") from exc

    async def publish(self, event: Event) -> None:
        """Append ``event`` to its invocation's stream and publish it on its channel, atomically.

        Publishing the same event twice writes it twice; readers drop the repeat by ``seq``.
        """
        payload = event.to_json()
        stream = stream_key(event.invocation_id, self.prefix)
        channel = events_channel(event.invocation_id, self.prefix)
        await self._call(
            lambda: self._publish_script(
                keys=[stream],
                args=[payload, channel, self.stream_maxlen, self.stream_ttl_s],
            )
        )

    async def _last_event(self, invocation_id: str) -> Event | None:
        key = stream_key(invocation_id, self.prefix)
        entries = await self._call(lambda: self.redis.xrevrange(key, count=1))
        if not entries:
            return None
        entry_id, fields = entries[0]
        return decode_entry(fields or {}, where=f"{key} {_text(entry_id)}")

    async def last_seq(self, invocation_id: str) -> int | None:
        """The ``seq`` of the newest event in the invocation's stream, or None if it has none."""
        event = await self._last_event(invocation_id)
        return None if event is None else event.seq

    async def completion(self, invocation_id: str) -> Event | None:
        """The invocation's ``runner.completion`` event if it was published and has not expired."""
        event = await self._last_event(invocation_id)
        return event if event is not None and event.is_runner_completion() else None

    async def request_cancel(self, invocation_id: str) -> None:
        """Ask a run to stop: remember the request (for a run not yet waiting) and wake it."""
        key = cancel_key(invocation_id, self.prefix)
        channel = control_channel(invocation_id, self.prefix)

        async def send() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(key, CANCEL_MESSAGE, ex=CANCEL_TTL_S)
                pipe.publish(channel, CANCEL_MESSAGE)
                await pipe.execute()

        await self._call(send)
