"""The index of a blob artifact store, in Redis.

Keys, for the prefix ``P`` (default ``agent-runner``), the hash tag ``{A/U}`` of the app and
user (so every key of one user sits in one cluster slot) and the scope ``S`` (``s/<session>``,
or ``u`` for ``user:`` names), every part percent-encoded:

- ``P:artifact-versions:{A/U}:S:<name>``: a hash, version -> JSON (content type, size, time,
  location of the bytes);
- ``P:artifact-keys:{A/U}:S:<name>``: a hash, idempotency key -> version;
- ``P:artifact-names:{A/U}:S``: a set of the scope's names (encoded);
- ``P:artifact-fence:{A/U}:s/<session>``: the session's fencing token.

Each write is one Lua script, so allocating a version (the hash's length), recording it and
checking the fence happen as one step, whatever the number of writers.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

import redis.asyncio as aioredis
import redis.exceptions

from runner_core.artifacts import ArtifactKey, ArtifactVersion, RunFence
from runner_core.errors import ArtifactBackendError, ConfigurationError
from runner_core.session import USER_PREFIX, SessionKey
from runner_core.store_support import fenced
from runner_core.wire import DEFAULT_EVENTS_PREFIX

__all__ = ["RedisArtifactIndex"]

T = TypeVar("T")

# KEYS: versions, names, fence (an unwritten key of the slot when unfenced), idempotency keys.
# ARGV: token or "", the entry's JSON, the name, the idempotency key or "". Returns {version},
# {-1, holder} (fenced), or {-2, version, entry} (saved before under that idempotency key).
_COMMIT = """
if ARGV[1] ~= '' then
  local holder = tonumber(redis.call('GET', KEYS[3]) or '0')
  if holder > tonumber(ARGV[1]) then return {-1, holder} end
end
if ARGV[4] ~= '' then
  local before = redis.call('HGET', KEYS[4], ARGV[4])
  if before then return {-2, tonumber(before), redis.call('HGET', KEYS[1], before)} end
end
local version = redis.call('HLEN', KEYS[1])
redis.call('HSET', KEYS[1], tostring(version), ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[4], ARGV[4], version) end
return {version}
"""

# KEYS: versions, names, fence, idempotency keys. ARGV: token or "", the name. Returns
# {entries...} or {-1, holder}.
_REMOVE = """
if ARGV[1] ~= '' then
  local holder = tonumber(redis.call('GET', KEYS[3]) or '0')
  if holder > tonumber(ARGV[1]) then return {-1, holder} end
end
local entries = redis.call('HVALS', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[4])
redis.call('SREM', KEYS[2], ARGV[2])
return entries
"""

# KEYS: names, fence. ARGV: the versions key of a name minus the name, the same for its
# idempotency keys. Returns the entries.
_REMOVE_SESSION = """
local gone = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[1] .. name
  for _, entry in ipairs(redis.call('HVALS', key)) do table.insert(gone, entry) end
  redis.call('DEL', key, ARGV[2] .. name)
end
redis.call('DEL', KEYS[1], KEYS[2])
return gone
"""

# KEYS: fence. ARGV: token. Returns 0, or the greater token holding the fence.
_TAKE_FENCE = """
local holder = tonumber(redis.call('GET', KEYS[1]) or '0')
if holder > tonumber(ARGV[1]) then return holder end
redis.call('SET', KEYS[1], ARGV[1])
return 0
"""


def _q(value: str) -> str:
    return quote(value, safe="")


class RedisArtifactIndex:
    """Artifact versions in Redis (see the module docstring).

    Args:
        url: ``redis://host:port/db`` (``rediss://``, ``unix://`` too).
        key_prefix: put before every key (default ``agent-runner``).
        client: an existing ``redis.asyncio.Redis`` to use instead of ``url`` (not closed).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        key_prefix: str = DEFAULT_EVENTS_PREFIX,
        client: aioredis.Redis | None = None,
    ) -> None:
        if (url is None) == (client is None):
            raise ConfigurationError("RedisArtifactIndex needs a url or a client (one of them).")
        if client is None:
            assert url is not None
            try:
                client = aioredis.Redis.from_url(url, decode_responses=False)
            except ValueError as exc:
                raise ConfigurationError(f"bad Redis URL for the artifact index: {exc}") from exc
        self._owns_client = url is not None
        self._client: aioredis.Redis = client
        self.key_prefix = key_prefix
        self._where = "the given client" if url is None else _host_of(url)
        self._commit = client.register_script(_COMMIT)
        self._remove = client.register_script(_REMOVE)
        self._remove_session = client.register_script(_REMOVE_SESSION)
        self._take = client.register_script(_TAKE_FENCE)

    def __repr__(self) -> str:
        return f"RedisArtifactIndex({self._where}, key_prefix={self.key_prefix!r})"

    # --- keys --------------------------------------------------------------------------------

    def _scope(self, app_name: str, user_id: str, session_id: str | None) -> str:
        scope = "u" if session_id is None else f"s/{_q(session_id)}"
        return "{" + _q(app_name) + "/" + _q(user_id) + "}:" + scope

    def _versions_key(self, key: ArtifactKey) -> str:
        scope = self._scope(key.app_name, key.user_id, key.session_id)
        return f"{self.key_prefix}:artifact-versions:{scope}:{_q(key.path)}"

    def _keys_key(self, key: ArtifactKey) -> str:
        scope = self._scope(key.app_name, key.user_id, key.session_id)
        return f"{self.key_prefix}:artifact-keys:{scope}:{_q(key.path)}"

    def _names_key(self, app_name: str, user_id: str, session_id: str | None) -> str:
        return f"{self.key_prefix}:artifact-names:{self._scope(app_name, user_id, session_id)}"

    def _fence_key(self, app_name: str, user_id: str, session_id: str | None) -> str:
        if session_id is None:  # still a key of the user's slot, never written
            return f"{self.key_prefix}:artifact-fence:{self._scope(app_name, user_id, None)}"
        scope = self._scope(app_name, user_id, session_id)
        return f"{self.key_prefix}:artifact-fence:{scope}"

    # --- plumbing ----------------------------------------------------------------------------

    async def _call(self, action: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ArtifactBackendError(
                f"Redis artifact index at {self._where} failed while {action}: "
                f"{type(exc).__name__}: {str(exc).rstrip('.')}. Check that Redis is up and "
                "reachable."
            ) from exc

    def _entry(self, key_name: str, version: int, raw: bytes | str) -> tuple[ArtifactVersion, str]:
        try:
            entry = json.loads(raw)
            info = ArtifactVersion(
                name=key_name,
                version=version,
                content_type=str(entry["content_type"]),
                size=int(entry["size"]),
                created_at=datetime.fromisoformat(entry["created_at"]),
            )
            return info, str(entry["location"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactBackendError(
                f"the Redis artifact index at {self._where} holds an unreadable entry for "
                f"{key_name!r} version {version} ({exc}); inspect it, then repair or delete "
                "the artifact."
            ) from exc

    # --- the index ---------------------------------------------------------------------------

    async def commit(
        self,
        key: ArtifactKey,
        *,
        content_type: str,
        size: int,
        created_at: datetime,
        location: str,
        fence: RunFence | None,
        idempotency_key: str | None,
    ) -> tuple[ArtifactVersion, bool]:
        entry = json.dumps(
            {
                "content_type": content_type,
                "size": size,
                "created_at": created_at.isoformat(),
                "location": location,
            }
        )
        keys = [
            self._versions_key(key),
            self._names_key(key.app_name, key.user_id, key.session_id),
            self._fence_of(key, fence),
            self._keys_key(key),
        ]
        token = str(fence.token) if fence is not None else ""
        args = [token, entry, _q(key.path), idempotency_key or ""]
        result: list[Any] = await self._call(
            f"saving {key.name!r}", lambda: self._commit(keys=keys, args=args)
        )
        if int(result[0]) == -1:
            assert fence is not None
            raise fenced(fence.session, fence.token, int(result[1]))
        if int(result[0]) == -2:
            return self._entry(key.name, int(result[1]), result[2])[0], False
        info = ArtifactVersion(
            name=key.name,
            version=int(result[0]),
            content_type=content_type,
            size=size,
            created_at=created_at,
        )
        return info, True

    def _fence_of(self, key: ArtifactKey, fence: RunFence | None) -> str:
        if fence is None:
            return self._fence_key(key.app_name, key.user_id, None)
        session = fence.session
        return self._fence_key(session.app_name, session.user_id, session.session_id)

    async def find(
        self, key: ArtifactKey, version: int | None
    ) -> tuple[ArtifactVersion, str] | None:
        versions_key = self._versions_key(key)

        async def read() -> tuple[int, bytes | str | None]:
            if version is not None:
                raw = await self._client.hget(versions_key, str(version))
                return version, raw
            count = int(await self._client.hlen(versions_key))
            if count == 0:
                return -1, None
            # Versions are never removed one by one, so the latest is the count minus one.
            return count - 1, await self._client.hget(versions_key, str(count - 1))

        found, raw = await self._call(f"loading {key.name!r}", read)
        return None if raw is None else self._entry(key.name, found, raw)

    async def names(self, app_name: str, user_id: str, session_id: str | None) -> list[str]:
        async def read() -> list[str]:
            user = await self._client.smembers(self._names_key(app_name, user_id, None))
            names = [USER_PREFIX + unquote(_text(path)) for path in user]
            if session_id is not None:
                own = await self._client.smembers(self._names_key(app_name, user_id, session_id))
                names.extend(unquote(_text(path)) for path in own)
            return names

        return await self._call("listing artifact names", read)

    async def versions(self, key: ArtifactKey) -> list[ArtifactVersion]:
        async def read() -> dict[bytes | str, bytes | str]:
            return await self._client.hgetall(self._versions_key(key))

        raw = await self._call(f"listing the versions of {key.name!r}", read)
        return [self._entry(key.name, int(_text(f)), value)[0] for f, value in raw.items()]

    def _locations(self, entries: list[Any], what: str) -> list[str]:
        return [self._entry(what, -1, raw)[1] for raw in entries if isinstance(raw, bytes | str)]

    async def remove(self, key: ArtifactKey, fence: RunFence | None) -> list[str]:
        keys = [
            self._versions_key(key),
            self._names_key(key.app_name, key.user_id, key.session_id),
            self._fence_of(key, fence),
            self._keys_key(key),
        ]
        token = str(fence.token) if fence is not None else ""
        result: list[Any] = await self._call(
            f"deleting {key.name!r}", lambda: self._remove(keys=keys, args=[token, _q(key.path)])
        )
        if result and isinstance(result[0], int) and result[0] < 0:
            assert fence is not None
            raise fenced(fence.session, fence.token, int(result[1]))
        return self._locations(result, key.name)

    async def remove_session(self, session: SessionKey) -> list[str]:
        app, user, sid = session.app_name, session.user_id, session.session_id
        keys = [self._names_key(app, user, sid), self._fence_key(app, user, sid)]
        scope = self._scope(app, user, sid)
        prefixes = [
            f"{self.key_prefix}:artifact-versions:{scope}:",
            f"{self.key_prefix}:artifact-keys:{scope}:",
        ]
        # The set holds the encoded names, the last part of each versions key.
        result: list[Any] = await self._call(
            f"deleting the artifacts of session {sid!r}",
            lambda: self._remove_session(keys=keys, args=prefixes),
        )
        return self._locations(result, f"session {sid!r}")

    async def take_fence(self, session: SessionKey, token: int) -> None:
        key = self._fence_key(session.app_name, session.user_id, session.session_id)
        holder = await self._call(
            "taking the artifact fence", lambda: self._take(keys=[key], args=[str(token)])
        )
        if int(holder) > 0:
            raise fenced(session, token, int(holder))

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()
            self._owns_client = False


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _host_of(url: str) -> str:
    try:
        parts = urlsplit(url)
        return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
    except ValueError:
        return "<unparsable URL>"
