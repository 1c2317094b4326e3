"""The in-memory artifact store: this process only, gone when it exits.

Shipped code that passes the same conformance suite as the other stores; the default for
tests and for scripts that need artifacts for one process's lifetime.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from .artifacts import (
    DEFAULT_MAX_ARTIFACT_BYTES,
    Artifact,
    ArtifactKey,
    ArtifactVersion,
    BaseArtifactService,
    RunFence,
)
from .session import USER_PREFIX, SessionKey
from .store_support import fenced

__all__ = ["InMemoryArtifactService"]

# (app, user, session or None) -> path -> versions, oldest first
_Scope = tuple[str, str, str | None]


@dataclass(frozen=True, slots=True)
class _Stored:
    artifact: Artifact
    idempotency_key: str | None


class InMemoryArtifactService(BaseArtifactService):
    """Artifacts in a dict of this process; see :class:`~runner_core.artifacts.ArtifactService`.

    Args:
        max_size: the largest version accepted, in bytes.
    """

    def __init__(self, *, max_size: int = DEFAULT_MAX_ARTIFACT_BYTES) -> None:
        super().__init__(max_size=max_size)
        self._scopes: dict[_Scope, dict[str, list[_Stored]]] = {}
        self._fences: dict[SessionKey, int] = {}
        # One process may run several event loops (a worker's, run_sync's): every access
        # holds the lock.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"InMemoryArtifactService(max_size={self.max_size})"

    def _check(self, fence: RunFence | None) -> None:
        if fence is None:
            return
        holder = self._fences.get(fence.session, 0)
        if holder > fence.token:
            raise fenced(fence.session, fence.token, holder)

    async def _save(
        self,
        key: ArtifactKey,
        data: bytes,
        content_type: str,
        fence: RunFence | None,
        idempotency_key: str | None,
    ) -> ArtifactVersion:
        with self._lock:
            self._check(fence)
            versions = self._scopes.setdefault(
                (key.app_name, key.user_id, key.session_id), {}
            ).setdefault(key.path, [])
            if idempotency_key is not None:
                for stored in versions:
                    if stored.idempotency_key == idempotency_key:
                        return stored.artifact.info
            info = ArtifactVersion(
                name=key.name,
                version=len(versions),
                content_type=content_type,
                size=len(data),
                created_at=datetime.now(UTC),
            )
            versions.append(_Stored(Artifact(info, data), idempotency_key))
        return info

    async def _load(self, key: ArtifactKey, version: int | None) -> Artifact | None:
        with self._lock:
            versions = self._scopes.get((key.app_name, key.user_id, key.session_id), {}).get(
                key.path, []
            )
            if not versions:
                return None
            if version is None:
                return versions[-1].artifact
            return versions[version].artifact if version < len(versions) else None

    async def _names(self, app_name: str, user_id: str, session_id: str | None) -> list[str]:
        with self._lock:
            names = [USER_PREFIX + path for path in self._scopes.get((app_name, user_id, None), {})]
            if session_id is not None:
                names.extend(self._scopes.get((app_name, user_id, session_id), {}))
        return names

    async def _versions(self, key: ArtifactKey) -> list[ArtifactVersion]:
        with self._lock:
            scope = self._scopes.get((key.app_name, key.user_id, key.session_id), {})
            return [stored.artifact.info for stored in scope.get(key.path, [])]

    async def _delete(self, key: ArtifactKey, fence: RunFence | None) -> None:
        with self._lock:
            self._check(fence)
            self._scopes.get((key.app_name, key.user_id, key.session_id), {}).pop(key.path, None)

    async def _delete_session(self, session: SessionKey) -> None:
        with self._lock:
            self._scopes.pop((session.app_name, session.user_id, session.session_id), None)
            self._fences.pop(session, None)

    async def _take_fence(self, session: SessionKey, token: int) -> None:
        with self._lock:
            holder = self._fences.get(session, 0)
            if holder > token:
                raise fenced(session, token, holder)
            self._fences[session] = token
