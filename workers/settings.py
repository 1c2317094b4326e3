"""Worker settings: one typed object built from the environment, checked once at start-up.

Every value comes from an environment variable (table in docs/workers.md). A bad value raises
:class:`~runner_core.errors.ConfigurationError` naming the variable and saying what would be
valid, so ``celery -A workers.app worker`` refuses to start instead of failing on the first run.

Secrets never leave this module in clear: ``repr(settings)`` masks URL passwords and the API key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from runner_core.errors import ConfigurationError
from runner_core.memory import DEFAULT_MAX_ITEMS_PER_SCOPE
from runner_core.session import validate_identifier
from runner_core.wire import (
    DEFAULT_EVENT_TTL_S,
    DEFAULT_EVENTS_PREFIX,
    DEFAULT_MAX_MESSAGE_CHARS,
    DEFAULT_RUNS_QUEUE,
    DEFAULT_STREAM_MAXLEN,
)
from session_backends.redis_target import CLUSTER_SCHEMES, cluster_node_url, is_cluster_url

__all__ = [
    "DEFAULT_BROKER_URL",
    "Settings",
    "mask_secret",
    "mask_url",
    "parse_agents",
]

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
_REDIS_SCHEMES = ("redis", "rediss", "redis+socket", "unix")
_SESSION_SCHEMES = ("memory", "redis", "rediss", "unix", "postgres", "postgresql", "mysql")
_MEMORY_SCHEMES = ("memory", "redis", "rediss", "unix", "postgres", "postgresql")
_TRACE_SCHEMES = ("memory", "redis", "rediss", "unix", "postgres", "postgresql")
#: A Redis Cluster (``redis+cluster://host:port``): for events and leases, and sessions.
_CLUSTER_SCHEMES = tuple(CLUSTER_SCHEMES)
_FACTORY_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_QUEUE_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")


def mask_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: fit for logs and errors."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    if password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def mask_secret(value: str | None) -> str | None:
    """An API key reduced to a hint (``sk-...abcd``), or None."""
    if not value:
        return None
    return f"{value[:3]}...{value[-4:]}" if len(value) > 12 else "***"


def _text(env: Mapping[str, str], name: str, default: str | None) -> str | None:
    value = env.get(name)
    if value is None or not value.strip():
        return default
    return value.strip()


def _url(env: Mapping[str, str], name: str, default: str, schemes: tuple[str, ...]) -> str:
    value = _text(env, name, default)
    assert value is not None
    try:
        scheme = urlsplit(value).scheme
    except ValueError as exc:
        raise ConfigurationError(f"{name} is not a valid URL ({exc}).") from exc
    if scheme not in schemes:
        raise ConfigurationError(
            f"{name}={mask_url(value)!r} has scheme {scheme or '(none)'!r}; use one of "
            f"{', '.join(s + '://' for s in schemes)} (e.g. {DEFAULT_BROKER_URL})."
        )
    return value


def _single_redis(name: str, value: str | None) -> None:
    """Refuse a Redis Cluster URL where one Redis is needed (the Celery broker and result
    backend: kombu's Redis transport speaks to one server)."""
    if value is not None and is_cluster_url(value):
        raise ConfigurationError(
            f"{name}={mask_url(value)!r} is a Redis Cluster, but Celery's Redis transport talks "
            "to one Redis: keep the broker (and result backend) on a single Redis "
            f"(e.g. {DEFAULT_BROKER_URL}) and point AGENT_RUNNER_REDIS_URL and "
            'AGENT_RUNNER_SESSION_URL at the cluster (docs/workers.md, "Redis Cluster").'
        )


def _cluster_checked(name: str, value: str) -> str:
    """``value``, after checking a Redis Cluster URL's form (host, no database but 0)."""
    if is_cluster_url(value):
        cluster_node_url(value, variable=f"{name}={mask_url(value)!r}")
    return value


def _number(
    env: Mapping[str, str],
    name: str,
    default: float | None,
    *,
    minimum: float,
    integer: bool = False,
    allow_none: bool = False,
) -> float | None:
    raw = _text(env, name, None)
    if raw is None:
        return default
    if allow_none and raw.lower() in ("0", "none", "off"):
        return None
    kind = "a whole number" if integer else "a number"
    try:
        value = float(int(raw)) if integer else float(raw)
    except ValueError:
        hint = " (or 0/none to disable)" if allow_none else ""
        raise ConfigurationError(f"{name}={raw!r} is not {kind}; set it to {kind}{hint}.") from None
    if not value >= minimum:  # also rejects NaN
        raise ConfigurationError(f"{name}={raw!r} is too small; it must be >= {minimum:g}.")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _text(env, name, None)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name}={raw!r} is not a boolean; use true or false.")


def parse_agents(raw: str | None, *, variable: str = "AGENT_RUNNER_AGENTS") -> dict[str, str]:
    """Parse ``name=module:function,other=pkg.mod:build`` into ``{app_name: factory path}``.

    Raises:
        ConfigurationError: an entry without ``=``, a bad app name or factory path, or a name
            given twice. The message names ``variable`` and the entry.
    """
    agents: dict[str, str] = {}
    if not raw:
        return agents
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        name, sep, target = (piece.strip() for piece in entry.partition("="))
        if not sep:
            raise ConfigurationError(
                f"{variable} entry {entry!r} has no '='; write name=module:function "
                "(e.g. support=myapp.agents:build_support)."
            )
        try:
            validate_identifier(name, "app name")
        except ValueError as exc:
            raise ConfigurationError(f"{variable} entry {entry!r}: {exc}") from None
        if not _FACTORY_RE.fullmatch(target):
            raise ConfigurationError(
                f"{variable} entry {entry!r}: {target!r} is not module:function "
                "(e.g. myapp.agents:build_support)."
            )
        if name in agents:
            raise ConfigurationError(f"{variable} names the app {name!r} twice.")
        agents[name] = target
    return agents


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a run worker (and a producer) needs, from the environment.

    Build it with :meth:`from_env`; the fields are documented in docs/workers.md.
    """

    broker_url: str = DEFAULT_BROKER_URL
    redis_url: str = DEFAULT_BROKER_URL
    session_url: str = DEFAULT_BROKER_URL
    result_backend: str | None = None
    result_expires_s: int = 86400
    model: str = "gpt-4o-mini"
    openai_api_key: str | None = field(default=None, repr=False)
    openai_base_url: str | None = None
    agents: dict[str, str] = field(default_factory=dict)
    queue: str = DEFAULT_RUNS_QUEUE
    events_prefix: str = DEFAULT_EVENTS_PREFIX
    event_ttl_s: int = DEFAULT_EVENT_TTL_S
    stream_maxlen: int = DEFAULT_STREAM_MAXLEN
    redis_max_connections: int = 512
    recovery_timeout_s: float = 600.0
    restore_interval_s: int = 10
    restore_throttle: int = 1
    run_timeout_s: float | None = 1800.0
    max_attempts: int = 3
    max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS
    soft_shutdown_s: float = 30.0
    #: Where execution traces go (docs/traces.md); None: traces off (``AGENT_RUNNER_TRACES``).
    trace_url: str | None = DEFAULT_BROKER_URL
    trace_ttl_s: float | None = None
    #: Long-term memory (docs/memory.md); None: off (``AGENT_RUNNER_MEMORY_URL`` unset).
    memory_url: str | None = None
    memory_max_items_per_scope: int = DEFAULT_MAX_ITEMS_PER_SCOPE
    #: Search memory by embeddings of this model (the OpenAI-compatible endpoint); None: words.
    memory_embedding_model: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and check every ``AGENT_RUNNER_*`` variable (and ``OPENAI_*``).

        Raises:
            ConfigurationError: a bad value; the message names the variable and the fix.
        """
        env = os.environ if environ is None else environ
        _single_redis("AGENT_RUNNER_BROKER_URL", _text(env, "AGENT_RUNNER_BROKER_URL", None))
        _single_redis(
            "AGENT_RUNNER_RESULT_BACKEND", _text(env, "AGENT_RUNNER_RESULT_BACKEND", None)
        )
        broker = _url(env, "AGENT_RUNNER_BROKER_URL", DEFAULT_BROKER_URL, _REDIS_SCHEMES)
        redis_url = _cluster_checked(
            "AGENT_RUNNER_REDIS_URL",
            _url(env, "AGENT_RUNNER_REDIS_URL", broker, _REDIS_SCHEMES + _CLUSTER_SCHEMES),
        )
        session_url = _cluster_checked(
            "AGENT_RUNNER_SESSION_URL",
            _url(env, "AGENT_RUNNER_SESSION_URL", redis_url, _SESSION_SCHEMES + _CLUSTER_SCHEMES),
        )
        backend = _text(env, "AGENT_RUNNER_RESULT_BACKEND", None)
        if backend is not None:
            backend = _url(env, "AGENT_RUNNER_RESULT_BACKEND", backend, _REDIS_SCHEMES)
        base_url = _text(env, "OPENAI_BASE_URL", None)
        if base_url is not None and urlsplit(base_url).scheme not in ("http", "https"):
            raise ConfigurationError(
                f"OPENAI_BASE_URL={mask_url(base_url)!r} is not an http(s) URL "
                "(e.g. https://api.openai.com/v1)."
            )
        queue = _text(env, "AGENT_RUNNER_QUEUE", DEFAULT_RUNS_QUEUE) or DEFAULT_RUNS_QUEUE
        if not _QUEUE_RE.fullmatch(queue):
            raise ConfigurationError(
                f"AGENT_RUNNER_QUEUE={queue!r}: use letters, digits and '._-' only."
            )
        prefix = _text(env, "AGENT_RUNNER_EVENTS_PREFIX", None) or DEFAULT_EVENTS_PREFIX
        if not _QUEUE_RE.fullmatch(prefix):
            raise ConfigurationError(
                f"AGENT_RUNNER_EVENTS_PREFIX={prefix!r}: use letters, digits and '._-' only."
            )
        recovery = _number(env, "AGENT_RUNNER_RECOVERY_TIMEOUT_S", 600.0, minimum=1)
        assert recovery is not None
        # Traces live beside the sessions when their store can hold them, else in Redis (the
        # broker's when the events Redis is a cluster: the trace store needs one Redis).
        single_redis = broker if is_cluster_url(redis_url) else redis_url
        trace_default = (
            session_url if urlsplit(session_url).scheme in _TRACE_SCHEMES else single_redis
        )
        trace_url: str | None = _url(env, "AGENT_RUNNER_TRACE_URL", trace_default, _TRACE_SCHEMES)
        if not _bool(env, "AGENT_RUNNER_TRACES", True):
            trace_url = None

        def whole(name: str, default: int, minimum: int) -> int:
            value = _number(env, name, float(default), minimum=minimum, integer=True)
            return int(value if value is not None else default)

        return cls(
            broker_url=broker,
            redis_url=redis_url,
            session_url=session_url,
            result_backend=backend,
            result_expires_s=whole("AGENT_RUNNER_RESULT_EXPIRES_S", 86400, 1),
            model=_text(env, "AGENT_RUNNER_MODEL", "gpt-4o-mini") or "gpt-4o-mini",
            openai_api_key=_text(env, "OPENAI_API_KEY", None),
            openai_base_url=base_url,
            agents=parse_agents(_text(env, "AGENT_RUNNER_AGENTS", None)),
            queue=queue,
            events_prefix=prefix,
            event_ttl_s=whole("AGENT_RUNNER_EVENT_TTL_S", DEFAULT_EVENT_TTL_S, 1),
            stream_maxlen=whole("AGENT_RUNNER_STREAM_MAXLEN", DEFAULT_STREAM_MAXLEN, 1),
            redis_max_connections=whole("AGENT_RUNNER_REDIS_MAX_CONNECTIONS", 512, 8),
            recovery_timeout_s=recovery,
            restore_interval_s=whole("AGENT_RUNNER_RESTORE_INTERVAL_S", 10, 1),
            restore_throttle=whole("AGENT_RUNNER_RESTORE_THROTTLE", 1, 1),
            run_timeout_s=_number(
                env, "AGENT_RUNNER_RUN_TIMEOUT_S", 1800.0, minimum=0.001, allow_none=True
            ),
            max_attempts=whole("AGENT_RUNNER_MAX_ATTEMPTS", 3, 1),
            max_message_chars=whole("AGENT_RUNNER_MAX_MESSAGE_CHARS", DEFAULT_MAX_MESSAGE_CHARS, 1),
            soft_shutdown_s=_number(env, "AGENT_RUNNER_SOFT_SHUTDOWN_S", 30.0, minimum=0) or 0.0,
            trace_url=trace_url,
            trace_ttl_s=_number(env, "AGENT_RUNNER_TRACE_TTL_S", None, minimum=1, allow_none=True),
            memory_url=(
                None
                if _text(env, "AGENT_RUNNER_MEMORY_URL", None) is None
                else _url(env, "AGENT_RUNNER_MEMORY_URL", "memory://", _MEMORY_SCHEMES)
            ),
            memory_max_items_per_scope=whole(
                "AGENT_RUNNER_MEMORY_MAX_ITEMS", DEFAULT_MAX_ITEMS_PER_SCOPE, 1
            ),
            memory_embedding_model=_text(env, "AGENT_RUNNER_MEMORY_EMBEDDING_MODEL", None),
        )

    @property
    def uses_openai(self) -> bool:
        """True when a real model endpoint is configured: an API key, a base URL (alone: a
        server that needs no key), or both. Empty variables count as unset."""
        return bool(self.openai_api_key or self.openai_base_url)

    @property
    def lease_ttl_s(self) -> float:
        """How long a session lease lives without a heartbeat: the recovery timeout."""
        return self.recovery_timeout_s

    @property
    def heartbeat_s(self) -> float:
        """Heartbeat period: a third of the lease, so two missed beats do not lose it."""
        return max(0.2, self.recovery_timeout_s / 3)

    def describe(self) -> dict[str, Any]:
        """The settings with secrets masked, for the start-up log line."""
        described: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "openai_api_key":
                value = mask_secret(value)
            elif isinstance(value, str) and "://" in value:
                value = mask_url(value)
            described[item.name] = value
        return described

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.describe().items())
        return f"Settings({inner})"
