"""What every route of the gateway shares: the :class:`Gateway` (settings and the clients opened
at start-up), the API key dependency, the body size limit, and reading a JSON body."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import Depends, Header, Request

from runner_core.errors import InvalidRequestError, shown
from runner_core.session import SessionService
from workers.bus import EventBus
from workers.webhooks import WebhookSettings

from .errors import BadBodyError, BodyTooLargeError, UnauthorizedError, error_body
from .settings import ApiKey, GatewaySettings

__all__ = [
    "BodyLimit",
    "Gateway",
    "Key",
    "api_key",
    "gateway_of",
    "json_object",
    "user_of",
    "validate_seq",
]


class Gateway:
    """What the routes share: settings and the clients opened at start-up."""

    def __init__(self, settings: GatewaySettings, webhooks: WebhookSettings) -> None:
        self.settings = settings
        self.webhooks = webhooks
        self.prefix = settings.workers.events_prefix
        self.redis: aioredis.Redis
        self.bus: EventBus
        self.sessions: SessionService

    async def open(self) -> None:
        from session_backends import from_url

        workers = self.settings.workers
        self.redis = aioredis.Redis.from_url(
            workers.redis_url,
            max_connections=self.settings.redis_connections,
            socket_timeout=self.settings.keepalive_s + 10,
        )
        self.bus = EventBus(self.redis, prefix=self.prefix)
        self.sessions = from_url(workers.session_url)

    async def close(self) -> None:
        await self.redis.aclose()
        await self.sessions.close()


# --- request plumbing ----------------------------------------------------------------------


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413, by ``Content-Length`` at once and
    while reading a body sent without one."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _send_error(send, 413, "body_too_large", self._message())
            return
        received = 0

        async def limited() -> MutableMapping[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLargeError(self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return (
            f"the request body is over {self.limit} bytes "
            "(AGENT_RUNNER_GATEWAY_MAX_BODY_BYTES); send less."
        )


async def _send_error(
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    status: int,
    error_type: str,
    message: str,
) -> None:
    body = json.dumps(error_body(error_type, message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def api_key(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> ApiKey:
    """The caller's key, from ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``.

    Raises:
        UnauthorizedError: no key, or one the gateway does not know.
    """
    presented = x_api_key
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedError(
                "the Authorization header must be 'Bearer <API key>' (or send X-API-Key)."
            )
        presented = token.strip()
    if not presented:
        raise UnauthorizedError(
            "this route needs an API key: send 'Authorization: Bearer <API key>' or "
            "'X-API-Key: <API key>'."
        )
    key = gateway_of(request).settings.key_for(presented)
    if key is None:
        raise UnauthorizedError("the API key is not valid; check it with your operator.")
    return key


Key = Annotated[ApiKey, Depends(api_key)]


async def json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else None
    except (ValueError, RecursionError) as exc:
        raise BadBodyError(f"the body is not valid JSON ({exc}); send a JSON object.") from None
    if not isinstance(body, dict):
        raise BadBodyError("the body must be a JSON object, e.g. {\"app_name\": ..., ...}.")
    return body


def user_of(key: ApiKey, given: object) -> str:
    """The user a request acts for: the key's; an operator key names it (``user_id``)."""
    if key.user_id is None:
        if not isinstance(given, str) or not given:
            raise InvalidRequestError(
                "user_id is required with an operator key: name the user the run is for."
            )
        return given
    if given is not None and given != key.user_id:
        raise InvalidRequestError(
            f"user_id {shown(given)} is not this API key's user: the user of a request is "
            "always its key's; leave user_id out."
        )
    return key.user_id


def validate_seq(value: str, name: str) -> int:
    if not value.isdigit() or len(value) > 18:
        raise InvalidRequestError(
            f"{name} {shown(value)} is not an event seq; send the id of the last event you "
            "received (a whole number >= 0)."
        )
    return int(value)
