"""``RedisTraceStore``: execution traces in Redis, beside the sessions.

Key layout (``P`` is ``key_prefix``, default ``agent-runner``; ``I`` the invocation ID; ``{A/U}``
the app and user as in the session store)::

    P:trace:{I}                  hash   header (the trace's JSON without steps), fence, n
    P:trace-steps:{I}            hash   step ID -> step JSON
    P:trace-order:{I}            zset   step ID -> the order it was stored in
    P:session-traces:{A/U}/S     set    the invocation IDs of the session's traces

Every write is one Lua script (one round trip, atomic): a fenced write first checks the
trace's ``fence`` field; a step is added only if its ID is new (``HSETNX``); each write refreshes
the TTL of the trace's keys and of the session's index. :meth:`delete_session` removes the
traces listed in the session's index.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from runner_core.errors import ConfigurationError, SessionBackendError
from runner_core.session import SessionKey, validate_identifier
from runner_core.store_support import check_fence, check_ttl
from runner_core.traces import (
    Step,
    Trace,
    check_header_of,
    check_owner,
    decode_step,
    decode_trace,
    trace_fenced,
    trace_not_found,
)

from .redis import _KEY_PREFIX_RE, DEFAULT_KEY_PREFIX, _where_of
from .redis_pool import sends_in_place

__all__ = ["RedisTraceStore"]

T = TypeVar("T")

# KEYS: trace, index. ARGV: header, fence ('' none), ttl_ms, invocation_id.
# Returns {1} created, {0, header} existing (fence taken), {-2, holder} fenced.
_START = """
local header = redis.call('HGET', KEYS[1], 'header')
if not header then
  redis.call('HSET', KEYS[1], 'header', ARGV[1], 'n', 0)
  if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'fence', ARGV[2]) end
  redis.call('SADD', KEYS[2], ARGV[4])
  local ttl = tonumber(ARGV[3])
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[1], ttl)
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
  return {1}
end
if ARGV[2] ~= '' then
  local holder = redis.call('HGET', KEYS[1], 'fence')
  if holder and tonumber(holder) > tonumber(ARGV[2]) then return {-2, holder} end
  redis.call('HSET', KEYS[1], 'fence', ARGV[2])
end
return {0, header}
"""

# KEYS: trace, steps, order[, index]. ARGV: fence ('' none), ttl_ms, header JSON ('' none), then
# step_id, step JSON for each step from ARGV[FIRST_STEP] on, in order. Steps first (a known step
# ID is skipped), then the header. Returns how many steps were new, -1 no trace, {-2, holder}
# fenced (nothing written).
_WRITE_BODY = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if ARGV[1] ~= '' then
  local holder = redis.call('HGET', KEYS[1], 'fence')
  if holder ~= ARGV[1] then return {-2, holder or ''} end
end
local added = 0
for i = FIRST_STEP, #ARGV, 2 do
  if redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('ZADD', KEYS[3], redis.call('HINCRBY', KEYS[1], 'n', 1), ARGV[i])
    added = added + 1
  end
end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'header', ARGV[3]) end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  for k = 1, #KEYS do redis.call('PEXPIRE', KEYS[k], ttl) end
end
return added
"""
_WRITE = _WRITE_BODY.replace("FIRST_STEP", "4")

# A write that starts its trace (TraceStore.write with start=): _START's creation, then the
# write above, in one call when the trace is new. KEYS as above with the index. ARGV as above
# with the start header and the invocation ID as ARGV[4] and ARGV[5], the steps from ARGV[6].
# Returns -3 when the trace exists (nothing written: the caller takes it over with start, then
# writes), else as above.
_START_WRITE = (
    """
if redis.call('HGET', KEYS[1], 'header') then return -3 end
redis.call('HSET', KEYS[1], 'header', ARGV[4], 'n', 0)
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], 'fence', ARGV[1]) end
redis.call('SADD', KEYS[4], ARGV[5])
"""
    + _WRITE_BODY.replace("FIRST_STEP", "6")
)


def _ms(seconds: float | None) -> int:
    return 0 if seconds is None else max(1, round(seconds * 1000))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisTraceStore:
    """Traces in Redis. See the module docstring for the key layout.

    Args:
        url: ``redis://host:port/db``, ``rediss://...`` or ``unix:///path?db=0``.
        key_prefix: the first part of every key (the session store's, by default).
        ttl: seconds (or a timedelta) a trace is kept after its last write; None or 0 keeps it
            until its session's traces are deleted. Give it the session store's
            ``session_ttl`` to keep traces as long as their sessions.
        client: an existing ``redis.asyncio.Redis`` (not closed by :meth:`close`).
        socket_timeout: seconds one call may take.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        ttl: float | timedelta | None = None,
        client: aioredis.Redis | None = None,
        socket_timeout: float = 5.0,
    ) -> None:
        if not isinstance(key_prefix, str) or not _KEY_PREFIX_RE.fullmatch(key_prefix):
            raise ConfigurationError(
                f"key_prefix {key_prefix!r} is not allowed: use 1-64 letters, digits or '._:-'."
            )
        self.key_prefix = key_prefix
        self.ttl = check_ttl(ttl, "ttl")
        self._where = _where_of(url) if client is None else "the given client"
        self._owns_client = client is None
        if client is None:
            try:
                client = aioredis.Redis.from_url(
                    url,
                    socket_timeout=socket_timeout,
                    socket_connect_timeout=socket_timeout,
                    decode_responses=False,
                )
            except ValueError as exc:
                raise ConfigurationError(f"bad Redis URL for the trace store: {exc}") from exc
            # Before its first connection: each write is sent without a task of its own.
            pool = client.connection_pool
            pool.connection_class = sends_in_place(pool.connection_class)
        self._client: aioredis.Redis = client
        self._start = self._client.register_script(_START)
        self._write_script = self._client.register_script(_WRITE)
        self._start_write = self._client.register_script(_START_WRITE)

    def __repr__(self) -> str:
        return f"RedisTraceStore({self._where}, key_prefix={self.key_prefix!r})"

    # --- keys ----------------------------------------------------------------------------

    def _keys(self, invocation_id: str) -> list[str]:
        p, i = self.key_prefix, invocation_id
        return [f"{p}:trace:{{{i}}}", f"{p}:trace-steps:{{{i}}}", f"{p}:trace-order:{{{i}}}"]

    def _index(self, app_name: str, user_id: str, session_id: str) -> str:
        return f"{self.key_prefix}:session-traces:{{{app_name}/{user_id}}}/{session_id}"

    async def _call(self, action: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except (RedisError, OSError) as exc:
            raise SessionBackendError(
                f"Redis trace store at {self._where} failed while {action}: "
                f"{type(exc).__name__}: {exc}. Is redis-server running there? Check "
                "AGENT_RUNNER_TRACE_URL."
            ) from exc

    async def _write(
        self,
        invocation_id: str,
        trace: Trace | None,
        steps: Sequence[Step],
        fence: int | None,
        *,
        start: Trace | None = None,
    ) -> int | None:
        """Write ``steps``, then a header (``trace``); the header's write refreshes the
        session's index too. With ``start``, create that trace first, in the same call.
        Returns how many steps were new; None when ``start`` found the trace there (nothing
        was written)."""
        keys = self._keys(invocation_id)
        indexed = start or trace
        if indexed is not None:
            keys.append(self._index(indexed.app_name, indexed.user_id, indexed.session_id))
        args: list[str | int] = [
            "" if fence is None else fence,
            _ms(self.ttl),
            trace.header().to_json() if trace is not None else "",
        ]
        if start is not None:
            args += [start.header().to_json(), start.invocation_id]
        for step in steps:
            args += [step.step_id, step.to_json()]
        script = self._write_script if start is None else self._start_write
        action = "adding a trace step" if indexed is None else "writing a trace"
        result = await self._call(action, lambda: script(keys=keys, args=args))
        if isinstance(result, list):
            assert fence is not None
            raise trace_fenced(invocation_id, fence, _text(result[1]) or None)
        if int(result) == -1:
            raise trace_not_found(invocation_id)
        return None if int(result) == -3 else int(result)

    # --- the store -----------------------------------------------------------------------

    async def start(self, trace: Trace, *, fence: int | None = None) -> bool:
        key = SessionKey(trace.app_name, trace.user_id, trace.session_id)
        validate_identifier(trace.invocation_id, "invocation_id")
        if fence is not None:
            check_fence(fence)
        keys = [
            self._keys(trace.invocation_id)[0],
            self._index(key.app_name, key.user_id, key.session_id),
        ]
        args: list[str | int] = [
            trace.header().to_json(),
            "" if fence is None else fence,
            _ms(self.ttl),
            trace.invocation_id,
        ]
        result = await self._call("starting a trace", lambda: self._start(keys=keys, args=args))
        status = int(result[0])
        if status == 1:
            return True
        if status == -2:
            assert fence is not None
            raise trace_fenced(trace.invocation_id, fence, _text(result[1]))
        stored = decode_trace(result[1], keys[0])
        check_owner(stored, trace)
        stored.attempts += 1
        stored.status = "running"
        stored.ended_at = None
        await self._write(stored.invocation_id, stored, (), fence)
        return False

    async def add_step(self, invocation_id: str, step: Step, *, fence: int | None = None) -> bool:
        validate_identifier(invocation_id, "invocation_id")
        if fence is not None:
            check_fence(fence)
        return await self._write(invocation_id, None, [step], fence) == 1

    async def finish(self, trace: Trace, *, fence: int | None = None) -> None:
        validate_identifier(trace.invocation_id, "invocation_id")
        if fence is not None:
            check_fence(fence)
        await self._write(trace.invocation_id, trace, (), fence)

    async def write(
        self,
        invocation_id: str,
        steps: Sequence[Step],
        *,
        header: Trace | None = None,
        fence: int | None = None,
        start: Trace | None = None,
    ) -> None:
        validate_identifier(invocation_id, "invocation_id")
        if fence is not None:
            check_fence(fence)
        check_header_of(invocation_id, header, start)
        if start is not None:
            if await self._write(invocation_id, header, steps, fence, start=start) is not None:
                return
            await self.start(start, fence=fence)  # it exists: take it over, then write
        if steps or header is not None:
            await self._write(invocation_id, header, steps, fence)

    async def get(self, invocation_id: str) -> Trace | None:
        validate_identifier(invocation_id, "invocation_id")
        trace_key, steps_key, order_key = self._keys(invocation_id)

        async def read() -> list[Any]:
            pipe = self._client.pipeline(transaction=True)
            pipe.hget(trace_key, "header")
            pipe.hgetall(steps_key)
            pipe.zrange(order_key, 0, -1)
            return await pipe.execute()

        raw_header, raw_steps, order = await self._call("reading a trace", read)
        if raw_header is None:
            return None
        trace = decode_trace(raw_header, trace_key)
        trace.steps = [
            decode_step(raw_steps[step_id], f"{steps_key} {_text(step_id)!r}")
            for step_id in order
            if step_id in raw_steps
        ]
        return trace

    async def delete_session(self, app_name: str, user_id: str, session_id: str) -> int:
        key = SessionKey(app_name, user_id, session_id)
        index = self._index(key.app_name, key.user_id, key.session_id)

        async def delete() -> int:
            members = [_text(m) for m in await self._client.smembers(index)]
            pipe = self._client.pipeline(transaction=True)
            for invocation_id in members:
                pipe.delete(*self._keys(invocation_id))
            pipe.delete(index)
            replies = await pipe.execute()
            return sum(1 for reply in replies[:-1] if int(reply) > 0)

        return await self._call("deleting a session's traces", delete)

    async def close(self) -> None:
        if self._owns_client:
            with contextlib.suppress(RedisError, OSError):
                await self._client.aclose()
