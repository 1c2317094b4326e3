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
- ``agent-runner:owner:I``    the identity (app, user, session) the invocation ID is bound to,
                              set by its first claim or publish; a day, refreshed by publishes.
- ``agent-runner:attempts:I`` how many deliveries of the run took its session (written by
                              :mod:`workers.session_lock`); present once a worker started it.
- ``agent-runner:submitted:I`` set (with a TTL) by :func:`workers.client.submit` just before it
                              sends the run.

The names are built by :mod:`runner_core.wire` (re-exported here), their one owner. On Redis
Cluster (a ``RedisCluster`` client) the keys of a run carry its session's hash tag, found through
:mod:`workers.locator`, and events go out on a sharded channel (``SPUBLISH``, Redis 7+; plain
``PUBLISH`` on an older server): docs/workers.md, "Redis Cluster".

An invocation is *known* when its stream, its attempts key or its submitted key exists
(:func:`known_keys`): readers use that to tell a mistyped ID from a run that has not started.

:meth:`EventBus.publish` writes the stream entry, refreshes the expiry and publishes on the
channel in one Lua script: one round trip, atomic, and the stream entry exists before any pub/sub
subscriber hears of the event. The same script refuses the write (nothing is written) when the
event's identity is not the invocation's owner, or when a fenced publish's lease is no longer
held by its delivery (docs/workers.md, "Ownership and fencing").
docs/events.md describes the wire format for other languages.

Errors::

    AgentRunnerError
    ├── EventBusError                Redis answered with an error, or stored events are unusable
    │   └── EventBusUnavailableError Redis could not be reached (also a ConnectionError)
    └── InvalidRequestError
        └── UnknownInvocationError   no run with this invocation ID is known
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.exceptions

from runner_core.errors import (
    AgentRunnerError,
    FencedError,
    InvalidRequestError,
    InvocationOwnedError,
)
from runner_core.events import COMPLETION_TYPE, Event, RunCompletionEvent, decode_event
from runner_core.wire import (
    CANCEL_MESSAGE,
    CANCEL_TTL_S,
    DEFAULT_EVENT_TTL_S,
    DEFAULT_STREAM_MAXLEN,
    OWNER_TTL_S,
    STREAM_FIELD,
    attempts_key,
    cancel_key,
    control_channel,
    events_channel,
    known_keys,
    locator_key,
    owner_key,
    stream_key,
    submitted_key,
)
from runner_core.wire import DEFAULT_EVENTS_PREFIX as DEFAULT_PREFIX
from session_backends.redis_target import AsyncRedis

from .locator import InvocationLocator

__all__ = [
    "DEFAULT_PREFIX",
    "STREAM_FIELD",
    "EventBus",
    "EventBusError",
    "EventBusUnavailableError",
    "Fence",
    "UnknownInvocationError",
    "attempts_key",
    "cancel_key",
    "control_channel",
    "describe_redis",
    "events_channel",
    "invocation_owned",
    "known_keys",
    "owner_identity",
    "owner_key",
    "stream_key",
    "submitted_key",
]

T = TypeVar("T")


class EventBusError(AgentRunnerError):
    """The event bus failed: Redis answered with an error, or stored events are unusable."""


class EventBusUnavailableError(EventBusError, ConnectionError):
    """Redis could not be reached. The message names the host and port."""


class UnknownInvocationError(InvalidRequestError, LookupError):
    """No run with this invocation ID is known: no worker took it, no events of it are stored
    and this project's client did not record submitting it (see :func:`known_keys`)."""


def unknown_invocation(
    invocation_id: str, *, waited_s: float | None = None
) -> UnknownInvocationError:
    """The error for an invocation ID that is not known, saying what was checked."""
    waited = "" if not waited_s else f" after waiting {waited_s:g} s"
    return UnknownInvocationError(
        f"no run with invocation ID {invocation_id!r} is known{waited}: no worker has taken it, "
        "no events of it are stored (they expire AGENT_RUNNER_EVENT_TTL_S after a run's last "
        "event) and workers.client.submit did not record sending it. Check the ID (submit "
        "prints it); a run sent with send_task from elsewhere becomes known only when a worker "
        "takes it, so wait longer for one that is still queued."
    )


def owner_identity(app_name: str, user_id: str, session_id: str) -> str:
    """How an invocation's owner (app, user, session) is written in its owner key."""
    return json.dumps([app_name, user_id, session_id], separators=(",", ":"))


def invocation_owned(invocation_id: str, owner: bytes | str, identity: str) -> InvocationOwnedError:
    """The refusal of a delivery or event of ``identity`` for an ID bound to ``owner``."""
    return InvocationOwnedError(
        f"invocation ID {invocation_id!r} belongs to another app/user/session than "
        f"{identity} (the first to claim it); this delivery was refused and wrote nothing. "
        "Invocation IDs are task IDs: let Celery generate them (or use a fresh UUID)."
    )


@dataclass(frozen=True, slots=True)
class Fence:
    """What a fenced publish checks: the session lease key must still hold ``holder`` (this
    delivery's invocation ID and fencing token). Built by
    :meth:`workers.session_lock.SessionLocks.fence`."""

    lease_key: str
    holder: str


def describe_redis(client: Any) -> str:
    """Where a redis-py client (sync or asyncio) connects, as ``host:port/db`` or a socket path
    (``cluster via host:port`` for a Redis Cluster client)."""
    pool = getattr(client, "connection_pool", None)
    if pool is None:  # a RedisCluster: no single pool
        nodes = getattr(getattr(client, "nodes_manager", None), "startup_nodes", {}) or {}
        return f"cluster via {', '.join(nodes) or 'its startup nodes'}"
    kwargs: dict[str, Any] = getattr(pool, "connection_kwargs", {})
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


# KEYS: stream, owner, and for a fenced publish the session lease.
# ARGV: channel, maxlen, ttl seconds, the events' identity, owner ttl seconds, the lease holder
#       this publish needs ('' when unfenced), stream field, the publish command (PUBLISH, or
#       SPUBLISH on Redis Cluster: the channel is in the keys' slot), then one event JSON per
#       event, in order (one round trip for the events a run handed out meanwhile).
# Returns {-1, owner} for another identity's invocation, {-2} when the lease is not held (both
# write nothing), else {1, subscribers of the last event}.
# Each event: XADD before PUBLISH, so a subscriber that hears of an event can always find it in
# the stream.
_PUBLISH_LUA = """
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[4] then return {-1, owner} end
if ARGV[6] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[6] then return {-2} end
redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[5])
local heard = 0
for i = 9, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', ARGV[7], ARGV[i])
  heard = redis.call(ARGV[8], ARGV[1], ARGV[i])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {1, heard}
"""


def with_completion_type(lua: str) -> str:
    """A script's source with ``COMPLETION_TYPE`` as the Lua string of the completion's type,
    so the scripts that ask "has this run finished?" use the name events.py owns."""
    return lua.replace("COMPLETION_TYPE", json.dumps(COMPLETION_TYPE))


# The newest event of KEYS[1] (a stream): ``last_seq`` (-1 if the stream is empty, false if the
# entry is unreadable), ``last_type``, ``last_raw`` and ``finished`` (it is the completion).
# Shared by the scripts below; ARGV[1] is the stream field.
_LAST_EVENT_LUA = """
local last_seq, last_type, last_raw = -1, nil, nil
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if newest[1] then
  local fields = newest[1][2]
  last_raw = ''
  for i = 1, #fields, 2 do
    if fields[i] == ARGV[1] then last_raw = fields[i + 1] end
  end
  local ok, event = pcall(cjson.decode, last_raw)
  if ok and type(event) == 'table' and type(event.seq) == 'number' then
    last_seq, last_type = event.seq, event.type
  else
    last_seq = false
  end
end
local finished = last_type == COMPLETION_TYPE
"""

# KEYS: stream, attempts, owner. ARGV: stream field, event JSON, channel, maxlen, ttl seconds,
# the event's seq, the event's identity, owner ttl seconds, the publish command (as above).
# Returns {-1, owner} for another identity's invocation (as _PUBLISH_LUA). Else publishes only
# for a run no delivery has started (no attempts key) when the event is the next one of the
# stream (which does not end with the completion): {1} if published, {0} if not.
_PUBLISH_BEFORE_START_LUA = with_completion_type(
    _LAST_EVENT_LUA
    + """
local owner = redis.call('GET', KEYS[3])
if owner and owner ~= ARGV[7] then return {-1, owner} end
if redis.call('EXISTS', KEYS[2]) == 1 or last_seq == false then return {0} end
if finished or last_seq + 1 ~= tonumber(ARGV[6]) then return {0} end
redis.call('SET', KEYS[3], ARGV[7], 'EX', ARGV[8])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call(ARGV[9], ARGV[3], ARGV[2])
return {1}
"""
)

# KEYS: known_keys (stream, attempts, submitted), cancel key. ARGV: stream field, control
# channel, cancel message, ttl seconds, "1" to refuse unknown invocations.
# Returns {2, completion JSON} for a finished run (nothing is set), {0} for an unknown one
# when refused, else sets the key, publishes the wake-up and returns {1}.
_CANCEL_LUA = with_completion_type(
    _LAST_EVENT_LUA
    + """
if finished then return {2, last_raw} end
if ARGV[5] == '1' and redis.call('EXISTS', KEYS[1], KEYS[2], KEYS[3]) == 0 then return {0} end
redis.call('SET', KEYS[4], ARGV[3], 'EX', ARGV[4])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return {1}
"""
)


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
        return decode_event(raw)
    except ValueError as exc:
        raise EventBusError(f"stream entry {where} does not hold a valid event: {exc}") from exc


def decode_completion(raw: bytes | str, *, where: str) -> RunCompletionEvent:
    """The ``runner.completion`` a script found as the newest entry of a stream.

    Raises:
        EventBusError: the entry is not a valid completion.
    """
    event = decode_entry({STREAM_FIELD: raw}, where=where)
    if event.type != "runner.completion":
        raise EventBusError(f"{where}: expected a runner.completion, got {event.type}")
    return event


class CancelScript:
    """The cancel request, in one script, for sync and asyncio redis-py clients alike.

    ``keys``/``args`` build the call; :meth:`outcome` reads its reply.
    """

    source = _CANCEL_LUA

    @staticmethod
    def keys(invocation_id: str, prefix: str) -> list[str]:
        return [*known_keys(invocation_id, prefix), cancel_key(invocation_id, prefix)]

    @staticmethod
    def args(invocation_id: str, prefix: str, *, require_known: bool) -> list[str | int]:
        return [
            STREAM_FIELD,
            control_channel(invocation_id, prefix),
            CANCEL_MESSAGE,
            CANCEL_TTL_S,
            "1" if require_known else "0",
        ]

    @staticmethod
    def outcome(reply: Any, invocation_id: str, prefix: str) -> RunCompletionEvent | None:
        """None when the request was made; the completion of a run that already finished.

        Raises:
            UnknownInvocationError: the invocation is not known (only with ``require_known``).
        """
        code = int(reply[0])
        if code == 0:
            raise unknown_invocation(invocation_id)
        if code == 2:
            return decode_completion(reply[1], where=stream_key(invocation_id, prefix))
        return None


class EventBus:
    """Publishes events of runs and carries cancel requests, over one Redis or a Redis Cluster.

    Args:
        redis: an asyncio redis-py client (``redis.asyncio.Redis``, or ``RedisCluster`` for a
            cluster: then run keys carry their session's hash tag); the bus never closes it
            (whoever opened it does).
        prefix: the first part of every channel and key name.
        stream_maxlen: roughly how many entries each invocation's stream keeps (``MAXLEN ~``).
        stream_ttl_s: seconds a stream lives after its last event.
        locator: how invocations are bound to their sessions on a cluster (default: a new
            :class:`~workers.locator.InvocationLocator` on ``redis``; share one with the
            session locks so a run's binding is looked up once).

    Every method raises :class:`EventBusUnavailableError` when Redis cannot be reached and
    :class:`EventBusError` when it answers with an error.
    """

    def __init__(
        self,
        redis: AsyncRedis,
        *,
        prefix: str = DEFAULT_PREFIX,
        stream_maxlen: int = DEFAULT_STREAM_MAXLEN,
        stream_ttl_s: int = DEFAULT_EVENT_TTL_S,
        locator: InvocationLocator | None = None,
    ) -> None:
        if stream_maxlen < 1:
            raise ValueError(f"stream_maxlen must be >= 1, got {stream_maxlen}")
        if stream_ttl_s < 1:
            raise ValueError(f"stream_ttl_s must be >= 1, got {stream_ttl_s}")
        self.redis = redis
        self.prefix = prefix
        self.stream_maxlen = stream_maxlen
        self.stream_ttl_s = stream_ttl_s
        self.locator = locator or InvocationLocator(redis, prefix=prefix)
        self.cluster = self.locator.cluster
        #: The command events go out with: PUBLISH, or on a cluster SPUBLISH when the server
        #: has it (asked once, at the first publish).
        self._publish_command: str | None = None if self.cluster else "PUBLISH"
        self._publish_script = redis.register_script(_PUBLISH_LUA)
        self._publish_before_start_script = redis.register_script(_PUBLISH_BEFORE_START_LUA)
        self._cancel_script = redis.register_script(CancelScript.source)

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        try:
            return await operation()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            raise unavailable(self.redis, exc) from exc
        except redis.exceptions.RedisError as exc:
            raise EventBusError(f"Redis at {describe_redis(self.redis)} failed: {exc}") from exc

    async def publish_command(self) -> str:
        """``PUBLISH`` on one Redis; on a cluster ``SPUBLISH`` (sharded pub/sub: the message
        goes only to the nodes of the channel's slot) when the server is Redis 7 or newer,
        else ``PUBLISH``."""
        if self._publish_command is None:
            info = await self._call(lambda: self.redis.info("server"))
            major = str(info.get("redis_version", "0")).split(".")[0]
            sharded = major.isdigit() and int(major) >= 7
            self._publish_command = "SPUBLISH" if sharded else "PUBLISH"
        return self._publish_command

    async def _bind(self, invocation_id: str, identity: str) -> str:
        """The tag of the invocation's keys for a publish of ``identity`` (``""`` on one
        Redis); on a cluster the invocation is bound to that session first.

        Raises:
            InvocationOwnedError: on a cluster, the ID is bound to another session.
        """
        if not self.cluster:
            return ""
        app_name, user_id, session_id = json.loads(identity)
        tag, other = await self._call(
            lambda: self.locator.bind(invocation_id, app_name, user_id, session_id)
        )
        if other is not None:
            raise invocation_owned(invocation_id, other, identity)
        return tag

    async def publish(self, event: Event, *, identity: str, fence: Fence | None = None) -> None:
        """Append ``event`` to its invocation's stream and publish it on its channel, atomically.

        The invocation ID is bound to the run's (app, user, session) ``identity``
        (:func:`owner_identity`) by the first publish or claim; with ``fence``, the session
        lease must still hold this delivery's token. Both are checked in the same script as
        the write. Publishing the same event twice writes it twice; readers drop the repeat by
        ``seq``.

        Raises:
            InvocationOwnedError: the invocation ID belongs to another identity.
            FencedError: ``fence`` is no longer held (another delivery took the run).
            Nothing is written in either case.
        """
        await self.publish_many([event], identity=identity, fence=fence)

    async def publish_many(
        self, events: Sequence[Event], *, identity: str, fence: Fence | None = None
    ) -> None:
        """:meth:`publish` for several events of one invocation, in order, in one round trip.

        All or nothing: the checks of :meth:`publish` pass for the batch or none of it is
        written. Each event is still its own stream entry and its own message on the channel,
        so readers see exactly what one :meth:`publish` per event would have written.

        Raises:
            ValueError: ``events`` is empty or spans more than one invocation.
            InvocationOwnedError, FencedError: as :meth:`publish`.
        """
        if not events:
            raise ValueError("publish_many needs at least one event")
        invocation_id = events[0].invocation_id
        if any(e.invocation_id != invocation_id for e in events):
            raise ValueError(
                f"publish_many publishes the events of one invocation; got events of "
                f"{sorted({e.invocation_id for e in events})}"
            )
        tag = await self._bind(invocation_id, identity) if self.cluster else ""
        keys = [
            stream_key(invocation_id, self.prefix, tag),
            owner_key(invocation_id, self.prefix, tag),
        ]
        if fence is not None:
            keys.append(fence.lease_key)
        args: list[str | int] = [
            events_channel(invocation_id, self.prefix, tag),
            self.stream_maxlen,
            self.stream_ttl_s,
            identity,
            max(OWNER_TTL_S, self.stream_ttl_s),
            "" if fence is None else fence.holder,
            STREAM_FIELD,
            self._publish_command or await self.publish_command(),
        ]
        args.extend(event.to_json() for event in events)
        reply = await self._call(lambda: self._publish_script(keys=keys, args=args))
        if int(reply[0]) == -1:
            raise invocation_owned(invocation_id, reply[1], identity)
        if int(reply[0]) == -2:
            seqs = ", ".join(str(e.seq) for e in events)
            raise FencedError(
                f"run {invocation_id} no longer holds its session lease ({keys[-1]}): another "
                f"delivery took the run over. Event seq {seqs} was not published."
            )

    async def publish_before_start(self, event: Event, *, identity: str) -> bool:
        """Publish an event about a run that has not started yet (``run.queued``), atomically
        and only while that holds: no delivery of the run took its session and ``event.seq``
        follows the newest event of its stream (so a delivery that started meanwhile, or a
        twin delivery that published first, keeps ``seq`` gap-free and unique).

        Returns:
            Whether the event was published.

        Raises:
            InvocationOwnedError: the invocation ID belongs to another identity (nothing is
                written), as for :meth:`publish`.
        """
        invocation_id = event.invocation_id
        tag = await self._bind(invocation_id, identity) if self.cluster else ""
        keys = [
            stream_key(invocation_id, self.prefix, tag),
            attempts_key(invocation_id, self.prefix, tag),
            owner_key(invocation_id, self.prefix, tag),
        ]
        args: list[str | int] = [
            STREAM_FIELD,
            event.to_json(),
            events_channel(invocation_id, self.prefix, tag),
            self.stream_maxlen,
            self.stream_ttl_s,
            event.seq,
            identity,
            max(OWNER_TTL_S, self.stream_ttl_s),
            self._publish_command or await self.publish_command(),
        ]
        reply = await self._call(lambda: self._publish_before_start_script(keys=keys, args=args))
        if int(reply[0]) == -1:
            raise invocation_owned(invocation_id, reply[1], identity)
        return int(reply[0]) == 1

    async def locate(self, invocation_id: str) -> str | None:
        """The tag of the invocation's keys: ``""`` on one Redis; on a cluster its session's
        tag, or None while no submit, claim or publish has bound it to a session."""
        return await self._call(lambda: self.locator.locate(invocation_id))

    async def _last_event(self, invocation_id: str) -> Event | None:
        tag = await self.locate(invocation_id)
        if tag is None:
            return None
        key = stream_key(invocation_id, self.prefix, tag)
        entries = await self._call(lambda: self.redis.xrevrange(key, count=1))
        if not entries:
            return None
        entry_id, fields = entries[0]
        return decode_entry(fields or {}, where=f"{key} {_text(entry_id)}")

    async def last_seq(self, invocation_id: str) -> int | None:
        """The ``seq`` of the newest event in the invocation's stream, or None if it has none."""
        event = await self._last_event(invocation_id)
        return None if event is None else event.seq

    async def completion(self, invocation_id: str) -> RunCompletionEvent | None:
        """The invocation's ``runner.completion`` event if it was published and has not expired."""
        event = await self._last_event(invocation_id)
        return event if event is not None and event.type == "runner.completion" else None

    async def is_known(self, invocation_id: str) -> bool:
        """Whether the invocation is known (see :func:`known_keys`; on a cluster: whether it
        is bound to a session, :func:`~runner_core.wire.locator_key`)."""
        if self.cluster:
            key = locator_key(invocation_id, self.prefix)
            return bool(await self._call(lambda: self.redis.exists(key)))
        keys = known_keys(invocation_id, self.prefix)
        return bool(await self._call(lambda: self.redis.exists(*keys)))

    async def has_started(self, invocation_id: str) -> bool:
        """Whether a delivery of the run took its session (its attempts counter exists)."""
        tag = await self.locate(invocation_id)
        if tag is None:
            return False
        key = attempts_key(invocation_id, self.prefix, tag)
        return bool(await self._call(lambda: self.redis.exists(key)))

    async def request_cancel(
        self, invocation_id: str, *, require_known: bool = False
    ) -> RunCompletionEvent | None:
        """Ask a run to stop: remember the request (for a run not yet waiting) and wake it.

        Returns:
            None when the request was made; the run's ``runner.completion`` if it had already
            finished (then nothing is recorded: there is nothing to stop).

        Raises:
            UnknownInvocationError: with ``require_known``, the invocation is not known
                (nothing is recorded).

        On a cluster the run's stream and the cancel key are in different slots, so the
        "finished?" check and the request are two steps: a run that finishes between them
        gets a request nobody reads (it expires), and the caller None instead of the
        completion.
        """
        if self.cluster:
            return await self._request_cancel_on_cluster(invocation_id, require_known)
        keys = CancelScript.keys(invocation_id, self.prefix)
        args = CancelScript.args(invocation_id, self.prefix, require_known=require_known)
        reply = await self._call(lambda: self._cancel_script(keys=keys, args=args))
        return CancelScript.outcome(reply, invocation_id, self.prefix)

    async def _request_cancel_on_cluster(
        self, invocation_id: str, require_known: bool
    ) -> RunCompletionEvent | None:
        tag = await self.locate(invocation_id)
        if tag is None and require_known:
            raise unknown_invocation(invocation_id)
        if tag is not None:
            done = await self.completion(invocation_id)
            if done is not None:
                return done
        key = cancel_key(invocation_id, self.prefix)
        channel = control_channel(invocation_id, self.prefix)
        await self._call(lambda: self.redis.set(key, CANCEL_MESSAGE, ex=CANCEL_TTL_S))
        await self._call(lambda: self.redis.publish(channel, CANCEL_MESSAGE))
        return None
