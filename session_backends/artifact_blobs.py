"""Artifacts in a file system or object store, with their versions in an index.

The bytes go to any store fsspec reaches by URL: ``file:///var/lib/artifacts`` here, and
``s3://bucket/prefix``, ``gs://bucket/prefix``, ``az://...`` for users who install the matching
driver (``s3fs``, ``gcsfs``, ``adlfs``). Object stores do not offer the same conditional writes,
so nothing there decides a version: a save

1. writes the bytes under a new name that is never written again
   (``app=A/user=U/session=S/name=N/<uuid>.bin``; ``.../scope=user/...`` for ``user:`` names);
2. commits the index entry, which allocates the version atomically (Redis:
   :class:`~session_backends.artifact_index_redis.RedisArtifactIndex`, PostgreSQL:
   :class:`~session_backends.artifacts_postgres.PostgresArtifactIndex`) and checks the run's
   fence in the same step.

A save cut off between the two leaves bytes no index entry points to: never visible, and
removed with the session's folder. A refused or failed commit removes its bytes at once. A
read checks the size the index recorded, so a truncated or missing blob is reported
(:class:`~runner_core.errors.ArtifactBackendError`), never returned.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import fsspec
from fsspec.core import url_to_fs

from runner_core.artifacts import (
    DEFAULT_MAX_ARTIFACT_BYTES,
    Artifact,
    ArtifactKey,
    ArtifactVersion,
    BaseArtifactService,
    RunFence,
)
from runner_core.errors import ArtifactBackendError, ConfigurationError
from runner_core.session import SessionKey

__all__ = ["ArtifactIndex", "BlobArtifactService"]

T = TypeVar("T")

#: Quoted names longer than this are stored under their hash (file systems cap a path
#: segment at 255 bytes).
_MAX_SEGMENT = 200


class ArtifactIndex(Protocol):
    """Where a blob store's versions are decided and listed. Every method gets checked
    arguments (:class:`~runner_core.artifacts.BaseArtifactService` checked them)."""

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
        """Allocate the next version of ``key`` and record it, atomically with the fence
        check; ``(version, True)``. When a version of ``key`` was recorded with
        ``idempotency_key``, record nothing: ``(that version, False)``.

        Raises:
            FencedError: a greater token holds the session's fence; nothing was recorded.
        """
        ...

    async def find(
        self, key: ArtifactKey, version: int | None
    ) -> tuple[ArtifactVersion, str] | None:
        """The version (latest when None) and its location, or None."""
        ...

    async def names(self, app_name: str, user_id: str, session_id: str | None) -> list[str]: ...

    async def versions(self, key: ArtifactKey) -> list[ArtifactVersion]: ...

    async def remove(self, key: ArtifactKey, fence: RunFence | None) -> list[str]:
        """Forget every version of ``key``; the locations they had."""
        ...

    async def remove_session(self, session: SessionKey) -> list[str]:
        """Forget the session's artifacts (and its fence); the locations they had."""
        ...

    async def take_fence(self, session: SessionKey, token: int) -> None: ...

    async def close(self) -> None: ...


def _segment(label: str, value: str) -> str:
    """One path segment naming ``value``: never empty, ``.`` or ``..``, never containing
    ``/``, at most 255 bytes."""
    quoted = quote(value, safe="")
    if len(quoted) <= _MAX_SEGMENT:
        return f"{label}={quoted}"
    return f"{label}-sha256={hashlib.sha256(value.encode()).hexdigest()}"


def _session_folder(app_name: str, user_id: str, session_id: str | None) -> str:
    scope = _segment("session", session_id) if session_id is not None else "scope=user"
    return f"{_segment('app', app_name)}/{_segment('user', user_id)}/{scope}"


class BlobArtifactService(BaseArtifactService):
    """Bytes in a file system or object store (``blob_url``), versions in ``index``.

    Args:
        blob_url: where the bytes go: ``file:///path``, ``s3://bucket/prefix``, ... (any
            fsspec URL; the matching driver must be installed).
        index: the index of versions (Redis or PostgreSQL); closed by :meth:`close`.
        max_size: the largest version accepted, in bytes.
        storage_options: passed to the fsspec file system (credentials, endpoint, ...).

    Raises:
        ConfigurationError: the URL names a protocol fsspec does not know, or whose driver
            is not installed.
    """

    def __init__(
        self,
        blob_url: str,
        index: ArtifactIndex,
        *,
        max_size: int = DEFAULT_MAX_ARTIFACT_BYTES,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(max_size=max_size)
        options = dict(storage_options or {})
        protocol = blob_url.split("://", 1)[0] if "://" in blob_url else "file"
        if protocol in ("file", "local"):
            options.setdefault("auto_mkdir", True)
        try:
            fs, root = url_to_fs(blob_url, **options)
        except (ImportError, ValueError) as exc:
            raise ConfigurationError(
                f"artifact blob store {blob_url!r}: {exc} (install the fsspec driver for "
                f"{protocol}://, e.g. s3fs for s3://, gcsfs for gs://)."
            ) from exc
        self.blob_url = blob_url
        self.index = index
        self._fs: fsspec.AbstractFileSystem = fs
        self._root = root.rstrip("/")
        self._closed = False

    def __repr__(self) -> str:
        return f"BlobArtifactService({self.blob_url!r}, index={self.index!r})"

    # --- blobs -------------------------------------------------------------------------------

    def _path(self, relative: str) -> str:
        return f"{self._root}/{relative}" if self._root else relative

    async def _blob(self, action: str, call: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(call, *args)
        except (OSError, ValueError) as exc:
            raise ArtifactBackendError(
                f"artifact blob store {self.blob_url!r} failed while {action}: "
                f"{type(exc).__name__}: {exc}. Check that it is reachable and writable."
            ) from exc

    async def _remove_blobs(self, locations: list[str]) -> None:
        """Remove bytes no index entry points to any more; best effort (a leftover is never
        visible, only wasted space)."""
        for location in locations:
            try:
                await asyncio.to_thread(self._fs.rm, self._path(location))
            except (OSError, ValueError):
                pass

    # --- the backend -------------------------------------------------------------------------

    async def _save(
        self,
        key: ArtifactKey,
        data: bytes,
        content_type: str,
        fence: RunFence | None,
        idempotency_key: str | None,
    ) -> ArtifactVersion:
        folder = _session_folder(key.app_name, key.user_id, key.session_id)
        location = f"{folder}/{_segment('name', key.path)}/{uuid.uuid4().hex}.bin"
        await self._blob("writing bytes", self._fs.pipe_file, self._path(location), data)
        try:
            info, recorded = await self.index.commit(
                key,
                content_type=content_type,
                size=len(data),
                created_at=datetime.now(UTC),
                location=location,
                fence=fence,
                idempotency_key=idempotency_key,
            )
        except BaseException:
            await asyncio.shield(self._remove_blobs([location]))
            raise
        if not recorded:  # saved before under this idempotency key: these bytes are spare
            await self._remove_blobs([location])
        return info

    async def _load(self, key: ArtifactKey, version: int | None) -> Artifact | None:
        found = await self.index.find(key, version)
        if found is None:
            return None
        info, location = found
        data = await self._blob(f"reading {key.name!r}", self._fs.cat_file, self._path(location))
        if len(data) != info.size:
            raise ArtifactBackendError(
                f"artifact {key.name!r} version {info.version} in {self.blob_url!r} has "
                f"{len(data)} bytes, its index says {info.size}: the blob was changed or cut "
                "short outside agent-runner. Restore it from a backup or delete the artifact."
            )
        return Artifact(info, data)

    async def _names(self, app_name: str, user_id: str, session_id: str | None) -> list[str]:
        return await self.index.names(app_name, user_id, session_id)

    async def _versions(self, key: ArtifactKey) -> list[ArtifactVersion]:
        return await self.index.versions(key)

    async def _delete(self, key: ArtifactKey, fence: RunFence | None) -> None:
        await self._remove_blobs(await self.index.remove(key, fence))

    async def _delete_session(self, session: SessionKey) -> None:
        await self._remove_blobs(await self.index.remove_session(session))
        folder = self._path(_session_folder(session.app_name, session.user_id, session.session_id))
        try:  # what a save cut off before its commit left there
            if await asyncio.to_thread(self._fs.exists, folder):
                await asyncio.to_thread(self._fs.rm, folder, True)
        except (OSError, ValueError):
            pass

    async def _take_fence(self, session: SessionKey, token: int) -> None:
        await self.index.take_fence(session, token)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.index.close()
