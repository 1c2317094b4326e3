"""Artifact stores by URL (``AGENT_RUNNER_ARTIFACT_URL``).

=================================  ==========================================================
URL                                store
=================================  ==========================================================
``memory://``                      :class:`~runner_core.memory_artifacts.InMemoryArtifactService`
``postgresql://...``               :class:`~session_backends.artifacts_postgres.
                                   PostgresArtifactService` (bytes in the database)
``file:///path``, ``s3://b/p``,    :class:`~session_backends.artifact_blobs.BlobArtifactService`
``gs://b/p``, any fsspec URL       (bytes there), its versions in the index at ``index_url``:
                                   ``redis://...`` or ``postgresql://...``
=================================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from runner_core.artifacts import DEFAULT_MAX_ARTIFACT_BYTES, ArtifactService
from runner_core.errors import ConfigurationError
from runner_core.memory_artifacts import InMemoryArtifactService

from .artifact_blobs import ArtifactIndex, BlobArtifactService
from .artifact_index_redis import RedisArtifactIndex
from .artifacts_postgres import PostgresArtifactIndex, PostgresArtifactService

__all__ = ["artifacts_from_url", "index_from_url"]

_POSTGRES = ("postgresql", "postgres")
_REDIS = ("redis", "rediss", "unix")


def _scheme(url: object, what: str) -> str:
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"{what} {url!r} has no scheme; write memory://, postgresql://..., file:///path, "
            "s3://bucket/prefix, ..."
        )
    return urlsplit(url).scheme.lower()


def index_from_url(url: str, **options: Any) -> ArtifactIndex:
    """The index of a blob store: ``redis://`` (``rediss://``, ``unix://``) or
    ``postgresql://``; ``options`` go to its constructor (``key_prefix`` for Redis,
    ``schema``/``table_prefix`` for PostgreSQL).

    Raises:
        ConfigurationError: another scheme, or a bad option.
    """
    scheme = _scheme(url, "artifact index URL")
    try:
        if scheme in _REDIS:
            return RedisArtifactIndex(url, **options)
        if scheme in _POSTGRES:
            return PostgresArtifactIndex(url, **options)
    except TypeError as exc:
        raise ConfigurationError(f"bad option for the artifact index: {exc}") from exc
    raise ConfigurationError(
        f"artifact index URL scheme {scheme!r} is not supported; use redis:// or postgresql:// "
        "(AGENT_RUNNER_ARTIFACT_INDEX_URL)."
    )


def artifacts_from_url(
    url: str,
    *,
    index_url: str | None = None,
    max_size: int = DEFAULT_MAX_ARTIFACT_BYTES,
    storage_options: Mapping[str, Any] | None = None,
    index_options: Mapping[str, Any] | None = None,
) -> ArtifactService:
    """Build the artifact store ``url`` names (see the module docstring). Nothing connects
    here: connections open on first use.

    Args:
        url: ``memory://``, ``postgresql://...``, or a blob store's fsspec URL.
        index_url: for a blob store, where its versions are kept (``redis://`` or
            ``postgresql://``); ignored otherwise.
        max_size: the largest version accepted, in bytes.
        storage_options: for a blob store, passed to its fsspec file system.
        index_options: passed to the index (a blob store) or to the PostgreSQL store.

    Raises:
        ConfigurationError: a URL without a scheme, a blob store without ``index_url``, a
            protocol whose fsspec driver is missing, or a bad option.
    """
    scheme = _scheme(url, "artifact store URL")
    extra = dict(index_options or {})
    if scheme == "memory":
        return InMemoryArtifactService(max_size=max_size)
    if scheme in _POSTGRES:
        try:
            return PostgresArtifactService(url, max_size=max_size, **extra)
        except TypeError as exc:
            raise ConfigurationError(f"bad option for the artifact store: {exc}") from exc
    if scheme in _REDIS:
        raise ConfigurationError(
            f"{scheme}:// cannot hold artifacts' bytes; name a blob store (file:///path, "
            f"s3://bucket/prefix, ...) and put the {scheme}:// URL in index_url "
            "(AGENT_RUNNER_ARTIFACT_INDEX_URL)."
        )
    if index_url is None:
        raise ConfigurationError(
            f"the blob artifact store {url!r} needs an index for its versions: pass index_url "
            "(redis://... or postgresql://...; workers: AGENT_RUNNER_ARTIFACT_INDEX_URL, "
            "default the events Redis)."
        )
    index = index_from_url(index_url, **extra)
    return BlobArtifactService(url, index, max_size=max_size, storage_options=storage_options)
