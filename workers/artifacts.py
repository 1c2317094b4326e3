"""Artifacts for workers and producers: one store, named by the environment.

======================================  =====================================================
variable                                meaning
======================================  =====================================================
``AGENT_RUNNER_ARTIFACT_URL``           the store: ``postgresql://...`` (bytes in the
                                        database), or a blob store (``file:///path``,
                                        ``s3://bucket/prefix``, ``gs://...``); unset: runs
                                        have no artifact store. ``memory://`` is this process
                                        only (a producer cannot read a worker's).
``AGENT_RUNNER_ARTIFACT_INDEX_URL``     a blob store's index of versions: ``redis://...``
                                        or ``postgresql://...``; default the events Redis
                                        (``AGENT_RUNNER_REDIS_URL``), keys under
                                        ``AGENT_RUNNER_EVENTS_PREFIX``.
``AGENT_RUNNER_ARTIFACT_MAX_BYTES``     the largest version a save accepts (default 64 MiB).
======================================  =====================================================

Workers open the store at start-up (:class:`~workers.runtime.WorkerRuntime`) and give it to
every run (``Runner(artifact_service=...)``); a run's writes are fenced by its lease. The
submitting service reads what runs saved with :func:`list_artifacts`, :func:`artifact_versions`
and :func:`load_artifact` (``async`` twins: ``alist_artifacts``, ...), or the CLI's
``agent-runner artifact list|versions|get``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from runner_core.artifacts import (
    DEFAULT_MAX_ARTIFACT_BYTES,
    Artifact,
    ArtifactService,
    ArtifactVersion,
)
from runner_core.errors import ConfigurationError
from runner_core.wire import DEFAULT_EVENTS_PREFIX
from session_backends.artifact_urls import artifacts_from_url

from .settings import Settings, mask_url

__all__ = [
    "ArtifactSettings",
    "aartifact_versions",
    "alist_artifacts",
    "aload_artifact",
    "artifact_versions",
    "list_artifacts",
    "load_artifact",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ArtifactSettings:
    """The ``AGENT_RUNNER_ARTIFACT_*`` settings, checked once (see the module docstring)."""

    url: str | None = None
    index_url: str | None = None
    max_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES
    key_prefix: str = DEFAULT_EVENTS_PREFIX

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, settings: Settings | None = None
    ) -> ArtifactSettings:
        """Read and check the variables; the store is built once to check the URLs (nothing
        connects).

        Raises:
            ConfigurationError: a bad value, naming the variable.
        """
        env = os.environ if environ is None else environ
        settings = settings or Settings.from_env(env)
        url = (env.get("AGENT_RUNNER_ARTIFACT_URL") or "").strip() or None
        index_url = (env.get("AGENT_RUNNER_ARTIFACT_INDEX_URL") or "").strip() or None
        raw_max = (env.get("AGENT_RUNNER_ARTIFACT_MAX_BYTES") or "").strip()
        max_bytes = DEFAULT_MAX_ARTIFACT_BYTES
        if raw_max:
            try:
                max_bytes = int(raw_max)
            except ValueError:
                max_bytes = 0
            if max_bytes < 1:
                raise ConfigurationError(
                    f"AGENT_RUNNER_ARTIFACT_MAX_BYTES={raw_max!r} is not a whole number of "
                    "bytes >= 1 (e.g. 67108864 for 64 MiB)."
                )
        found = cls(
            url=url,
            index_url=index_url or settings.redis_url,
            max_bytes=max_bytes,
            key_prefix=settings.events_prefix,
        )
        if url is not None:
            found.open()  # checks the URLs; nothing connects until first use
        return found

    def open(self) -> ArtifactService:
        """The store these settings name (connections open on first use).

        Raises:
            ConfigurationError: no ``AGENT_RUNNER_ARTIFACT_URL``, or a bad one (naming it).
        """
        if self.url is None:
            raise ConfigurationError(
                "no artifact store is configured: set AGENT_RUNNER_ARTIFACT_URL (e.g. "
                "postgresql://..., file:///var/lib/agent-runner/artifacts or s3://bucket/prefix)."
            )
        scheme = self.url.split("://", 1)[0].lower()
        index_scheme = (self.index_url or "").split("://", 1)[0].lower()
        # A blob store's Redis index keeps its keys beside the events'.
        is_redis_index = scheme not in ("memory", "postgres", "postgresql") and index_scheme in (
            "redis",
            "rediss",
            "unix",
        )
        try:
            return artifacts_from_url(
                self.url,
                index_url=self.index_url,
                max_size=self.max_bytes,
                index_options={"key_prefix": self.key_prefix} if is_redis_index else None,
            )
        except ConfigurationError as exc:
            raise ConfigurationError(
                f"AGENT_RUNNER_ARTIFACT_URL={mask_url(self.url)!r} / "
                f"AGENT_RUNNER_ARTIFACT_INDEX_URL={mask_url(self.index_url or '')!r}: {exc}"
            ) from exc


async def _with_store(call: Callable[[ArtifactService], Awaitable[T]]) -> T:
    store = ArtifactSettings.from_env().open()
    try:
        return await call(store)
    finally:
        await store.close()


async def alist_artifacts(app_name: str, user_id: str, session_id: str | None) -> list[str]:
    """The artifact names a session sees (its own and the user's ``user:...``), sorted; with
    ``session_id`` None, the user's only.

    Raises:
        ConfigurationError: no or a bad ``AGENT_RUNNER_ARTIFACT_URL``.
        InvalidRequestError: a bad ID.
        ArtifactBackendError: the store failed.
    """
    return await _with_store(lambda s: s.list_artifact_names(app_name, user_id, session_id))


async def aartifact_versions(
    app_name: str, user_id: str, session_id: str | None, name: str
) -> list[ArtifactVersion]:
    """Every version of ``name``, oldest first (see :func:`alist_artifacts` for errors)."""
    return await _with_store(lambda s: s.list_versions(app_name, user_id, session_id, name))


async def aload_artifact(
    app_name: str, user_id: str, session_id: str | None, name: str, *, version: int | None = None
) -> Artifact | None:
    """The latest version of ``name`` (or ``version``) with its bytes, or None."""
    return await _with_store(
        lambda s: s.load_artifact(app_name, user_id, session_id, name, version=version)
    )


def list_artifacts(app_name: str, user_id: str, session_id: str | None) -> list[str]:
    """Blocking :func:`alist_artifacts` (not inside a running event loop)."""
    return asyncio.run(alist_artifacts(app_name, user_id, session_id))


def artifact_versions(
    app_name: str, user_id: str, session_id: str | None, name: str
) -> list[ArtifactVersion]:
    """Blocking :func:`aartifact_versions`."""
    return asyncio.run(aartifact_versions(app_name, user_id, session_id, name))


def load_artifact(
    app_name: str, user_id: str, session_id: str | None, name: str, *, version: int | None = None
) -> Artifact | None:
    """Blocking :func:`aload_artifact`."""
    return asyncio.run(aload_artifact(app_name, user_id, session_id, name, version=version))
