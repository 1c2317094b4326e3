"""``RedisSessionService``: sessions in Redis (``redis.asyncio``).

Key layout (``P`` is ``key_prefix``, default ``agent-runner``; ``{A/U}`` is the hash tag made
of the app name and user ID joined by ``/``, a character IDs cannot hold, so no two users share
a tag and one user's keys share a cluster slot)::

    P:session:{A/U}/S          hash   created_at, updated_at, event_count, last_user
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

The app-state hash has its own slot (``{A}``). The service talks to one Redis server (or a
proxy that allows multi-slot scripts); it does not speak the Redis Cluster protocol.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from runner_core.errors import (
    ConfigurationError,
    CorruptSessionDataError,
    InvalidRequestError,
    SessionBackendError,
    SessionNotFoundError,
)
from runner_core.events import Event
from runner_core.session import (
    DEFAULT_EVENT_LIMIT,
    Session,
    SessionKey,
    StateDeltaParts,
    Summary,
    merge_state,
    split_state_delta,
    validate_identifier,
    window_events,
)
from runner_core.store_support import (
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
    route_initial_state,
    session_key,
    utcnow,
)

__all__ = ["DEFAULT_KEY_PREFIX", "RedisSessionService"]

DEFAULT_KEY_PREFIX = "agent-runner"
_KEY_PREFIX_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_HINT = "is redis-server running and reachable there? Check AGENT_RUNNER_SESSION_URL"

# KEYS: session, state, events, event_ids, summaries, summary_counts, user_state, app_state,
#       sessions
# ARGV: created_at, session_id, created_score, session_ttl_ms, user_ttl_ms, app_ttl_ms,
#       n_session, n_user, n_app, then the key/value pairs of the three deltas
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {0} end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
redis.call('HSET', KEYS[1], 'created_at', ARGV[1], 'updated_at', ARGV[1],
           'event_count', 0, 'last_user', -1)
local i = 10
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
#       app_ttl_ms, n_session, n_user, n_app, fence token ('' for an unfenced append), then the
#       key/value pairs of the three deltas
# Returns {1, event_count} when appended, {0, event_count} for a known event ID, {-1} when the
# session does not exist, {-2, fence holder} when the fence is not the given token.
_APPEND = """
if ARGV[12] ~= '' then
  local holder = redis.call('GET', KEYS[10])
  if holder ~= ARGV[12] then return {-2, holder or ''} end
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
if redis.call('ZSCORE', KEYS[4], ARGV[1]) then
  return {0, tonumber(redis.call('HGET', KEYS[1], 'event_count'))}
end
local position = redis.call('HINCRBY', KEYS[1], 'event_count', 1) - 1
local length = redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[4], position, ARGV[1])
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], 'updated_at', ARGV[4], 'last_user', position)
else
  redis.call('HSET', KEYS[1], 'updated_at', ARGV[4])
end
local i = 13
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

# KEYS: session, summaries, summary_counts.  ARGV: filter_key, summary_json, event_count
# Returns 1 stored, 0 an equal or newer one is there, -1 no session, -2 corrupt stored count.
_PUT_SUMMARY = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local current = redis.call('HGET', KEYS[3], ARGV[1])
if current then
  local n = tonumber(current)
  if n == nil then return -2 end
  if n >= tonumber(ARGV[3]) then return 0 end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
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


def _where_of(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix socket {parts.path}"
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


class RedisSessionService:
    """Sessions in Redis. See the module docstring for the key layout.

    Args:
        url: ``redis://[user:password@]host:port/db``, ``rediss://`` (TLS) or
            ``unix:///path/to/socket?db=0``.
        key_prefix: the first part of every key (letters, digits and ``._:-``).
        event_limit: events kept per session (oldest evicted first, never the latest user
            message); None or 0 keeps all. Default 1000.
        session_ttl, app_state_ttl, user_state_ttl: seconds (or timedelta) after the last write;
            None or 0 never expires.
        socket_timeout, socket_connect_timeout: seconds; they bound how long a call to an
            unreachable or stuck server can take.
        client: an existing ``redis.asyncio.Redis`` to use instead of ``url`` (not closed by
            :meth:`close`; it must not decode responses).
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
        client: aioredis.Redis | None = None,
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
        if client is None:
            self._where = _where_of(url)
        else:
            conn_kwargs = client.connection_pool.connection_kwargs
            self._where = conn_kwargs.get("path") or (
                f"{conn_kwargs.get('host', 'localhost')}:{conn_kwargs.get('port', 6379)}"
            )
        self._owns_client = client is None
        if client is None:
            try:
                # Blocking: with every connection busy (many runs at once), a command waits
                # for one instead of failing with "Too many connections".
                pool = aioredis.BlockingConnectionPool.from_url(
                    url,
                    max_connections=max_connections,
                    timeout=socket_timeout,
                    socket_timeout=socket_timeout,
                    socket_connect_timeout=socket_connect_timeout,
                    retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1),
                    decode_responses=False,
                )
                client = aioredis.Redis.from_pool(pool)
            except ValueError as exc:
                raise ConfigurationError(f"bad Redis URL for the session store: {exc}") from exc
        self._client: aioredis.Redis = client
        self._create_script = self._client.register_script(_CREATE)
        self._append_script = self._client.register_script(_APPEND)
        self._take_fence_script = self._client.register_script(_TAKE_FENCE)
        self._put_summary_script = self._client.register_script(_PUT_SUMMARY)
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisSessionService({self._where}, key_prefix={self.key_prefix!r})"

    # --- keys --------------------------------------------------------------------------------

    def _user_tag(self, app_name: str, user_id: str) -> str:
        return "{" + app_name + "/" + user_id + "}"

    def _session_keys(self, key: SessionKey) -> list[str]:
        """The nine KEYS of the create and append scripts, in their order."""
        p, tag, sid = self.key_prefix, self._user_tag(key.app_name, key.user_id), key.session_id
        return [
            f"{p}:session:{tag}/{sid}",
            f"{p}:state:{tag}/{sid}",
            f"{p}:events:{tag}/{sid}",
            f"{p}:event_ids:{tag}/{sid}",
            f"{p}:summaries:{tag}/{sid}",
            f"{p}:summary_counts:{tag}/{sid}",
            self._user_state_key(key.app_name, key.user_id),
            self._app_state_key(key.app_name),
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

    @contextlib.asynccontextmanager
    async def _guard(self, action: str) -> AsyncIterator[None]:
        """Translate driver errors into SessionBackendError naming the server and the fix."""
        if self._closed:
            raise SessionBackendError(
                f"RedisSessionService for {self._where} is closed; build a new one."
            )
        try:
            yield
        except (RedisError, OSError) as exc:
            raise SessionBackendError(
                f"Redis session store at {self._where} failed while {action}: "
                f"{type(exc).__name__}: {exc}. {_HINT}."
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
        args: list[str | int | float] = [
            now.isoformat(),
            key.session_id,
            now.timestamp(),
            _ms(self.session_ttl),
            _ms(self.user_state_ttl),
            _ms(self.app_state_ttl),
            *_delta_args(parts),
        ]
        async with self._guard("creating a session"):
            result = await self._create_script(keys=keys, args=args)
        if int(result[0]) == 0:
            raise InvalidRequestError(
                f"session {key.session_id!r} of user {key.user_id!r} in app {key.app_name!r} "
                "already exists. Get it with get_session, or pass another session_id "
                "(or none for a generated one)."
            )
        user_state = self._decode_hash(_pairs(result[1]), keys[6])
        app_state = self._decode_hash(_pairs(result[2]), keys[7])
        return Session(
            id=key.session_id,
            app_name=key.app_name,
            user_id=key.user_id,
            state=merge_state(parts.session, app_state, user_state),
            created_at=now,
            updated_at=now,
        )

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
        async with self._guard("reading a session"):
            pipe = self._client.pipeline(transaction=True)
            pipe.hgetall(keys[0])
            pipe.hgetall(keys[1])
            pipe.lrange(keys[2], 0, -1)
            pipe.hgetall(keys[4])
            pipe.hgetall(keys[6])
            pipe.hgetall(keys[7])
            meta, state, raw_events, summaries, user_state, app_state = await pipe.execute()
        if not meta:
            return None
        created_at, updated_at, event_count = self._meta(meta, keys[0])
        events = decode_events(enumerate(raw_events), keys[2])
        return Session(
            id=key.session_id,
            app_name=key.app_name,
            user_id=key.user_id,
            state=merge_state(
                self._decode_hash(state, keys[1]),
                self._decode_hash(app_state, keys[7]),
                self._decode_hash(user_state, keys[6]),
            ),
            events=window_events(events, num_events=num_events, since=since),
            summaries={
                _text(k): decode_summary(v, f"{keys[4]} {k!r}") for k, v in summaries.items()
            },
            created_at=created_at,
            updated_at=updated_at,
            event_count=event_count,
        )

    async def list_sessions(self, app_name: str, user_id: str) -> list[Session]:
        validate_identifier(app_name, "app_name")
        validate_identifier(user_id, "user_id")
        index_key = self._index_key(app_name, user_id)
        async with self._guard("listing sessions"):
            session_ids = [_text(sid) for sid in await self._client.zrange(index_key, 0, -1)]
            pipe = self._client.pipeline(transaction=True)
            for sid in session_ids:
                keys = self._session_keys(SessionKey(app_name, user_id, sid))
                pipe.hgetall(keys[0])
                pipe.hgetall(keys[1])
            pipe.hgetall(self._user_state_key(app_name, user_id))
            pipe.hgetall(self._app_state_key(app_name))
            replies = await pipe.execute()
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
                Session(
                    id=sid,
                    app_name=app_name,
                    user_id=user_id,
                    state=merge_state(self._decode_hash(state, keys[1]), app_state, user_state),
                    created_at=created_at,
                    updated_at=updated_at,
                    event_count=event_count,
                )
            )
        if gone:  # expired sessions leave their ID in the index; drop them from it
            async with self._guard("listing sessions"):
                await self._client.zrem(index_key, *gone)
        return sessions

    async def delete_session(self, app_name: str, user_id: str, session_id: str) -> None:
        key = SessionKey(app_name, user_id, session_id)
        keys = self._session_keys(key)
        async with self._guard("deleting a session"):
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(*keys[:6], self._fence_key(key))
            pipe.zrem(keys[8], key.session_id)
            await pipe.execute()

    async def take_fence(self, app_name: str, user_id: str, session_id: str, token: int) -> None:
        key = SessionKey(app_name, user_id, session_id)
        check_fence(token, "token")
        async with self._guard("taking a session's fence"):
            result = await self._take_fence_script(
                keys=[self._fence_key(key)], args=[token, _ms(self.session_ttl)]
            )
        if int(result) != 1:
            raise fenced(key, token, _text(result))

    async def append_event(
        self, session: Session, event: Event, *, fence: int | None = None
    ) -> bool:
        key = check_appendable(session, event)
        if fence is not None:
            check_fence(fence)
        parts = split_state_delta(event.state_delta)
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
            *deltas[3:],
        ]
        keys = [*self._session_keys(key), self._fence_key(key)]
        async with self._guard("appending an event"):
            result = await self._append_script(keys=keys, args=args)
        status = int(result[0])
        if status == -2:
            assert fence is not None
            raise fenced(key, fence, _text(result[1]) or None)
        if status < 0:
            raise SessionNotFoundError(
                f"session {key.session_id!r} of user {key.user_id!r} in app {key.app_name!r} "
                "does not exist (deleted or expired). Create it with create_session first."
            )
        if status == 0:
            return False
        apply_append(
            session,
            event,
            parts,
            event_count=int(result[1]),
            updated_at=now,
            event_limit=self.event_limit,
        )
        return True

    # --- app and user state ------------------------------------------------------------------

    async def _get_scope(self, redis_key: str, action: str) -> dict[str, Any]:
        async with self._guard(action):
            raw = await self._client.hgetall(redis_key)
        return self._decode_hash(raw, redis_key)

    async def _update_scope(
        self, redis_key: str, delta: dict[str, Any], ttl: float | None, action: str
    ) -> None:
        check_delta(delta, "delta")
        if not delta:
            return
        mapping = {k: encode_json(v, f"state value {k!r}") for k, v in delta.items()}
        async with self._guard(action):
            pipe = self._client.pipeline(transaction=True)
            pipe.hset(redis_key, mapping=mapping)  # type: ignore[arg-type]
            if ttl is not None:
                pipe.pexpire(redis_key, _ms(ttl))
            await pipe.execute()

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
        async with self._guard("reading a summary"):
            pipe = self._client.pipeline(transaction=True)
            pipe.exists(keys[0])
            pipe.hget(keys[4], filter_key)
            exists, raw = await pipe.execute()
        if not exists or raw is None:
            return None
        return decode_summary(raw, f"{keys[4]} {filter_key!r}")

    async def put_summary(
        self, app_name: str, user_id: str, session_id: str, summary: Summary
    ) -> bool:
        key = SessionKey(app_name, user_id, session_id)
        keys = self._session_keys(key)
        async with self._guard("storing a summary"):
            result = int(
                await self._put_summary_script(
                    keys=[keys[0], keys[4], keys[5]],
                    args=[summary.filter_key, summary.model_dump_json(), summary.event_count],
                )
            )
        if result == -1:
            raise SessionNotFoundError(
                f"cannot store a summary: session {key.session_id!r} of user {key.user_id!r} "
                f"in app {key.app_name!r} does not exist."
            )
        if result == -2:
            raise CorruptSessionDataError(
                f"stored summary count at {keys[5]} field {summary.filter_key!r} is not a "
                "number. Inspect the key, then repair or delete it."
            )
        return result == 1

    async def ping(self) -> None:
        """Check that the server answers (raises SessionBackendError if not)."""
        async with self._guard("pinging"):
            await self._client.ping()

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
