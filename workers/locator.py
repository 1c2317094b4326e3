"""On Redis Cluster: which session an invocation belongs to, so which hash tag its keys carry.

A run's keys (stream, channel, owner, attempts) share a hash slot with its session's lease keys
because a fenced write touches both in one script (docs/workers.md, "Redis Cluster"). Their
names therefore carry the session's tag (:func:`runner_core.wire.session_tag`), which a reader
that has only the invocation ID cannot compute. The locator key ``{prefix}:locator:{id}``
holds the session digest: written by :func:`workers.client.submit` before it sends the run and
by the first worker that takes the run or publishes for it, read by subscribers and cancels.

It also binds the ID to its session, as the owner key does on one Redis: the first writer
wins, and a later one for another session is refused (the caller raises
:class:`~runner_core.errors.InvocationOwnedError`). On a single Redis nothing here touches Redis:
:meth:`InvocationLocator.bind` and :meth:`InvocationLocator.locate` return the empty tag.
"""

from __future__ import annotations

from collections import OrderedDict

from runner_core.wire import OWNER_TTL_S, locator_key, session_digest, session_tag
from session_backends.redis_target import AsyncRedis, is_cluster_client

__all__ = ["BIND_LUA", "InvocationLocator"]

#: Invocations whose tag a process remembers (a run's publishes then cost no look-up).
_CACHE_SIZE = 4096

# KEYS: locator. ARGV: session digest, ttl seconds. Returns false when the locator holds the
# digest now (written or refreshed), else the other digest it holds (nothing is written).
BIND_LUA = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then return current end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class InvocationLocator:
    """Binds invocations to sessions and finds them again, on Redis Cluster.

    Args:
        redis: the events client (never closed here). ``cluster`` is whether it is a
            ``RedisCluster``; on a single Redis every tag is ``""`` (the names of
            :mod:`runner_core.wire` without a tag).
        prefix: the events prefix.
    """

    def __init__(self, redis: AsyncRedis, *, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self.cluster = is_cluster_client(redis)
        self._bind = redis.register_script(BIND_LUA)
        self._digests: OrderedDict[str, str] = OrderedDict()

    def _remember(self, invocation_id: str, digest: str) -> None:
        self._digests[invocation_id] = digest
        self._digests.move_to_end(invocation_id)
        while len(self._digests) > _CACHE_SIZE:
            self._digests.popitem(last=False)

    async def bind(
        self, invocation_id: str, app_name: str, user_id: str, session_id: str
    ) -> tuple[str, str | None]:
        """Bind ``invocation_id`` to the session (first writer wins; refreshes the binding's
        day of life) and return ``(tag, other)``: the session's tag and ``None``, or, when the
        ID is bound to another session, ``("", that session's digest)`` (nothing written)."""
        if not self.cluster:
            return "", None
        digest = session_digest(app_name, user_id, session_id)
        if self._digests.get(invocation_id) == digest:
            return session_tag(digest), None
        other = await self._bind(
            keys=[locator_key(invocation_id, self.prefix)], args=[digest, OWNER_TTL_S]
        )
        if other:
            return "", _text(other)
        self._remember(invocation_id, digest)
        return session_tag(digest), None

    async def locate(self, invocation_id: str) -> str | None:
        """The tag of ``invocation_id``'s keys: ``""`` on a single Redis; on a cluster the tag
        of the session it is bound to, or None while nothing bound it (not submitted with
        :func:`workers.client.submit`, not taken by a worker yet, or expired)."""
        if not self.cluster:
            return ""
        digest = self._digests.get(invocation_id)
        if digest is None:
            raw = await self.redis.get(locator_key(invocation_id, self.prefix))
            if raw is None:
                return None
            digest = _text(raw)
            self._remember(invocation_id, digest)
        return session_tag(digest)
