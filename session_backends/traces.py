"""Trace stores by URL, beside the session stores: :func:`trace_store_from_url`.

=====================  ==========================================================
URL                    store
=====================  ==========================================================
``memory://``          :class:`~runner_core.memory_traces.InMemoryTraceStore`
``redis://``           :class:`RedisTraceStore` (``rediss://``, ``unix://`` too)
``postgresql://``      :class:`PostgresTraceStore` (``postgres://`` too)
=====================  ==========================================================

Workers build theirs from ``AGENT_RUNNER_TRACE_URL`` (default: the session store's URL).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from runner_core.errors import ConfigurationError
from runner_core.memory_traces import InMemoryTraceStore
from runner_core.traces import TraceStore

from .traces_postgres import PostgresTraceStore
from .traces_redis import RedisTraceStore

__all__ = ["InMemoryTraceStore", "PostgresTraceStore", "RedisTraceStore", "trace_store_from_url"]

_SCHEMES: dict[str, type[Any]] = {
    "memory": InMemoryTraceStore,
    "redis": RedisTraceStore,
    "rediss": RedisTraceStore,
    "unix": RedisTraceStore,
    "postgresql": PostgresTraceStore,
    "postgres": PostgresTraceStore,
}


def trace_store_from_url(url: str, **options: Any) -> TraceStore:
    """Build the trace store that ``url`` names, with its keyword ``options`` (``ttl``;
    ``key_prefix`` for Redis; ``schema``/``table_prefix`` for PostgreSQL). Nothing is
    connected here.

    Raises:
        ConfigurationError: the scheme is not one of the above, or an option is bad.
    """
    scheme = urlsplit(url).scheme.lower() if isinstance(url, str) and "://" in url else ""
    factory = _SCHEMES.get(scheme)
    if factory is None:
        raise ConfigurationError(
            f"trace store URL {url!r} is not supported. Use one of: "
            + ", ".join(f"{s}://" for s in _SCHEMES)
            + " (AGENT_RUNNER_TRACE_URL)."
        )
    try:
        store: TraceStore = factory(**options) if factory is InMemoryTraceStore else factory(
            url, **options
        )
    except TypeError as exc:
        raise ConfigurationError(
            f"bad option for {factory.__name__} (from {scheme}:// URL): {exc}"
        ) from exc
    return store
