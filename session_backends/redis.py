"""``RedisSessionService``: sessions in Redis (``redis.asyncio``).

Key layout (``P`` is ``key_prefix``, default ``agent-runner``; ``{A/U}`` is the hash tag made
of the app name and user ID joined by ``/``, a character IDs cannot hold, so no two users share
a tag and one user's keys share a cluster slot)::

    P:session:{A/U}/S          hash   created_at, updated_at, event_count, last_user, call_id,
                                      summary_call_id
    P:state:{A/U}/S            hash   session state: key -> JSON value
    P:events:{A/U}/S           list   event JSON, in append order
    P:event_ids:{A/U}/S        zset   event ID -> append position (dedupe, eviction)
    P:summaries:{A/U}/S        hash   filter_key -> summary JSON
    P:summary_counts:{A/U}/S   hash   filter_key -> the summary's event_count (compare-and-set)
    P:sessions:{A/U}           zset   the user's session IDs, scored by creation time
    P:fence:{A/U}/S            string the session's fencing token (``take_fence``)
    P:user_state:{A/U}         hash   user state: key -> JSON value
    P:app_state:{A}            hash   app state: key -> JSON value

``event_count`` counts every event ever appended; ``last_user`` is the position of the latest
user message, so the event limit never evicts it. Each append is one Lua script call (one round
trip, atomic): dedupe by event ID, push the event, apply the state delta to the session, user
and app scopes, enforce the event limit, bump ``event_count`` and refresh TTLs; a fenced append
first checks the fence key in the same script. TTLs are
Redis's own (``PEXPIRE``), refreshed on writes. A read is one MULTI/EXEC pipeline.

Outages: every call rides out a Redis restart or failover for ``retry_for_s`` seconds
(connection refused or reset, timeouts, ``LOADING`` while the server reads its append-only
file, ``READONLY`` from a demoted primary), retrying with backoff through redis-py's own
:class:`~redis.asyncio.retry.Retry`. A write whose reply was lost may have landed, so every
write is safe to send twice: appends are deduplicated by event ID, and each create, append and
summary call carries a call ID the script stores beside its write (``call_id``,
``summary_call_id``), so a retried call that finds its own write reports it as its own success
instead of "already there". State deltas are applied in the append script, after the dedupe,
so they are never applied twice; the fence is checked before anything else on every attempt.

Redis Cluster (``redis+cluster://host:port``, or a ``RedisCluster`` client): every key of a
user's sessions carries the tag ``{A/U}``, so each script and each read of a session stays in
one slot. The app-state hash is shared by all users of an app and has its own slot (``{A}``),
so on a cluster the scripts cannot write it: create and append put the app-state part of their
delta into the session's ``P:app_pending:{A/U}/S`` hash instead (in the same atomic, fenced
script: an app delta is never lost, nor written by a stale holder), and the store then copies
it to ``P:app_state:{A}`` and removes what it copied. A writer that dies between the two leaves
it pending; the next read of that session (or its next append with an app delta) finishes the
copy. Until then other sessions do not see it: app state on a cluster is eventually, not
atomically, consistent with the events that changed it. Reads of a session read the app state
in a second round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from runner_core.errors import (
    ConfigurationError,
    CorruptSessionDataError,
    SessionBackendError,
)
from runner_core.events import Event, state_delta_of
from runner_core.session import (
    DEFAULT_EVENT_LIMIT,
    Session,
    SessionKey,
    StateDeltaParts,
    Summary,
    merge_state,
    split_state_delta,
    validate_identifier,
)
from runner_core.store_support import (
    already_exists,
    apply_append,
    check_appendable,
    check_delta,
    check_event_limit,
    check_fence,
    check_num_events,
    check_ttl,
    decode_events,
    decode_json_value,
    decode_summary,
    decode_time,
    encode_json,
    fenced,
    loaded_session,
    new_session,
    route_initial_state,
    session_key,
    session_not_found,
    summary_session_not_found,
    utcnow,
)

from .redis_pool import WaitingConnectionPool
from .redis_target import cluster_node_url, is_cluster_url

__all__ = ["DEFAULT_KEY_PREFIX", "DEFAULT_RETRY_FOR_S", "RedisSessionService"]

T = TypeVar("T")

logger = logging.getLogger(__name__)

DEFAULT_KEY_PREFIX = "agent-runner"
#: How long a call rides out an outage by default (seconds): a restart of an append-only
#: Redis, or a failover, takes a few seconds.
DEFAULT_RETRY_FOR_S = 20.0
_KEY_PREFIX_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_HINT = "is redis-server running and reachable there? Check AGENT_RUNNER_SESSION_URL"
#: Errors of a server that is restarting, loading its data (``LOADING`` is a
#: BusyLoadingError, a ConnectionError) or failing over (``READONLY``): worth trying again.
_TRANSIENT: tuple[type[RedisError], ...] = (RedisConnectionError, RedisTimeoutError, ReadOnlyError)
#: Between attempts: 50 ms, 100, 200, 400, then 400-800 ms, half of it random so that the
#: runs of a worker do not knock on the server in step.
_BACKOFF = EqualJitterBackoff(cap=0.8, base=0.05)

# KEYS: session, state, events, event_ids, summaries, summary_counts, user_state, app_state,
#       sessions
# ARGV: created_at, session_id, created_score, session_ttl_ms, user_ttl_ms, app_ttl_ms,
#       n_session, n_user, n_app, call_id, then the key/value pairs of the three deltas
# Returns {0} when the session exists (unless this very call created it: a retry after a lost
# reply), else {1, user state, app state}.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'call_id') ~= ARGV[10] then return {0} end
  return {1, redis.call('HGETALL', KEYS[7]), redis.call('HGETALL', KEYS[8])}
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
redis.call('HSET', KEYS[1], 'created_at', ARGV[1], 'updated_at', ARGV[1],
           'event_count', 0, 'last_user', -1, 'call_id', ARGV[10])
local i = 11
local function put(key, n, ttl)
  if n > 0 then
    redis.call('HSET', key, unpack(ARGV, i, i + 2 * n - 1))
    i = i + 2 * n
    if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
  end
end
put(KEYS[2], tonumber(ARGV[7]), 0)
put(KEYS[7], tonumber(ARGV[8]), tonumber(ARGV[5]))
put(KEYS[8], tonumber(ARGV[9]), tonumber(ARGV[6]))
redis.call('ZADD', KEYS[9], ARGV[3], ARGV[2])
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  redis.call('PEXPIRE', KEYS[9], ttl)
end
return {1, redis.call('HGETALL', KEYS[7]), redis.call('HGETALL', KEYS[8])}
"""

# KEYS: session, state, events, event_ids, summaries, summary_counts, user_state, app_state,
#       sessions, fence
# ARGV: event_id, event_json, is_user, updated_at, event_limit, session_ttl_ms, user_ttl_ms,
#       app_ttl_ms, n_session, n_user, n_app, fence token ('' for an unfenced append), call_id,
#       then the key/value pairs of the three deltas
# Returns {1, event_count} when appended (or when this very call appended it: a retry after a
# lost reply), {0, event_count} for a known event ID, {-1} when the session does not exist,
# {-2, fence holder} when the fence is not the given token.
_APPEND = """
if ARGV[12] ~= '' then
  local holder = redis.call('GET', KEYS[10])
  if holder ~= ARGV[12] then return {-2, holder or ''} end
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
if redis.call('ZSCORE', KEYS[4], ARGV[1]) then
  local count = tonumber(redis.call('HGET', KEYS[1], 'event_count'))
  if redis.call('HGET', KEYS[1], 'call_id') == ARGV[13] then return {1, count} end
  return {0, count}
end
local position = redis.call('HINCRBY', KEYS[1], 'event_count', 1) - 1
local length = redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[4], position, ARGV[1])
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], 'updated_at', ARGV[4], 'last_user', position, 'call_id', ARGV[13])
else
  redis.call('HSET', KEYS[1], 'updated_at', ARGV[4], 'call_id', ARGV[13])
end
local i = 14
local function put(key, n, ttl)
  if n > 0 then
    redis.call('HSET', key, unpack(ARGV, i, i + 2 * n - 1))
    i = i + 2 * n
    if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
  end
end
put(KEYS[2], tonumber(ARGV[9]), 0)
put(KEYS[7], tonumber(ARGV[10]), tonumber(ARGV[7]))
put(KEYS[8], tonumber(ARGV[11]), tonumber(ARGV[8]))
-- The eviction rule, a copy of runner_core.session.first_kept_position (the conformance suite
-- checks it against that function).
local limit = tonumber(ARGV[5])
if limit > 0 and length > limit then
  local first = position + 1 - length
  local start = length - limit
  local last_user = tonumber(redis.call('HGET', KEYS[1], 'last_user')) or -1
  if last_user >= first and last_user < first + start then start = last_user - first end
  if start > 0 then
    redis.call('LTRIM', KEYS[3], start, -1)
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', first + start - 1)
  end
end
local ttl = tonumber(ARGV[6])
if ttl > 0 then
  for k = 1, 6 do redis.call('PEXPIRE', KEYS[k], ttl) end
  redis.call('PEXPIRE', KEYS[9], ttl)
  redis.call('PEXPIRE', KEYS[10], ttl)
end
return {1, position + 1}
"""

# KEYS: fence. ARGV: token, session_ttl_ms. Returns 1 when the fence is the token now, else
# the greater token that holds it.
_TAKE_FENCE = """
local holder = redis.call('GET', KEYS[1])
if holder and tonumber(holder) > tonumber(ARGV[1]) then return holder end
redis.call('SET', KEYS[1], ARGV[1])
if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""

# open_session in one script: take the fence, create the session if it is missing, read it.
# KEYS: session, state, events, event_ids, summaries, summary_counts, user_state, app_state,
#       sessions, fence
# ARGV: fence token ('' for none), session_ttl_ms, create ('1' or '0'), created_at,
#       session_id, created_score, call_id
# Returns {-2, holder} when a greater token holds the fence (nothing else done), {0} when the
# session is missing and not created, else {1, session hash, state hash, events, summaries
# hash, user state hash, app state hash} (the reads of get_session).
_OPEN = """
local ttl = tonumber(ARGV[2])
if ARGV[1] ~= '' then
  local holder = redis.call('GET', KEYS[10])
  if holder and tonumber(holder) > tonumber(ARGV[1]) then return {-2, holder} end
  redis.call('SET', KEYS[10], ARGV[1])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[10], ttl) end
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  if ARGV[3] ~= '1' then return {0} end
  -- create_session's writes with no initial state (see _CREATE)
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
  redis.call('HSET', KEYS[1], 'created_at', ARGV[4], 'updated_at', ARGV[4],
             'event_count', 0, 'last_user', -1, 'call_id', ARGV[7])
  redis.call('ZADD', KEYS[9], ARGV[6], ARGV[5])
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[1], ttl)
    redis.call('PEXPIRE', KEYS[9], ttl)
  end
end
return {1, redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]),
        redis.call('LRANGE', KEYS[3], 0, -1), redis.call('HGETALL', KEYS[5]),
        redis.call('HGETALL', KEYS[7]), redis.call('HGETALL', KEYS[8])}
"""

# KEYS: a session's pending app-state hash (Redis Cluster). ARGV: field, value, ... as copied to
# the app state. Removes each field that still holds the value copied (a newer append may have
# set it again meanwhile: that one is copied next time).
_SETTLE_APP_PENDING = """
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return 1
"""

# KEYS: session, summaries, summary_counts.  ARGV: filter_key, summary_json, event_count,
# call_id. Returns 1 stored (or stored by this very call: a retry after a lost reply), 0 an
# equal or newer one is there, -1 no session, -2 corrupt stored count.
_PUT_SUMMARY = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
-- The summary rule, a copy of runner_core.session.summary_replaces (checked by the suite).
local current = redis.call('HGET', KEYS[3], ARGV[1])
if current then
  local n = tonumber(current)
  if n == nil then return -2 end
  if n >= tonumber(ARGV[3]) then
    if redis.call('HGET', KEYS[1], 'summary_call_id') == ARGV[4] then return 1 end
    return 0
  end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[1], 'summary_call_id', ARGV[4])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[2], ttl)
  redis.call('PEXPIRE', KEYS[3], ttl)
end
return 1
"""


def _ms(seconds: float | None) -> int:
    return 0 if seconds is None else max(1, round(seconds * 1000))


def _delta_args(parts: StateDeltaParts) -> list[str | int]:
    args: list[str | int] = [len(parts.session), len(parts.user), len(parts.app)]
    for scope in (parts.session, parts.user, parts.app):
        for key, value in scope.items():
            args.append(key)
            args.append(encode_json(value, f"state value {key!r}"))
    return args


def _retry_option(url: str) -> tuple[str, float | None]:
    """``url`` without its ``retry_for_s`` query parameter (not one redis-py knows), and the
    parameter's value if it has one."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    values = [value for name, value in query if name == "retry_for_s"]
    if not values:
        return url, None
    try:
        seconds = float(values[-1])
    except ValueError:
        raise ConfigurationError(
            f"retry_for_s={values[-1]!r} in the Redis session store URL is not a number of "
            "seconds; use e.g. ?retry_for_s=20 (0: no retries)."
        ) from None
    rest = urlencode([(name, value) for name, value in query if name != "retry_for_s"])
    return urlunsplit(parts._replace(query=rest)), seconds


def _where_of(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix socket {parts.path}"
    where = f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
    return f"cluster via {where}" if is_cluster_url(url) else where


class RedisSessionService:
    """Sessions in Redis. See the module docstring for the key layout.

    Args:
        url: ``redis://[user:password@]host:port/db``, ``rediss://`` (TLS),
            ``unix:///path/to/socket?db=0``, or ``redis+cluster://host:port`` (``rediss+cluster``
            with TLS) for a Redis Cluster; a ``retry_for_s`` query parameter sets that
            option (``redis://host:6379/0?retry_for_s=30``).
        key_prefix: the first part of every key (letters, digits and ``._:-``).
        event_limit: events kept per session (oldest evicted first, never the latest user
            message); None or 0 keeps all. Default 1000.
        session_ttl, app_state_ttl, user_state_ttl: seconds (or timedelta) after the last write;
            None or 0 never expires.
        socket_timeout, socket_connect_timeout: seconds; they bound how long one attempt of
            a call to an unreachable or stuck server can take.
        retry_for_s: seconds a call keeps trying while the server is unreachable, restarting,
            loading its data or failing over, with backoff (0: one attempt only). Writes are
            safe to retry: a write whose reply was lost is never applied twice. None: the
            URL's ``retry_for_s`` parameter, else :data:`DEFAULT_RETRY_FOR_S` (20 s). A call
            whose server stays away longer fails with SessionBackendError.
        client: an existing ``redis.asyncio.Redis`` (or ``RedisCluster``) to use instead of
            ``url`` (not closed by :meth:`close`; it must not decode responses).
        cleanup_interval: accepted for parity with the other stores and ignored: Redis
            expires keys itself.
        max_connections: the most connections the store opens (default 256). With all of
            them busy, a call waits up to ``socket_timeout`` for one instead of failing.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        event_limit: int | None = DEFAULT_EVENT_LIMIT,
        session_ttl: float | timedelta | None = None,
        app_state_ttl: float | timedelta | None = None,
        user_state_ttl: float | timedelta | None = None,
        socket_timeout: float = 5.0,
        socket_connect_timeout: float = 2.0,
        retry_for_s: float | None = None,
        client: aioredis.Redis | RedisCluster | None = None,
        cleanup_interval: float | timedelta | None = None,
        max_connections: int = 256,
    ) -> None:
        # cleanup_interval is accepted so one set of options fits every backend; Redis expires
        # keys itself and needs no sweep.
        check_ttl(cleanup_interval, "cleanup_interval")
        if not isinstance(key_prefix, str) or not _KEY_PREFIX_RE.fullmatch(key_prefix):
            raise ConfigurationError(
                f"key_prefix {key_prefix!r} is not allowed: use 1-64 letters, digits or '._:-'."
            )
        url, url_retry_for_s = _retry_option(url)
        if retry_for_s is None:
            retry_for_s = DEFAULT_RETRY_FOR_S if url_retry_for_s is None else url_retry_for_s
        if (
            isinstance(retry_for_s, bool)
            or not isinstance(retry_for_s, int | float)
            or not (0 <= retry_for_s < float("inf"))
        ):
            raise ConfigurationError(
                f"retry_for_s must be a number of seconds >= 0 (0: no retries), got "
                f"{retry_for_s!r}."
            )
        for option, value in (
            ("socket_timeout", socket_timeout),
            ("socket_connect_timeout", socket_connect_timeout),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigurationError(
                    f"{option} must be a number of seconds > 0, got {value!r}."
                )
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or (
            max_connections < 1
        ):
            raise ConfigurationError(
                f"max_connections must be a whole number >= 1, got {max_connections!r}."
            )
        self.key_prefix = key_prefix
        self.event_limit = check_event_limit(event_limit)
        self.session_ttl = check_ttl(session_ttl, "session_ttl")
        self.app_state_ttl = check_ttl(app_state_ttl, "app_state_ttl")
        self.user_state_ttl = check_ttl(user_state_ttl, "user_state_ttl")
        self.retry_for_s = float(retry_for_s)
        # Retries forever as far as redis-py is concerned; _call stops it after retry_for_s.
        self._retry = Retry(_BACKOFF, -1, supported_errors=_TRANSIENT)
        if client is None:
            self._where = _where_of(url)
        elif isinstance(client, RedisCluster):
            self._where = "a Redis Cluster"
        else:
            conn_kwargs = client.connection_pool.connection_kwargs
            self._where = conn_kwargs.get("path") or (
                f"{conn_kwargs.get('host', 'localhost')}:{conn_kwargs.get('port', 6379)}"
            )
        self._owns_client = client is None
        if client is None and is_cluster_url(url):
            client = RedisCluster.from_url(
                cluster_node_url(url, variable="the Redis session store URL"),
                max_connections=max_connections,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_connect_timeout,
                retry=Retry(NoBackoff(), 0, supported_errors=_TRANSIENT),
                decode_responses=False,
            )
        if client is None:
            try:
                # Blocking: with every connection busy (many runs at once), a command waits
                # for one instead of failing with "Too many connections".
                pool = WaitingConnectionPool.from_url(
                    url,
                    max_connections=max_connections,
                    timeout=socket_timeout,
                    socket_timeout=socket_timeout,
                    socket_connect_timeout=socket_connect_timeout,
                    # One attempt per command here: the store retries whole calls (_call), so
                    # the retries do not nest. On a transient error the connection is dropped,
                    # so the next attempt connects afresh (to the new primary after a failover).
                    retry=Retry(NoBackoff(), 0, supported_errors=_TRANSIENT),
                    decode_responses=False,
                )
                client = aioredis.Redis.from_pool(pool)
            except ValueError as exc:
                raise ConfigurationError(f"bad Redis URL for the session store: {exc}") from exc
        self._client: aioredis.Redis | RedisCluster = client
        #: On a cluster the app state is in another slot than a session (module docstring).
        self._cluster = isinstance(client, RedisCluster)
        self._settle_app_pending = self._client.register_script(_SETTLE_APP_PENDING)
        self._create_script = self._client.register_script(_CREATE)
        self._append_script = self._client.register_script(_APPEND)
        self._take_fence_script = self._client.register_script(_TAKE_FENCE)
        self._open_script = self._client.register_script(_OPEN)
        self._put_summary_script = self._client.register_script(_PUT_SUMMARY)
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisSessionService({self._where}, key_prefix={self.key_prefix!r})"

    # --- keys --------------------------------------------------------------------------------

    def _user_tag(self, app_name: str, user_id: str) -> str:
        return "{" + app_name + "/" + user_id + "}"

    def _session_keys(self, key: SessionKey) -> list[str]:
        """The nine KEYS of the create and append scripts, in their order. On a cluster the
        eighth is the session's pending app state, not the app state (module docstring)."""
        p, tag, sid = self.key_prefix, self._user_tag(key.app_name, key.user_id), key.session_id
        return [
            f"{p}:session:{tag}/{sid}",
            f"{p}:state:{tag}/{sid}",
            f"{p}:events:{tag}/{sid}",
            f"{p}:event_ids:{tag}/{sid}",
            f"{p}:summaries:{tag}/{sid}",
            f"{p}:summary_counts:{tag}/{sid}",
            self._user_state_key(key.app_name, key.user_id),
            f"{p}:app_pending:{tag}/{sid}" if self._cluster else self._app_state_key(key.app_name),
            self._index_key(key.app_name, key.user_id),
        ]

    def _fence_key(self, key: SessionKey) -> str:
        tag = self._user_tag(key.app_name, key.user_id)
        return f"{self.key_prefix}:fence:{tag}/{key.session_id}"

    def _user_state_key(self, app_name: str, user_id: str) -> str:
        return f"{self.key_prefix}:user_state:{self._user_tag(app_name, user_id)}"

    def _app_state_key(self, app_name: str) -> str:
        return f"{self.key_prefix}:app_state:{{{app_name}}}"

    def _index_key(self, app_name: str, user_id: str) -> str:
        return f"{self.key_prefix}:sessions:{self._user_tag(app_name, user_id)}"

    # --- plumbing ----------------------------------------------------------------------------

    async def _call(self, action: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` (one try of a store call) until it succeeds, retrying transient
        errors with backoff for ``retry_for_s``; translate driver errors into
        SessionBackendError naming the server, what failed and the fix.

        ``attempt`` must be safe to run twice: its first try may have landed with its reply
        lost. A cancellation stops the retries: it propagates from the backoff's sleep, and one
        that redis-py swallowed (``asyncio.wait_for`` on Python 3.11 can) is raised again
        before the next try.
        """
        if self._closed:
            raise SessionBackendError(
                f"RedisSessionService for {self._where} is closed; build a new one."
            )
        started = time.monotonic()

        def within_time(error: Exception) -> bool:
            return time.monotonic() - started < self.retry_for_s

        async def note(error: Exception, failures: int) -> None:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError  # the caller gave up: no more tries
            if failures == 1:
                logger.warning(
                    "Redis session store at %s unavailable while %s (%s: %s); retrying for "
                    "up to %.0f s",
                    self._where, action, type(error).__name__, error, self.retry_for_s,
                )  # fmt: skip

        async def first_try() -> T:
            # redis-py's RedisCluster fails a MULTI pipeline sent before it has learnt the
            # cluster's slots; learning them first (once, then a no-op) avoids that.
            if isinstance(self._client, RedisCluster):
                await self._client.initialize()
            return await attempt()

        try:
            return await self._retry.call_with_retry(
                first_try, note, is_retryable=within_time, with_failure_count=True
            )
        except (RedisError, OSError) as exc:
            retried = ""
            if isinstance(exc, _TRANSIENT) and self.retry_for_s > 0:
                retried = (
                    f" (still failing after {time.monotonic() - started:.1f} s of retries; "
                    f"retry_for_s={self.retry_for_s:g})"
                )
            raise SessionBackendError(
                f"Redis session store at {self._where} failed while {action}: "
                f"{type(exc).__name__}: {exc}{retried}. {_HINT}"
                + ("; raise retry_for_s to ride out longer outages." if retried else ".")
            ) from exc

    def _decode_hash(self, raw: Mapping[Any, Any], where: str) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for field, value in raw.items():
            name = _text(field)
            values[name] = decode_json_value(value, f"{where} field {name!r}")
        return values

    def _meta(self, raw: dict[bytes, bytes], where: str) -> tuple[datetime, datetime, int]:
        try:
            created_at = decode_time(raw[b"created_at"], where)
            updated_at = decode_time(raw[b"updated_at"], where)
            event_count = int(raw[b"event_count"])
        except (KeyError, ValueError) as exc:
            raise CorruptSessionDataError(
                f"stored session data at {where} is missing or has a bad {exc} field. "
                "Inspect the key, then repair or delete it."
            ) from exc
        return created_at, updated_at, event_count

    # --- sessions ----------------------------------------------------------------------------

    async def create_session(
        self,
        app_name: str,
        user_id: str,
        session_id: str | None = None,
        *,
        state: dict[str, Any] | None = None,
    ) -> Session:
        key = session_key(app_name, user_id, session_id)
        parts = route_initial_state(state)
        now = utcnow()
        keys = self._session_keys(key)
        deltas = _delta_args(parts)
        args: list[str | int | float] = [
            now.isoformat(),
            key.session_id,
            now.timestamp(),
            _ms(self.session_ttl),
            _ms(self.user_state_ttl),
            _ms(self.app_state_ttl),
            *deltas[:3],  # how many keys of each scope
            uuid.uuid4().hex,  # call_id: a retry after a lost reply finds its own session
            *deltas[3:],
        ]
        result = await self._call(
            "creating a session", lambda: self._create_script(keys=keys, args=args)
        )
        if int(result[0]) == 0:
            raise already_exists(key)
        user_state = self._decode_hash(_pairs(result[1]), keys[6])
        app_raw: Mapping[Any, Any] = _pairs(result[2])
        if self._cluster:  # result[2] is what is pending: copy it, then read the app state
            app_raw = await self._cluster_app_state(key, app_raw)
        app_state = self._decode_hash(app_raw, self._app_state_key(key.app_name))
        return new_session(key, merge_state(parts.session, app_state, user_state), now)

    async def get_session(
        self,
        app_name: str,
        user_id: str,
        session_id: str,
        *,
        num_events: int | None = None,
        since: datetime | None = None,
    ) -> Session | None:
        key = SessionKey(app_name, user_id, session_id)
        check_num_events(num_events)
        keys = self._session_keys(key)

        async def read() -> list[Any]:
            pipe = self._client.pipeline(transaction=True)
            pipe.hgetall(keys[0])
            pipe.hgetall(keys[1])
            pipe.lrange(keys[2], 0, -1)
            pipe.hgetall(keys[4])
            pipe.hgetall(keys[6])
            pipe.hgetall(keys[7])
            return await pipe.execute()

        replies = await self._call("reading a session", read)
        return await self._loaded(key, keys, replies, num_events=num_events, since=since)

    async def _loaded(
        self,
        key: SessionKey,
        keys: list[str],
        replies: Sequence[Any],
        *,
        num_events: int | None = None,
        since: datetime | None = None,
    ) -> Session | None:
        """The Session read by ``replies``: the session, state, events, summaries, user state
        and app state (on a cluster: pending app state) of ``keys``, in that order."""
        meta, state, raw_events, summaries, user_state, app_state = replies
        if not meta:
            return None
        if not isinstance(meta, dict):  # from a script: flat lists of fields and values
            meta, state, summaries = _pairs(meta), _pairs(state), _pairs(summaries)
            user_state, app_state = _pairs(user_state), _pairs(app_state)
        if self._cluster:  # app_state is the session's pending app state here
            app_state = await self._cluster_app_state(key, app_state)
        created_at, updated_at, event_count = self._meta(meta, keys[0])
        return loaded_session(
            key,
            state=self._decode_hash(state, keys[1]),
            app_state=self._decode_hash(app_state, self._app_state_key(key.app_name)),
            user_state=self._decode_hash(user_state, keys[6]),
            created_at=created_at,
            updated_at=updated_at,
            event_count=event_count,
            events=decode_events(enumerate(raw_events), keys[2]),
            summaries={
                _text(k): decode_summary(v, f"{keys[4]} {k!r}") for k, v in summaries.items()
            },
            num_events=num_events,
            since=since,
        )

    async def open_session(
        self,
        app_name: str,
        user_id: str,
        session_id: str,
        *,
        fence: int | None = None,
        create: bool = True,
    ) -> Session | None:
        """:func:`runner_core.session.open_session` in one script (one round trip; a second
        on a cluster, for the app state). Safe to retry: the fence one holds is taken again,
        and a session a lost try created is read."""
        key = SessionKey(app_name, user_id, session_id)
        if fence is not None:
            check_fence(fence, "fence")
        now = utcnow()
        keys = [*self._session_keys(key), self._fence_key(key)]
        args: list[str | int | float] = [
            "" if fence is None else fence,
            _ms(self.session_ttl),
            "1" if create else "0",
            now.isoformat(),
            key.session_id,
            now.timestamp(),
            uuid.uuid4().hex,
        ]
        result = await self._call(
            "opening a session", lambda: self._open_script(keys=keys, args=args)
        )
        status = int(result[0])
        if status == -2:
            assert fence is not None
            raise fenced(key, fence, _text(result[1]))
        if status == 0:
            return None
        return await self._loaded(key, keys, result[1:])

    async def list_sessions(self, app_name: str, user_id: str) -> list[Session]:
        validate_identifier(app_name, "app_name")
        validate_identifier(user_id, "user_id")
        index_key = self._index_key(app_name, user_id)

        async def read() -> tuple[list[str], list[Any]]:
            session_ids = [_text(sid) for sid in await self._client.zrange(index_key, 0, -1)]
            pipe = self._client.pipeline(transaction=True)
            for sid in session_ids:
                keys = self._session_keys(SessionKey(app_name, user_id, sid))
                pipe.hgetall(keys[0])
                pipe.hgetall(keys[1])
            pipe.hgetall(self._user_state_key(app_name, user_id))
            replies = await pipe.execute()
            # Its own slot on a cluster, so outside the transaction (module docstring).
            replies.append(await self._client.hgetall(self._app_state_key(app_name)))
            return session_ids, replies

        session_ids, replies = await self._call("listing sessions", read)
        user_state = self._decode_hash(replies[-2], self._user_state_key(app_name, user_id))
        app_state = self._decode_hash(replies[-1], self._app_state_key(app_name))
        sessions: list[Session] = []
        gone: list[str] = []
        for n, sid in enumerate(session_ids):
            meta, state = replies[2 * n], replies[2 * n + 1]
            keys = self._session_keys(SessionKey(app_name, user_id, sid))
            if not meta:
                gone.append(sid)
                continue
            created_at, updated_at, event_count = self._meta(meta, keys[0])
            sessions.append(
                loaded_session(
                    SessionKey(app_name, user_id, sid),
                    state=self._decode_hash(state, keys[1]),
                    app_state=app_state,
                    user_state=user_state,
                    created_at=created_at,
                    updated_at=updated_at,
                    event_count=event_count,
                )
            )
        if gone:  # expired sessions leave their ID in the index; drop them from it
            await self._call("listing sessions", lambda: self._client.zrem(index_key, *gone))
        return sessions

    async def delete_session(self, app_name: str, user_id: str, session_id: str) -> None:
        key = SessionKey(app_name, user_id, session_id)
        keys = self._session_keys(key)
        # On a cluster, what the session left pending goes to the app state first.
        pending = keys[7:8] if self._cluster else []
        if pending:
            await self._cluster_app_state(
                key, await self._call("deleting a session", lambda: self._client.hgetall(keys[7]))
            )

        async def delete() -> None:
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(*keys[:6], self._fence_key(key), *pending)
            pipe.zrem(keys[8], key.session_id)
            await pipe.execute()

        await self._call("deleting a session", delete)

    async def take_fence(self, app_name: str, user_id: str, session_id: str, token: int) -> None:
        key = SessionKey(app_name, user_id, session_id)
        check_fence(token, "token")
        # Safe to retry: taking the fence one holds already takes it again.
        result = await self._call(
            "taking a session's fence",
            lambda: self._take_fence_script(
                keys=[self._fence_key(key)], args=[token, _ms(self.session_ttl)]
            ),
        )
        if int(result) != 1:
            raise fenced(key, token, _text(result))

    async def append_event(
        self, session: Session, event: Event, *, fence: int | None = None
    ) -> bool:
        key = check_appendable(session, event)
        if fence is not None:
            check_fence(fence)
        parts = split_state_delta(state_delta_of(event))
        deltas = _delta_args(parts)
        now = utcnow()
        args: list[str | int] = [
            event.id,
            event.to_json(),
            1 if event.is_user_message() else 0,
            now.isoformat(),
            self.event_limit or 0,
            _ms(self.session_ttl),
            _ms(self.user_state_ttl),
            _ms(self.app_state_ttl),
            *deltas[:3],  # how many keys of each scope
            "" if fence is None else fence,
            uuid.uuid4().hex,  # call_id: a retry after a lost reply finds its own append
            *deltas[3:],
        ]
        keys = [*self._session_keys(key), self._fence_key(key)]
        result = await self._call(
            "appending an event", lambda: self._append_script(keys=keys, args=args)
        )
        status = int(result[0])
        if status == -2:
            assert fence is not None
            raise fenced(key, fence, _text(result[1]) or None)
        if status < 0:
            raise session_not_found(key)
        if status == 0:
            return False
        if self._cluster and parts.app:
            pairs = deltas[len(deltas) - 2 * len(parts.app) :]  # the app scope's, last
            await self._copy_app_pending(key, dict(zip(pairs[::2], pairs[1::2], strict=True)))
        apply_append(
            session,
            event,
            parts,
            event_count=int(result[1]),
            updated_at=now,
            event_limit=self.event_limit,
        )
        return True

    # --- app state on a cluster --------------------------------------------------------------

    async def _copy_app_pending(self, key: SessionKey, pending: Mapping[Any, Any]) -> None:
        """Copy app-state values a create or append left pending in ``key``'s session (Redis
        Cluster) to the app state, then remove those that still hold what was copied. Safe
        to repeat: copying the same values again changes nothing."""
        app_key = self._app_state_key(key.app_name)
        pending_key = self._session_keys(key)[7]
        flat = [item for pair in pending.items() for item in pair]

        async def copy() -> None:
            pipe = self._client.pipeline(transaction=True)
            pipe.hset(app_key, mapping=dict(pending))
            if self.app_state_ttl:
                pipe.pexpire(app_key, _ms(self.app_state_ttl))
            await pipe.execute()
            await self._settle_app_pending(keys=[pending_key], args=flat)

        await self._call("copying app state", copy)

    async def _cluster_app_state(
        self, key: SessionKey, pending: Mapping[Any, Any]
    ) -> Mapping[Any, Any]:
        """The app state of ``key``'s app on a cluster, after copying what ``key``'s session
        left pending (a writer that died between its script and the copy)."""
        if pending:
            await self._copy_app_pending(key, pending)
        app_key = self._app_state_key(key.app_name)
        raw: Mapping[Any, Any] = await self._call(
            "reading app state", lambda: self._client.hgetall(app_key)
        )
        return raw

    # --- app and user state ------------------------------------------------------------------

    async def _get_scope(self, redis_key: str, action: str) -> dict[str, Any]:
        raw = await self._call(action, lambda: self._client.hgetall(redis_key))
        return self._decode_hash(raw, redis_key)

    async def _update_scope(
        self, redis_key: str, delta: dict[str, Any], ttl: float | None, action: str
    ) -> None:
        check_delta(delta, "delta")
        if not delta:
            return
        mapping = {k: encode_json(v, f"state value {k!r}") for k, v in delta.items()}

        async def write() -> None:  # safe to retry: it sets the same values again
            pipe = self._client.pipeline(transaction=True)
            pipe.hset(redis_key, mapping=mapping)  # type: ignore[arg-type]
            if ttl is not None:
                pipe.pexpire(redis_key, _ms(ttl))
            await pipe.execute()

        await self._call(action, write)

    async def get_app_state(self, app_name: str) -> dict[str, Any]:
        validate_identifier(app_name, "app_name")
        return await self._get_scope(self._app_state_key(app_name), "reading app state")

    async def update_app_state(self, app_name: str, delta: dict[str, Any]) -> None:
        validate_identifier(app_name, "app_name")
        await self._update_scope(
            self._app_state_key(app_name), delta, self.app_state_ttl, "updating app state"
        )

    async def get_user_state(self, app_name: str, user_id: str) -> dict[str, Any]:
        validate_identifier(app_name, "app_name")
        validate_identifier(user_id, "user_id")
        return await self._get_scope(self._user_state_key(app_name, user_id), "reading user state")

    async def update_user_state(self, app_name: str, user_id: str, delta: dict[str, Any]) -> None:
        validate_identifier(app_name, "app_name")
        validate_identifier(user_id, "user_id")
        await self._update_scope(
            self._user_state_key(app_name, user_id),
            delta,
            self.user_state_ttl,
            "updating user state",
        )

    # --- summaries ---------------------------------------------------------------------------

    async def get_summary(
        self, app_name: str, user_id: str, session_id: str, *, filter_key: str = ""
    ) -> Summary | None:
        keys = self._session_keys(SessionKey(app_name, user_id, session_id))

        async def read() -> list[Any]:
            pipe = self._client.pipeline(transaction=True)
            pipe.exists(keys[0])
            pipe.hget(keys[4], filter_key)
            return await pipe.execute()

        exists, raw = await self._call("reading a summary", read)
        if not exists or raw is None:
            return None
        return decode_summary(raw, f"{keys[4]} {filter_key!r}")

    async def put_summary(
        self, app_name: str, user_id: str, session_id: str, summary: Summary
    ) -> bool:
        key = SessionKey(app_name, user_id, session_id)
        keys = self._session_keys(key)
        args: list[str | int] = [
            summary.filter_key,
            summary.model_dump_json(),
            summary.event_count,
            uuid.uuid4().hex,  # call_id: a retry after a lost reply finds its own summary
        ]
        result = int(
            await self._call(
                "storing a summary",
                lambda: self._put_summary_script(keys=[keys[0], keys[4], keys[5]], args=args),
            )
        )
        if result == -1:
            raise summary_session_not_found(key)
        if result == -2:
            raise CorruptSessionDataError(
                f"stored summary count at {keys[5]} field {summary.filter_key!r} is not a "
                "number. Inspect the key, then repair or delete it."
            )
        return result == 1

    async def ping(self) -> None:
        """Check that the server answers (raises SessionBackendError if not)."""
        await self._call("pinging", self._client.ping)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            with contextlib.suppress(RedisError, OSError):
                await self._client.aclose()


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    """A flat [field, value, ...] script reply as a dict."""
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
