"""Memory stores by URL: :func:`memory_from_url` (``AGENT_RUNNER_MEMORY_URL``).

=====================  ==========================================================
URL                    store
=====================  ==========================================================
``memory://``          :class:`~runner_core.memory_store.InMemoryMemoryService`
``redis://``           :class:`~session_backends.memory_redis.RedisMemoryService`
                       (``rediss://``, ``unix://`` too)
``postgresql://``      :class:`~session_backends.memory_postgres.PostgresMemoryService`
                       (``postgres://`` too)
=====================  ==========================================================
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from runner_core.errors import ConfigurationError
from runner_core.memory import MemoryService
from runner_core.memory_store import InMemoryMemoryService

from .memory_postgres import PostgresMemoryService
from .memory_redis import RedisMemoryService

__all__ = ["memory_from_url"]

_SCHEMES: dict[str, type[MemoryService]] = {
    "memory": InMemoryMemoryService,
    "redis": RedisMemoryService,
    "rediss": RedisMemoryService,
    "unix": RedisMemoryService,
    "postgresql": PostgresMemoryService,
    "postgres": PostgresMemoryService,
}


def memory_from_url(url: str, **options: Any) -> MemoryService:
    """The memory store ``url`` names, built with ``options`` (``max_items_per_scope``,
    ``embedder``, ``min_similarity``, and the backend's own). Connects on first use.

    Raises:
        ConfigurationError: an unknown scheme or a bad option.
    """
    schemes = ", ".join(f"{s}://" for s in _SCHEMES)
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"memory store URL {url!r} has no scheme; use one of {schemes} "
            "(AGENT_RUNNER_MEMORY_URL)."
        )
    scheme = urlsplit(url).scheme.lower()
    factory = _SCHEMES.get(scheme)
    if factory is None:
        raise ConfigurationError(
            f"memory store URL scheme {scheme!r} is not supported; use one of {schemes} "
            "(AGENT_RUNNER_MEMORY_URL)."
        )
    try:
        if factory is InMemoryMemoryService:
            return factory(**options)
        return factory(url, **options)  # type: ignore[call-arg,arg-type]
    except TypeError as exc:
        raise ConfigurationError(f"bad option for {factory.__name__}: {exc}") from exc
