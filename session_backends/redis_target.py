"""Where a Redis URL points: one server, or a Redis Cluster. The one place that reads the
``redis+cluster://`` scheme and turns a URL into a redis-py client.

- ``redis://``, ``rediss://``, ``unix://``: one Redis server (``redis.Redis``).
- ``redis+cluster://host:port`` (``rediss+cluster://`` with TLS): a Redis Cluster, reached
  through any one of its nodes (the client discovers the others and follows ``MOVED``
  redirections). A cluster has only database 0, so the URL has no other. redis-py's
  ``RedisCluster`` (``redis.asyncio.cluster.RedisCluster``) speaks to it.

Used for ``AGENT_RUNNER_REDIS_URL`` (events and session leases) and the Redis session store's
URL. Code that must name keys differently on a cluster asks :func:`is_cluster_client` of the
client it was given, so a client and its key layout can never disagree.
"""

from __future__ import annotations

from typing import Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
import redis.cluster
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from runner_core.errors import ConfigurationError

__all__ = [
    "CLUSTER_SCHEMES",
    "AsyncRedis",
    "async_client",
    "cluster_node_url",
    "is_cluster_client",
    "is_cluster_url",
    "sync_client",
]

#: URL schemes that name a Redis Cluster, and the scheme redis-py takes for each.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

#: An asyncio client of one Redis or of a cluster: what the bus, the leases and the store take.
AsyncRedis: TypeAlias = aioredis.Redis | AsyncRedisCluster


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``)."""
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def cluster_node_url(url: str, *, variable: str = "the Redis URL") -> str:
    """The ``redis://`` (or ``rediss://``) URL of the seed node of a ``redis+cluster://`` URL.

    Raises:
        ConfigurationError: not a cluster URL, no host, or a database other than 0 (a
            cluster has only database 0). The message names ``variable``.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a bad port raises ValueError here, with the reason)
    except ValueError as exc:
        raise ConfigurationError(f"{variable} is not a valid URL ({exc}).") from None
    scheme = CLUSTER_SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise ConfigurationError(
            f"{variable} is not a Redis Cluster URL; use redis+cluster://host:port "
            "(or rediss+cluster:// with TLS)."
        )
    if not parts.hostname:
        raise ConfigurationError(
            f"{variable} names no host; write redis+cluster://host:port with any node of the "
            "cluster (the others are discovered)."
        )
    if parts.path.strip("/") not in ("", "0"):
        raise ConfigurationError(
            f"{variable} asks for database {parts.path.strip('/')!r}, but a Redis Cluster has "
            "only database 0; drop the /N from the URL (redis+cluster://host:port)."
        )
    return urlunsplit(parts._replace(scheme=scheme, path=""))


def async_client(url: str, *, variable: str = "the Redis URL", **options: Any) -> AsyncRedis:
    """An asyncio client for ``url``: a ``RedisCluster`` for a cluster URL, else
    ``redis.asyncio.Redis.from_url``. ``options`` go to the client (``max_connections``,
    ``socket_timeout``, ...)."""
    if is_cluster_url(url):
        return AsyncRedisCluster.from_url(cluster_node_url(url, variable=variable), **options)
    return aioredis.Redis.from_url(url, **options)


def sync_client(
    url: str, *, variable: str = "the Redis URL", **options: Any
) -> redis.Redis | redis.cluster.RedisCluster:
    """The blocking twin of :func:`async_client`."""
    if is_cluster_url(url):
        return redis.cluster.RedisCluster.from_url(
            cluster_node_url(url, variable=variable), **options
        )
    return redis.Redis.from_url(url, **options)


def is_cluster_client(client: object) -> bool:
    """Whether a redis-py client (asyncio or blocking) speaks to a Redis Cluster."""
    return isinstance(client, AsyncRedisCluster | redis.cluster.RedisCluster)
