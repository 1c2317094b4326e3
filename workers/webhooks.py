"""Webhooks: a URL called once a run completes, at least once, signed, only to allowed hosts.

A producer (the HTTP gateway, :mod:`gateway`) registers a URL for a run before sending it
(:func:`register_webhook`, the hash ``{prefix}:webhook:{id}``). When the run's task ends, the
run worker queues ``agent_runner.deliver_webhook`` on the run queue (:func:`enqueue_after_run`):
the delivery lives in the broker from then on, so no gateway process has to be alive for it.
A redelivered run queues it again; every attempt carries the same delivery ID, so the receiver
deduplicates on it.

The request: ``POST`` of the JSON body ``{"delivery_id", "invocation_id", "app_name",
"user_id", "session_id", "status", "completion"}`` (``completion``: the ``runner.completion``
event) with the headers

- ``X-Agent-Runner-Delivery``: the delivery ID (also in the body);
- ``X-Agent-Runner-Signature``: ``sha256=`` and the hex HMAC-SHA256 of the exact body bytes
  with ``AGENT_RUNNER_WEBHOOK_SECRET`` (:func:`signature`; compare in constant time).

A 2xx answer ends the delivery. A network error, a timeout, 408, 429 or 5xx is retried after
``AGENT_RUNNER_WEBHOOK_BACKOFF_S`` doubled per attempt (at most
``AGENT_RUNNER_WEBHOOK_MAX_BACKOFF_S``), up to ``AGENT_RUNNER_WEBHOOK_MAX_ATTEMPTS`` attempts in
all; any other answer ends it as ``failed``. The hash records ``status`` (``pending``,
``delivered``, ``failed``, ``refused``), ``attempts`` and ``last_error``.

No server-side request forgery: :func:`check_url` resolves the host and refuses it unless every
address it resolves to is public (``ipaddress.is_global``), or
``AGENT_RUNNER_WEBHOOK_ALLOW_PRIVATE=true``; with ``AGENT_RUNNER_WEBHOOK_ALLOWED_HOSTS`` only
those hosts (``hooks.example.com``, ``*.example.org``) are called. The check runs when the URL
is registered and again at every attempt, and the request goes to the address that was checked
(never resolved a second time), without following redirects or proxies from the environment.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx2
from celery import Task

from runner_core.errors import ConfigurationError, InvalidRequestError
from runner_core.events import RunCompletionEvent
from runner_core.wire import DELIVER_WEBHOOK, OWNER_TTL_S, webhook_key
from session_backends.redis_target import AsyncRedis

from .app import app
from .runtime import WorkerRuntime, get_runtime

__all__ = [
    "DELIVERY_HEADER",
    "DELIVER_WEBHOOK",
    "SIGNATURE_HEADER",
    "WebhookRefusedError",
    "WebhookSettings",
    "WebhookTarget",
    "check_url",
    "deliver_webhook",
    "delivery_id",
    "enqueue_after_run",
    "forget_webhook",
    "register_webhook",
    "signature",
    "webhook_state",
]

logger = logging.getLogger(__name__)

DELIVERY_HEADER = "X-Agent-Runner-Delivery"
SIGNATURE_HEADER = "X-Agent-Runner-Signature"
#: The longest webhook URL accepted.
MAX_URL_LENGTH = 2048
#: Answers that are worth another attempt; any other non-2xx ends the delivery.
_RETRYABLE = frozenset({408, 425, 429})


class WebhookRefusedError(InvalidRequestError):
    """The webhook URL is not allowed: bad form, a host outside the allowed list, or an
    address that is private, loopback or otherwise not public."""


def _env_text(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value.strip() if value and value.strip() else None


def _env_number(
    env: Mapping[str, str], name: str, default: float, low: float, high: float
) -> float:
    raw = _env_text(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a number.") from None
    if not low <= value <= high:
        raise ConfigurationError(f"{name}={raw!r} must be between {low:g} and {high:g}.")
    return value


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """The ``AGENT_RUNNER_WEBHOOK_*`` variables; the gateway and the run workers need the same.

    ``secret`` None means webhooks are off: the gateway refuses a ``webhook_url``.
    """

    secret: str | None = field(default=None, repr=False)
    allowed_hosts: tuple[str, ...] = ()
    allow_private: bool = False
    max_attempts: int = 8
    backoff_s: float = 2.0
    max_backoff_s: float = 300.0
    timeout_s: float = 10.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WebhookSettings:
        """Read and check the variables.

        Raises:
            ConfigurationError: a bad value, naming the variable.
        """
        env = os.environ if environ is None else environ
        secret = _env_text(env, "AGENT_RUNNER_WEBHOOK_SECRET")
        if secret is not None and len(secret) < 16:
            raise ConfigurationError(
                "AGENT_RUNNER_WEBHOOK_SECRET is shorter than 16 characters; use a long random "
                "secret (e.g. python -c 'import secrets; print(secrets.token_hex(32))')."
            )
        hosts = _env_text(env, "AGENT_RUNNER_WEBHOOK_ALLOWED_HOSTS") or ""
        private = (_env_text(env, "AGENT_RUNNER_WEBHOOK_ALLOW_PRIVATE") or "false").lower()
        if private not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigurationError(
                f"AGENT_RUNNER_WEBHOOK_ALLOW_PRIVATE={private!r} is not a boolean; use true or "
                "false."
            )
        return cls(
            secret=secret,
            allowed_hosts=tuple(h.strip().lower() for h in hosts.split(",") if h.strip()),
            allow_private=private in ("true", "1", "yes"),
            max_attempts=int(
                _env_number(env, "AGENT_RUNNER_WEBHOOK_MAX_ATTEMPTS", 8, 1, 100)
            ),
            backoff_s=_env_number(env, "AGENT_RUNNER_WEBHOOK_BACKOFF_S", 2.0, 0.01, 3600),
            max_backoff_s=_env_number(
                env, "AGENT_RUNNER_WEBHOOK_MAX_BACKOFF_S", 300.0, 0.01, 86400
            ),
            timeout_s=_env_number(env, "AGENT_RUNNER_WEBHOOK_TIMEOUT_S", 10.0, 0.1, 300),
        )

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1, 2, ...)."""
        return float(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))

    def host_allowed(self, host: str) -> bool:
        """Whether ``host`` is on the allowed list (any host when the list is empty)."""
        if not self.allowed_hosts:
            return True
        host = host.lower().rstrip(".")
        for allowed in self.allowed_hosts:
            if allowed.startswith("*."):
                if host.endswith(allowed[1:]) and host != allowed[2:]:
                    return True
            elif host == allowed:
                return True
        return False


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    """A checked webhook URL and the address to send to (resolved and checked once)."""

    url: str
    scheme: str
    host: str
    port: int
    address: str

    def request_url(self) -> str:
        """The URL with the checked address in place of the host name."""
        parts = urlsplit(self.url)
        host = f"[{self.address}]" if ":" in self.address else self.address
        return urlunsplit((self.scheme, f"{host}:{self.port}", parts.path or "/", parts.query, ""))

    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def _parse(url: object) -> tuple[str, str, int]:
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise WebhookRefusedError(
            f"webhook_url must be an http(s) URL of at most {MAX_URL_LENGTH} characters."
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookRefusedError(f"webhook_url is not a valid URL ({exc}).") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefusedError(
            "webhook_url must be an absolute http:// or https:// URL with a host "
            "(e.g. https://hooks.example.com/agent-runner)."
        )
    if parts.username is not None or parts.password is not None:
        raise WebhookRefusedError(
            "webhook_url must not carry credentials; receivers check the signature header."
        )
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def check_url(url: object, settings: WebhookSettings) -> WebhookTarget:
    """Check a webhook URL against the policy and resolve it (blocking: DNS).

    Returns:
        The target, with the one address the request must go to.

    Raises:
        WebhookRefusedError: a malformed URL, a host not on the allowed list, a host that does
            not resolve, or one with any address that is not public (unless private ones are
            allowed); the message says which and what to change.
    """
    scheme, host, port = _parse(url)
    assert isinstance(url, str)
    if not settings.host_allowed(host):
        raise WebhookRefusedError(
            f"webhook_url host {host!r} is not allowed; allowed hosts: "
            f"{', '.join(settings.allowed_hosts)} (AGENT_RUNNER_WEBHOOK_ALLOWED_HOSTS)."
        )
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookRefusedError(f"webhook_url host {host!r} does not resolve ({exc}).") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not settings.allow_private:
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            if not ip.is_global or ip.is_multicast:
                raise WebhookRefusedError(
                    f"webhook_url host {host!r} resolves to {address}, which is not a public "
                    "address (private, loopback, link-local or reserved); webhooks go only to "
                    "public addresses unless AGENT_RUNNER_WEBHOOK_ALLOW_PRIVATE=true."
                )
    if not addresses:
        raise WebhookRefusedError(f"webhook_url host {host!r} has no address.")
    return WebhookTarget(url, scheme, host, port, addresses[0])


def signature(body: bytes, secret: str) -> str:
    """The signature header's value: ``sha256=`` and the hex HMAC-SHA256 of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def delivery_id(invocation_id: str) -> str:
    """The delivery ID of a run's webhook: the same for every attempt and every redelivery."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"agent-runner:webhook:{invocation_id}"))


async def register_webhook(
    redis: AsyncRedis, invocation_id: str, url: str, *, prefix: str, ttl_s: int
) -> None:
    """Record ``url`` as the webhook of the run ``invocation_id`` (before the run is sent)."""
    key = webhook_key(invocation_id, prefix)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping={"url": url, "status": "pending", "attempts": 0})
        pipe.expire(key, max(ttl_s, OWNER_TTL_S))
        await pipe.execute()


async def forget_webhook(redis: AsyncRedis, invocation_id: str, *, prefix: str) -> None:
    """Remove a webhook registered for a run that was then not sent."""
    await redis.delete(webhook_key(invocation_id, prefix))


async def webhook_state(
    redis: AsyncRedis, invocation_id: str, *, prefix: str
) -> dict[str, Any] | None:
    """The webhook of a run as ``{"url", "status", "attempts", "last_error"?}``, or None."""
    raw = await redis.hgetall(webhook_key(invocation_id, prefix))
    if not raw:
        return None
    state: dict[str, Any] = {_text(k): _text(v) for k, v in raw.items()}
    state["attempts"] = int(state.get("attempts", 0))
    state.pop("queued", None)
    state["delivery_id"] = delivery_id(invocation_id)
    return state


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _to_queue(redis: AsyncRedis, key: str) -> bool:
    """Whether the run has a webhook whose delivery was not queued yet."""
    url, queued = await redis.hmget(key, ["url", "queued"])
    return url is not None and queued is None


async def _mark_queued(redis: AsyncRedis, key: str) -> None:
    await redis.hset(key, "queued", 1)


async def webhook_due(rt: WorkerRuntime, invocation_id: str) -> bool:
    """Whether the run has a webhook whose delivery was not queued yet (False, logged, when
    that could not be read). On the runtime's loop: the run task asks it in the same hop as
    the run itself, and passes the answer to :func:`enqueue_after_run`."""
    try:
        return await _to_queue(rt.redis, webhook_key(invocation_id, rt.settings.events_prefix))
    except Exception:
        logger.exception("run %s: its webhook delivery could not be queued", invocation_id)
        return False


def enqueue_after_run(
    rt: WorkerRuntime, completion: RunCompletionEvent, *, due: bool | None = None
) -> None:
    """After a run's task: queue its webhook delivery if the run has one and it was not
    queued yet (a redelivered run's copy finds it queued). Marked after sending, so a worker
    dying in between makes a duplicate delivery at worst, never a lost one. Never raises.

    ``due``: what :func:`webhook_due` answered for this run already (None: ask here)."""
    invocation_id = completion.invocation_id
    key = webhook_key(invocation_id, rt.settings.events_prefix)
    try:
        if due is None:
            due = rt.run(_to_queue(rt.redis, key), timeout=30)
        if not due:
            return
        app.send_task(DELIVER_WEBHOOK, args=[invocation_id], queue=rt.settings.queue)
        rt.run(_mark_queued(rt.redis, key), timeout=30)
    except Exception:
        # The run is complete and published; its completion stays readable from the stream.
        logger.exception("run %s: its webhook delivery could not be queued", invocation_id)


def _body(invocation_id: str, completion: RunCompletionEvent) -> bytes:
    payload = {
        "delivery_id": delivery_id(invocation_id),
        "invocation_id": invocation_id,
        "app_name": completion.app_name,
        "user_id": completion.user_id,
        "session_id": completion.session_id,
        "status": completion.status,
        "completion": json.loads(completion.to_json()),
    }
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def _post(target: WebhookTarget, body: bytes, headers: dict[str, str], timeout: float) -> int:
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    with httpx2.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        response = client.post(
            target.request_url(),
            content=body,
            headers={**headers, "Host": target.host_header()},
            extensions=extensions,
        )
    return response.status_code


async def _count_attempt(redis: AsyncRedis, key: str) -> int:
    return int(await redis.hincrby(key, "attempts", 1))


def _deliver_webhook(self: Task, invocation_id: str) -> str:
    """Deliver one run's webhook (one attempt; retried by raising ``self.retry``).

    Returns:
        The final status: ``delivered``, ``failed``, ``refused``, or ``skipped`` (no webhook,
        or already delivered).
    """
    rt = get_runtime()
    settings = WebhookSettings.from_env()
    prefix = rt.settings.events_prefix
    key = webhook_key(invocation_id, prefix)
    state = rt.run(webhook_state(rt.redis, invocation_id, prefix=prefix), timeout=30)
    if state is None or state.get("status") == "delivered":
        return "skipped"
    # Counted atomically: two deliveries of one webhook (a duplicate) never share a number.
    attempt = int(rt.run(_count_attempt(rt.redis, key), timeout=30))

    def record(status: str, error: str | None = None) -> str:
        fields: dict[str, str | int] = {"status": status}
        if error is not None:
            fields["last_error"] = error
        rt.run(rt.redis.hset(key, mapping=fields), timeout=30)  # type: ignore[arg-type]
        return status

    completion = rt.run(rt.bus.completion(invocation_id), timeout=30)
    if settings.secret is None:
        logger.error("run %s: no AGENT_RUNNER_WEBHOOK_SECRET on this worker", invocation_id)
        return record("failed", "the worker has no AGENT_RUNNER_WEBHOOK_SECRET")
    if completion is None:
        return record("failed", "the run's completion is no longer in its event stream")
    try:
        target = check_url(state["url"], settings)
    except WebhookRefusedError as exc:
        logger.warning("run %s: webhook refused: %s", invocation_id, exc)
        return record("refused", str(exc))
    body = _body(invocation_id, completion)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "agent-runner-webhooks",
        DELIVERY_HEADER: delivery_id(invocation_id),
        SIGNATURE_HEADER: signature(body, settings.secret),
    }
    try:
        status_code = _post(target, body, headers, settings.timeout_s)
    except httpx2.HTTPError as exc:
        error, retryable = f"{type(exc).__name__}: {exc}", True
    else:
        if 200 <= status_code < 300:
            logger.info("run %s: webhook delivered (attempt %d)", invocation_id, attempt)
            return record("delivered")
        error = f"the receiver answered HTTP {status_code}"
        retryable = status_code >= 500 or status_code in _RETRYABLE
    if not retryable or attempt >= settings.max_attempts:
        logger.warning(
            "run %s: webhook failed after %d attempts: %s", invocation_id, attempt, error
        )
        return record("failed", error)
    record("pending", error)
    countdown = settings.backoff(attempt)
    logger.info("run %s: webhook attempt %d failed (%s); again in %g s", invocation_id, attempt,
                error, countdown)
    raise self.retry(countdown=countdown, max_retries=settings.max_attempts)


deliver_webhook: Task = app.task(
    name=DELIVER_WEBHOOK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)(_deliver_webhook)
