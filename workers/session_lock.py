"""One run per session at a time, across every worker: a Redis lease with a fencing token.

Per session (keys under ``{prefix}:session:{digest}:``, the digest of app, user and session ID):

- ``lease``    ``"{invocation_id}\\n{token}"`` with a short TTL (the recovery timeout), kept
               alive by the running worker's heartbeat. A killed worker stops beating and the
               lease expires, which is how a live run is told from a dead one.
- ``claim``    the invocation that owns the session until it *finishes*. It outlives the lease,
               so a killed run's redelivery gets the session back before any newer run:
               two runs never interleave in the session, even across a crash.
- ``waiters``  the line: runs waiting (``enqueue``, ``interrupt``), scored by their *ticket*,
               drawn from the token counter at the delivery's first claim, i.e. when the run
               first reached a worker (not when it was submitted: runs sent together are
               fetched by several workers, or several threads of one, whose claims race).
               Each refreshes its entry while it waits, so a waiter that died is dropped
               (after ``WAITER_TTL_MS``) instead of blocking the line. When the session frees
               up, the live waiter with the lowest ticket gets it; a ``reject`` run never
               goes ahead of one.

- ``fence``    the token of the session's last grant (kept a day): a holder whose lease expired
               may take it back only while this is still its own token.

``token`` comes from one global counter, so it grows with every grant; it is the fencing token
every write of the run checks (docs/workers.md, "Ownership and fencing"). The counter starts
from the Redis server's clock in microseconds when it is missing, so tokens keep growing even
after a Redis that lost its data. A holder whose lease was granted to someone else finds out at
its next heartbeat or write and stops. A holder whose lease expired without anyone else being
granted the session takes it back (nobody else can have written meanwhile).

The first claim of an invocation binds its ID to the session's (app, user, session) in
``{prefix}:owner:{invocation_id}``; a claim of the same ID for another identity is refused
before the script writes or reads anything else (:class:`InvocationOwnedError`).

:meth:`SessionLocks.claim` is how a delivery of a run starts, in one script (one round trip):
it returns the run's completion if the run already finished (its stream ends with
``runner.completion``), else takes the session (or says who has it), counts the attempt
(``{prefix}:attempts:{invocation_id}``), and reports the ``seq`` of the last published event and
whether a cancel was requested.

On Redis Cluster (a ``RedisCluster`` client) the claim touches the session's keys and the run's
in one script, so they share the session's hash slot (:func:`runner_core.wire.session_tag`): the
lease keys are ``{prefix}:session:{{digest}}:*``, the run's keys carry the same tag, and the
token counter is the session's own ``{prefix}:session:{{digest}}:token`` (tokens are compared
only within a session; it starts from the server's clock too). Before the script, the claim
binds the invocation to its session (:mod:`workers.locator`) and reads the run's cancel key,
which lives in its own slot (a cancel needs only the invocation ID).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from runner_core.events import RunCompletionEvent
from runner_core.session import SessionKey
from runner_core.wire import (
    ATTEMPTS_TTL_S,
    OWNER_TTL_S,
    STREAM_FIELD,
    SessionLockPart,
    attempts_key,
    cancel_key,
    lease_token_key,
    owner_key,
    session_digest,
    session_lock_key,
    session_tag,
    stream_key,
)
from session_backends.redis_target import AsyncRedis

from .bus import (
    Fence,
    decode_completion,
    invocation_owned,
    owner_identity,
    with_completion_type,
)
from .locator import InvocationLocator

__all__ = ["Busy", "Claimed", "Lease", "SessionLocks"]

#: A waiter that has not asked again for this long is taken for dead and leaves the line.
WAITER_TTL_MS = 15_000
#: How long a session remembers its last grant: a holder paused for longer than this may take
#: its lease back (if it expired and nobody holds it), so keep it well above any pause.
FENCE_TTL_S = 86_400

# KEYS: lease, claim, waiters, seen, token counter, event stream, attempts, owner, fence, and
#       the cancel key (not on Redis Cluster: it is in another slot, and ARGV[11] says instead).
# ARGV: invocation id, lease ms, claim ms, now ms, "wait" | "try", waiter ms, attempts ttl s,
#       stream field, identity, owner ttl s, cancel requested (0 or 1, without a cancel key).
# Returns {4, owner} if the invocation ID belongs to another identity (nothing is read or
# written); {2, event json} if the run already completed; {3, entry id, raw} if the stream's
# last entry is unreadable; {0, holder, reason, cancel, ticket or false} when the session is
# not ours; {1, token, attempt, last seq or -1, cancel} when it is.
# Tokens are formatted with %d: Lua would write a large number as 1.7e+15.
_CLAIM = with_completion_type(
    """
local inv = ARGV[1]
local owner = redis.call('GET', KEYS[8])
if owner and owner ~= ARGV[9] then return {4, owner} end
redis.call('SET', KEYS[8], ARGV[9], 'EX', ARGV[10])
if redis.call('EXISTS', KEYS[5]) == 0 then
  local now = redis.call('TIME')
  redis.call('SET', KEYS[5], now[1] .. string.format('%06d', tonumber(now[2])))
end
local cancel = tonumber(ARGV[11])
if KEYS[10] then cancel = redis.call('EXISTS', KEYS[10]) end
local last_seq = -1
local last = redis.call('XREVRANGE', KEYS[6], '+', '-', 'COUNT', 1)
if last[1] then
  local fields, raw = last[1][2], ''
  for i = 1, #fields, 2 do
    if fields[i] == ARGV[8] then raw = fields[i + 1] end
  end
  local ok, event = pcall(cjson.decode, raw)
  if not ok or type(event) ~= 'table' or type(event.seq) ~= 'number' then
    return {3, last[1][1], raw}
  end
  if event.type == COMPLETION_TYPE then
    redis.call('ZREM', KEYS[3], inv)
    redis.call('HDEL', KEYS[4], inv)
    return {2, raw}
  end
  last_seq = event.seq
end
local now = tonumber(ARGV[4])
local lease = redis.call('GET', KEYS[1])
local holder = lease and string.match(lease, '^(.-)\\n')
local claim = redis.call('GET', KEYS[2])
if ARGV[5] == 'wait' and holder ~= inv and claim ~= inv then
  if not redis.call('ZSCORE', KEYS[3], inv) then
    -- the line's order comes from the counter: clocks of different workers may disagree
    redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[5]), inv)
  end
  redis.call('HSET', KEYS[4], inv, now)
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
  redis.call('PEXPIRE', KEYS[4], ARGV[3])
end
local ticket = redis.call('ZSCORE', KEYS[3], inv)
if lease then
  return {0, holder, 'running', cancel, ticket}
end
if claim and claim ~= inv then
  return {0, claim, 'claimed', cancel, ticket}
end
if not claim then
  for _, waiter in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    local seen = tonumber(redis.call('HGET', KEYS[4], waiter) or '0')
    if now - seen > tonumber(ARGV[6]) then
      redis.call('ZREM', KEYS[3], waiter)
      redis.call('HDEL', KEYS[4], waiter)
    elseif waiter ~= inv then
      return {0, waiter, 'queued', cancel, ticket}
    else
      break
    end
  end
end
local token = string.format('%d', redis.call('INCR', KEYS[5]))
redis.call('SET', KEYS[1], inv .. '\\n' .. token, 'PX', ARGV[2])
redis.call('SET', KEYS[2], inv, 'PX', ARGV[3])
redis.call('SET', KEYS[9], token, 'EX', ARGV[10])
redis.call('ZREM', KEYS[3], inv)
redis.call('HDEL', KEYS[4], inv)
local attempt = redis.call('INCR', KEYS[7])
redis.call('EXPIRE', KEYS[7], ARGV[7])
return {1, token, attempt, last_seq, cancel}
"""
)

# KEYS: lease, claim, fence. ARGV: invocation id, token, lease ms, claim ms, fence ttl s.
# A lease that vanished (expired during a Redis blip or a pause, or Redis restarted empty) is
# taken back only when nobody else was granted the session meanwhile: the session's last grant
# (its fence) is still this token, or was lost with the data.
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
  local fence = redis.call('GET', KEYS[3])
  if fence and fence ~= ARGV[2] then
    return 0
  end
end
redis.call('SET', KEYS[1], mine, 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[4])
redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[5])
return 1
"""

# KEYS: lease, claim, fence. ARGV: invocation id, token ('-': no lease), "1" if the run finished.
# The claim goes only with the session's last grant: a stale delivery never frees the session
# under the delivery that took its run over (same invocation, newer token).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] .. '\\n' .. ARGV[2] then
  redis.call('DEL', KEYS[1])
end
if ARGV[3] == '1' and redis.call('GET', KEYS[2]) == ARGV[1] then
  local fence = redis.call('GET', KEYS[3])
  if ARGV[2] == '-' or not fence or fence == ARGV[2] then
    redis.call('DEL', KEYS[2])
  end
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
class Claimed:
    """A delivery got its session: the lease, which attempt this is (1 for the first
    delivery), the ``seq`` of the run's last published event (None if none) and whether a
    cancel was requested before it started."""

    lease: Lease
    attempt: int
    last_seq: int | None
    cancel_requested: bool


@dataclass(frozen=True, slots=True)
class Busy:
    """The session is not ours (yet).

    ``reason``: ``running`` (``holder`` holds the live lease), ``claimed`` (``holder`` started
    and has not finished: it is being recovered) or ``queued`` (``holder`` waits ahead of us).
    ``cancel_requested``: a cancel was requested for the waiting run.
    ``ticket``: the run's place in the session's line (claims with ``wait``), fixed at its
    first claim; the line goes by ticket, lowest first. Informational: not compared.
    """

    holder: str
    reason: str
    cancel_requested: bool = False
    ticket: int | None = field(default=None, compare=False)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class SessionLocks:
    """Session leases in Redis.

    Args:
        redis: an asyncio client (never closed here): ``redis.asyncio.Redis``, or
            ``RedisCluster`` (then the keys carry the session's hash tag).
        prefix: the key prefix (the events prefix).
        lease_ttl_s: a lease's life without a heartbeat.
        claim_ttl_s: how long an unfinished run keeps its claim without a heartbeat (how long
            the session waits for a killed run to be redelivered before others may go).
        locator: on a cluster, how invocations are bound to sessions (share the bus's).
    """

    def __init__(
        self,
        redis: AsyncRedis,
        *,
        prefix: str,
        lease_ttl_s: float,
        claim_ttl_s: float,
        locator: InvocationLocator | None = None,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.locator = locator or InvocationLocator(redis, prefix=prefix)
        self.cluster = self.locator.cluster
        self.lease_ms = max(1, int(lease_ttl_s * 1000))
        self.claim_ms = max(self.lease_ms, int(claim_ttl_s * 1000))
        self._claim = redis.register_script(_CLAIM)
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._release = redis.register_script(_RELEASE)
        self._leave = redis.register_script(_LEAVE)

    def digest(self, key: SessionKey) -> str:
        return session_digest(key.app_name, key.user_id, key.session_id)

    def _keys(self, digest: str) -> list[str]:
        parts: tuple[SessionLockPart, ...] = ("lease", "claim", "waiters", "waiters-seen")
        return [session_lock_key(digest, part, self.prefix, cluster=self.cluster) for part in parts]

    def _fence_key(self, digest: str) -> str:
        return session_lock_key(digest, "fence", self.prefix, cluster=self.cluster)

    def fence(self, lease: Lease) -> Fence:
        """What a publish of this lease's run checks (:meth:`workers.bus.EventBus.publish`)."""
        return Fence(self._keys(lease.digest)[0], f"{lease.invocation_id}\n{lease.token}")

    async def claim(
        self, key: SessionKey, invocation_id: str, *, wait: bool
    ) -> Claimed | Busy | RunCompletionEvent:
        """Start a delivery of ``invocation_id`` on ``key``'s session, in one atomic step.

        Returns the run's ``runner.completion`` if it already finished (nothing is taken);
        :class:`Claimed` if the session was free (the attempt is counted); else
        :class:`Busy`. With ``wait`` the invocation joins (or stays in) the line of waiters;
        call again to keep its place. Without, it only takes a free session nobody waits for.
        The first claim binds ``invocation_id`` to ``key``'s (app, user, session).

        Raises:
            InvocationOwnedError: ``invocation_id`` is bound to another (app, user, session);
                nothing was read or written.
            EventBusError: the run's last stream entry is not a readable event.
        """
        digest = self.digest(key)
        identity = owner_identity(key.app_name, key.user_id, key.session_id)
        tag, cancelled = "", 0
        if self.cluster:
            _, other = await self.locator.bind(
                invocation_id, key.app_name, key.user_id, key.session_id
            )
            if other is not None:
                raise invocation_owned(invocation_id, other, identity)
            tag = session_tag(digest)
            cancelled = int(await self.redis.exists(cancel_key(invocation_id, self.prefix)))
        keys = [
            *self._keys(digest),
            session_lock_key(digest, "token", self.prefix, cluster=True)
            if self.cluster
            else lease_token_key(self.prefix),
            stream_key(invocation_id, self.prefix, tag),
            attempts_key(invocation_id, self.prefix, tag),
            owner_key(invocation_id, self.prefix, tag),
            self._fence_key(digest),
        ]
        if not self.cluster:
            keys.append(cancel_key(invocation_id, self.prefix))
        args: list[str | int] = [
            invocation_id,
            self.lease_ms,
            self.claim_ms,
            int(time.time() * 1000),
            "wait" if wait else "try",
            WAITER_TTL_MS,
            ATTEMPTS_TTL_S,
            STREAM_FIELD,
            identity,
            OWNER_TTL_S,
            cancelled,
        ]
        reply = await self._claim(keys=keys, args=args)
        code = int(reply[0])
        if code == 4:
            raise invocation_owned(invocation_id, reply[1], identity)
        if code == 1:
            last_seq = int(reply[3])
            return Claimed(
                Lease(digest, invocation_id, int(_text(reply[1]))),
                attempt=int(reply[2]),
                last_seq=None if last_seq < 0 else last_seq,
                cancel_requested=bool(int(reply[4])),
            )
        if code == 0:
            ticket = reply[4] if len(reply) > 4 else None
            return Busy(
                _text(reply[1]),
                _text(reply[2]),
                bool(int(reply[3])),
                None if ticket is None else int(float(_text(ticket))),
            )
        where = keys[5] if code == 2 else f"{keys[5]} {_text(reply[1])}"
        return decode_completion(reply[-1], where=where)

    async def heartbeat(self, lease: Lease) -> bool:
        """Extend the lease and the claim (taking back a lease that expired if nobody was
        granted the session since); False if the lease is no longer ours."""
        keys = [*self._keys(lease.digest)[:2], self._fence_key(lease.digest)]
        args: list[str | int] = [
            lease.invocation_id,
            lease.token,
            self.lease_ms,
            self.claim_ms,
            FENCE_TTL_S,
        ]
        return bool(await self._heartbeat(keys=keys, args=args))

    async def release(self, lease: Lease, *, finished: bool) -> None:
        """Give the lease back; with ``finished`` also the claim (the run is over), unless the
        session was granted to another delivery since."""
        keys = [*self._keys(lease.digest)[:2], self._fence_key(lease.digest)]
        await self._release(
            keys=keys, args=[lease.invocation_id, str(lease.token), "1" if finished else "0"]
        )

    async def leave(self, key: SessionKey, invocation_id: str) -> None:
        """Stop waiting for the session (a waiter that was cancelled or gave up)."""
        keys = self._keys(self.digest(key))[2:]
        await self._leave(keys=keys, args=[invocation_id])

    async def finish_claim(self, key: SessionKey, invocation_id: str) -> None:
        """Drop ``invocation_id``'s claim without holding the lease (it ended elsewhere)."""
        digest = self.digest(key)
        keys = [*self._keys(digest)[:2], self._fence_key(digest)]
        await self._release(keys=keys, args=[invocation_id, "-", "1"])
