"""Session stores: one module per backend, all implementing
:class:`runner_core.session.SessionService`, and :func:`from_url` to pick one by URL.

=====================  ==========================================================
URL                    store
=====================  ==========================================================
``memory://``          :class:`InMemorySessionService` (this process only)
``redis://``           :class:`RedisSessionService` (``rediss://`` for TLS,
                       ``unix:///path/redis.sock?db=0`` for a Unix socket,
                       ``redis+cluster://host:port`` for a Redis Cluster)
``postgresql://``      :class:`PostgresSessionService` (``postgres://`` too)
``mysql://``           :class:`MySQLSessionService` (MySQL 8, MariaDB 10.11+; needs the
                       ``mysql`` extra: ``pip install 'agent-runner[mysql]'``)
=====================  ==========================================================

Artifact stores by URL: :func:`artifacts_from_url` (:mod:`session_backends.artifact_urls`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from runner_core.errors import ConfigurationError
from runner_core.session import SessionService

from .artifact_urls import artifacts_from_url
from .memory import InMemorySessionService
from .postgres import PostgresSessionService
from .redis import RedisSessionService

__all__ = [
    "InMemorySessionService",
    "MySQLSessionService",
    "PostgresSessionService",
    "RedisSessionService",
    "artifacts_from_url",
    "from_url",
]

_SCHEMES: dict[str, type[Any] | None] = {
    "memory": InMemorySessionService,
    "redis": RedisSessionService,
    "rediss": RedisSessionService,
    "unix": RedisSessionService,
    "redis+cluster": RedisSessionService,
    "rediss+cluster": RedisSessionService,
    "postgresql": PostgresSessionService,
    "postgres": PostgresSessionService,
    "mysql": None,  # imported on first use: its driver is the optional ``mysql`` extra
}


def _mysql_store() -> type[Any]:
    try:
        from .mysql import MySQLSessionService
    except ImportError as exc:
        raise ConfigurationError(
            f"the MySQL session store needs its driver ({exc}): pip install 'agent-runner[mysql]'."
        ) from exc
    return MySQLSessionService


def __getattr__(name: str) -> Any:
    if name == "MySQLSessionService":
        return _mysql_store()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def from_url(url: str, **options: Any) -> SessionService:
    """Build the session store that ``url`` names, with its keyword ``options``.

    Nothing is connected here: connections open on first use.

    Args:
        url: ``memory://``, ``redis://host:port/db``, ``rediss://...``, ``unix:///path``,
            ``postgresql://user@host:port/db`` (or ``postgres://``),
            ``mysql://user:password@host:port/db``.
        options: passed to the store's constructor (``event_limit``, ``session_ttl``,
            ``key_prefix`` for Redis, ``schema``/``table_prefix``/``soft_delete`` for
            PostgreSQL, ``table_prefix``/``soft_delete`` for MySQL, ...).

    Raises:
        ConfigurationError: the URL scheme is not one of the above, or an option is unknown
            or invalid.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"session store URL {url!r} has no scheme. Use one of: "
            + ", ".join(f"{s}://" for s in _SCHEMES)
            + " (AGENT_RUNNER_SESSION_URL)."
        )
    scheme = urlsplit(url).scheme.lower()
    if scheme not in _SCHEMES:
        raise ConfigurationError(
            f"session store URL scheme {scheme!r} is not supported. Use one of: "
            + ", ".join(f"{s}://" for s in _SCHEMES)
            + " (AGENT_RUNNER_SESSION_URL)."
        )
    factory = _SCHEMES[scheme] or _mysql_store()
    try:
        if factory is InMemorySessionService:
            service: SessionService = factory(**options)
        else:
            service = factory(url, **options)
    except TypeError as exc:
        raise ConfigurationError(
            f"bad option for {factory.__name__} (from {scheme}:// URL): {exc}"
        ) from exc
    return service
