"""One run per session at a time, across every worker: a Redis lease with a fencing token.

Per session (keys under ``{prefix}:session:{digest}:``, the digest of app, user and session ID):

- ``lease``    ``"{invocation_id}\\n{token}"`` with a short TTL (the recovery timeout), kept
               alive by the running worker's heartbeat. A killed worker stops beating and the
               lease expires, which is how a live run is told from a dead one.
- ``claim``    the invocation that owns the session until it *finishes*. It outlives the lease,
               so a killed run's redelivery gets the session back before any newer run:
               two runs never interleave in the session, even across a crash.
- ``waiters``  runs waiting (``enqueue``), oldest first; each refreshes its entry while it
               waits, so a waiter that died is dropped instead of blocking the line.

``token`` comes from one global counter, so it grows with every grant: a holder whose lease
expired (and was granted to someone else) finds out at its next heartbeat and stops.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from runner_core.session import SessionKey

__all__ = ["Busy", "Lease", "SessionLocks"]

#: A waiter that has not asked again for this long is taken for dead and leaves the line.
WAITER_TTL_MS = 15_000

# KEYS: lease, claim, waiters, seen, token counter.
# ARGV: invocation id, lease ms, claim ms, now ms, "wait" | "try", waiter ms.
# Returns {1, token} when granted, {0, holder, reason} when not.
_ACQUIRE = """
local inv = ARGV[1]
local lease = redis.call('GET', KEYS[1])
if lease then
  return {0, string.match(lease, '^(.-)\\n'), 'running'}
end
local claim = redis.call('GET', KEYS[2])
if claim and claim ~= inv then
  return {0, claim, 'claimed'}
end
if not claim then
  local now = tonumber(ARGV[4])
  if ARGV[5] == 'wait' then
    redis.call('ZADD', KEYS[3], 'NX', now, inv)
    redis.call('HSET', KEYS[4], inv, now)
    redis.call('PEXPIRE', KEYS[3], ARGV[3])
    redis.call('PEXPIRE', KEYS[4], ARGV[3])
  end
  for _, waiter in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    local seen = tonumber(redis.call('HGET', KEYS[4], waiter) or '0')
    if now - seen > tonumber(ARGV[6]) then
      redis.call('ZREM', KEYS[3], waiter)
      redis.call('HDEL', KEYS[4], waiter)
    elseif waiter ~= inv then
      return {0, waiter, 'queued'}
    else
      break
    end
  end
end
local token = redis.call('INCR', KEYS[5])
redis.call('SET', KEYS[1], inv .. '\\n' .. token, 'PX', ARGV[2])
redis.call('SET', KEYS[2], inv, 'PX', ARGV[3])
redis.call('ZREM', KEYS[3], inv)
redis.call('HDEL', KEYS[4], inv)
return {1, tostring(token)}
"""

# KEYS: lease, claim. ARGV: invocation id, token, lease ms, claim ms.
# A lease that vanished (expired during a Redis blip, or Redis restarted empty) is taken back
# when nobody else took the session meanwhile.
_HEARTBEAT = """
local mine = ARGV[1] .. '\\n' .. ARGV[2]
local current = redis.call('GET', KEYS[1])
if current ~= mine then
  if current then
    return 0
  end
  local claim = redis.call('GET', KEYS[2])
  if claim and claim ~= ARGV[1] then
    return 0
  end
end
redis.call('SET', KEYS[1], mine, 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[4])
return 1
"""

# KEYS: lease, claim. ARGV: invocation id, token, "1" if the run finished.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] .. '\\n' .. ARGV[2] then
  redis.call('DEL', KEYS[1])
end
if ARGV[3] == '1' and redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
return 1
"""

# KEYS: waiters, seen. ARGV: invocation id.
_LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""


@dataclass(frozen=True, slots=True)
class Lease:
    """The session is ours: ``token`` is the fencing token of this grant."""

    digest: str
    invocation_id: str
    token: int


@dataclass(frozen=True, slots=True)
class Busy:
    """The session is not ours (yet).

    ``reason``: ``running`` (``holder`` holds the live lease), ``claimed`` (``holder`` started
    and has not finished: it is being recovered) or ``queued`` (``holder`` waits ahead of us).
    """

    holder: str
    reason: str


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class SessionLocks:
    """Session leases in Redis.

    Args:
        redis: an asyncio client (never closed here).
        prefix: the key prefix (the events prefix).
        lease_ttl_s: a lease's life without a heartbeat.
        claim_ttl_s: how long an unfinished run keeps its claim without a heartbeat (how long
            the session waits for a killed run to be redelivered before others may go).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str,
        lease_ttl_s: float,
        claim_ttl_s: float,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.lease_ms = max(1, int(lease_ttl_s * 1000))
        self.claim_ms = max(self.lease_ms, int(claim_ttl_s * 1000))
        self._acquire = redis.register_script(_ACQUIRE)
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._release = redis.register_script(_RELEASE)
        self._leave = redis.register_script(_LEAVE)

    def digest(self, key: SessionKey) -> str:
        raw = json.dumps([key.app_name, key.user_id, key.session_id])
        return hashlib.sha256(raw.encode()).hexdigest()[:32]

    def _keys(self, digest: str) -> list[str]:
        base = f"{self.prefix}:session:{digest}"
        return [f"{base}:lease", f"{base}:claim", f"{base}:waiters", f"{base}:waiters-seen"]

    async def acquire(self, key: SessionKey, invocation_id: str, *, wait: bool) -> Lease | Busy:
        """Take the session for ``invocation_id`` if free, in one atomic step.

        With ``wait`` the invocation joins (or stays in) the line of waiters; call again to
        keep its place. Without, it only takes a free session nobody waits for.
        """
        digest = self.digest(key)
        keys = [*self._keys(digest), f"{self.prefix}:session-lease-token"]
        now_ms = int(time.time() * 1000)
        mode = "wait" if wait else "try"
        args: list[str | int] = [
            invocation_id,
            self.lease_ms,
            self.claim_ms,
            now_ms,
            mode,
            WAITER_TTL_MS,
        ]
        reply = await self._acquire(keys=keys, args=args)
        if int(reply[0]) == 1:
            return Lease(digest, invocation_id, int(_text(reply[1])))
        return Busy(holder=_text(reply[1]), reason=_text(reply[2]))

    async def heartbeat(self, lease: Lease) -> bool:
        """Extend the lease and the claim; False if the lease is no longer ours."""
        keys = self._keys(lease.digest)[:2]
        args: list[str | int] = [lease.invocation_id, lease.token, self.lease_ms, self.claim_ms]
        return bool(await self._heartbeat(keys=keys, args=args))

    async def release(self, lease: Lease, *, finished: bool) -> None:
        """Give the lease back; with ``finished`` also the claim (the run is over)."""
        keys = self._keys(lease.digest)[:2]
        await self._release(
            keys=keys, args=[lease.invocation_id, str(lease.token), "1" if finished else "0"]
        )

    async def leave(self, key: SessionKey, invocation_id: str) -> None:
        """Stop waiting for the session (a waiter that was cancelled or gave up)."""
        keys = self._keys(self.digest(key))[2:]
        await self._leave(keys=keys, args=[invocation_id])

    async def finish_claim(self, key: SessionKey, invocation_id: str) -> None:
        """Drop ``invocation_id``'s claim without holding the lease (it ended elsewhere)."""
        await self._release(keys=self._keys(self.digest(key))[:2], args=[invocation_id, "-", "1"])
