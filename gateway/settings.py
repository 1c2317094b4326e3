"""The gateway's settings: API keys, CORS, limits; one typed object, checked once at start-up.

==========================================  =================================================
variable                                    meaning (default)
==========================================  =================================================
``AGENT_RUNNER_GATEWAY_API_KEYS``           ``KEY=USER_ID`` entries, comma-separated; ``KEY=*``
                                            is an operator key (acts for any user)
``AGENT_RUNNER_GATEWAY_API_KEYS_FILE``      a file of the same entries, one a line (``#``
                                            comments); both may be given
``AGENT_RUNNER_GATEWAY_CORS_ORIGINS``       origins allowed to call from a browser, comma-
                                            separated, or ``*`` (none)
``AGENT_RUNNER_GATEWAY_MAX_BODY_BYTES``     the largest request body (1 MiB)
``AGENT_RUNNER_GATEWAY_KEEPALIVE_S``        seconds between keep-alive comments on a quiet
                                            event stream (15)
``AGENT_RUNNER_GATEWAY_REDIS_CONNECTIONS``  the Redis connections one gateway process may open;
                                            each open event stream holds one (4096)
==========================================  =================================================

Everything else (Redis, broker, session store, events prefix, message size limit) is the
workers' :class:`~workers.settings.Settings`, read from the same variables, so a gateway and the
workers it feeds agree by construction. Webhooks use :class:`~workers.webhooks.WebhookSettings`.

A key is a secret: it is kept as its SHA-256 digest only, and never appears in ``repr``, logs
or errors.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runner_core.errors import ConfigurationError
from runner_core.session import validate_identifier
from workers.settings import Settings

__all__ = [
    "MIN_KEY_LENGTH",
    "OPERATOR",
    "ApiKey",
    "GatewaySettings",
    "key_digest",
    "parse_api_keys",
]

#: What stands for the user in an operator key's entry (``KEY=*``); no user ID can be ``*``.
OPERATOR = "*"
#: The shortest API key accepted: a guessable key is no key.
MIN_KEY_LENGTH = 16
KEYS_VARIABLE = "AGENT_RUNNER_GATEWAY_API_KEYS"
KEYS_FILE_VARIABLE = "AGENT_RUNNER_GATEWAY_API_KEYS_FILE"


def key_digest(key: str) -> str:
    """How a key is held and looked up: the hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """Who a key speaks for: one user (``user_id``), or any user (an operator key, ``None``).

    ``name`` identifies the key in logs without revealing it (the first 8 hex digits of its
    digest).
    """

    user_id: str | None
    name: str

    @property
    def is_operator(self) -> bool:
        return self.user_id is None


def parse_api_keys(text: str, *, source: str) -> dict[str, ApiKey]:
    """Parse ``KEY=USER_ID`` (or ``KEY=*``) entries separated by commas or new lines. A key
    holds no ``=``, ``,`` or ``#`` (``secrets.token_urlsafe`` keys never do).

    Returns:
        ``{key digest: ApiKey}``.

    Raises:
        ConfigurationError: an entry without ``=``, a short key, a bad user ID, or a key given
            twice; the message names ``source`` and the entry's position, never the key.
    """
    keys: dict[str, ApiKey] = {}
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    entries = [part.strip() for line in lines for part in line.split(",")]
    for position, entry in enumerate((e for e in entries if e), start=1):
        key, sep, user = (piece.strip() for piece in entry.partition("="))
        if not sep or not key:
            raise ConfigurationError(
                f"{source}: entry {position} is not KEY=USER_ID (or KEY=* for an operator key)."
            )
        if len(key) < MIN_KEY_LENGTH:
            raise ConfigurationError(
                f"{source}: the key of entry {position} is {len(key)} characters; use at least "
                f"{MIN_KEY_LENGTH} random ones (e.g. python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))')."
            )
        if user != OPERATOR:
            try:
                validate_identifier(user, "user ID")
            except ValueError as exc:
                raise ConfigurationError(f"{source}: entry {position}: {exc}") from None
        digest = key_digest(key)
        if digest in keys:
            raise ConfigurationError(f"{source}: entry {position} repeats a key given before.")
        keys[digest] = ApiKey(None if user == OPERATOR else user, digest[:8])
    return keys


def _text(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value.strip() if value and value.strip() else None


def _whole(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = _text(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a whole number.") from None
    if value < minimum:
        raise ConfigurationError(f"{name}={raw!r} is too small; it must be >= {minimum}.")
    return value


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _text(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a number of seconds.") from None
    if not 0.05 <= value <= 3600:
        raise ConfigurationError(f"{name}={raw!r} must be between 0.05 and 3600 seconds.")
    return value


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """What ``agent-runner serve`` needs; build it with :meth:`from_env`."""

    keys: dict[str, ApiKey] = field(repr=False)
    workers: Settings = field(default_factory=Settings)
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 1 << 20
    keepalive_s: float = 15.0
    redis_connections: int = 4096

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GatewaySettings:
        """Read and check the gateway's variables and the workers' ones.

        Raises:
            ConfigurationError: a bad value, or no API key at all; the message names the
                variable.
        """
        env = os.environ if environ is None else environ
        keys: dict[str, ApiKey] = {}
        inline = _text(env, KEYS_VARIABLE)
        if inline:
            keys.update(parse_api_keys(inline, source=KEYS_VARIABLE))
        path = _text(env, KEYS_FILE_VARIABLE)
        if path:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigurationError(
                    f"{KEYS_FILE_VARIABLE}={path!r} cannot be read ({exc.strerror})."
                ) from None
            for digest, key in parse_api_keys(text, source=f"{KEYS_FILE_VARIABLE} {path}").items():
                if digest in keys:
                    raise ConfigurationError(
                        f"{KEYS_FILE_VARIABLE} {path} repeats a key of {KEYS_VARIABLE}."
                    )
                keys[digest] = key
        if not keys:
            raise ConfigurationError(
                f"the gateway has no API key: set {KEYS_VARIABLE}=KEY=USER_ID[,KEY=*] or "
                f"{KEYS_FILE_VARIABLE}=/path/to/keys (one KEY=USER_ID a line)."
            )
        origins = tuple(
            o.strip() for o in (_text(env, "AGENT_RUNNER_GATEWAY_CORS_ORIGINS") or "").split(",")
        )
        return cls(
            keys=keys,
            workers=Settings.from_env(env),
            cors_origins=tuple(o for o in origins if o),
            max_body_bytes=_whole(env, "AGENT_RUNNER_GATEWAY_MAX_BODY_BYTES", 1 << 20, 1024),
            keepalive_s=_seconds(env, "AGENT_RUNNER_GATEWAY_KEEPALIVE_S", 15.0),
            redis_connections=_whole(env, "AGENT_RUNNER_GATEWAY_REDIS_CONNECTIONS", 4096, 16),
        )

    def key_for(self, presented: str) -> ApiKey | None:
        """The key ``presented`` is, or None (looked up by digest, so in constant time in
        the key's content)."""
        return self.keys.get(key_digest(presented))
