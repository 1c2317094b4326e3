"""The HTTP gateway: an ASGI app (FastAPI) in front of the run workers and the event bus.

Build it with :func:`create_app` (``agent-runner serve`` runs it under uvicorn). Every route but
``/healthz``, ``/openapi.json`` and ``/docs`` needs an API key (``Authorization: Bearer KEY`` or
``X-API-Key: KEY``); the user is always the key's. docs/gateway.md describes the API; the
OpenAPI description is served at ``/openapi.json``.

The app holds no state of its own between requests: runs are recorded in Redis
(:mod:`gateway.runs`), events are read from the runs' streams (:mod:`gateway.stream`), so any
number of instances serve the same runs.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from runner_core.errors import AgentRunnerError, InvalidRequestError, shown
from runner_core.wire import OWNER_TTL_S, session_digest, session_lock_key
from workers import client
from workers.requests import RunRequest
from workers.webhooks import (
    WebhookSettings,
    check_url,
    forget_webhook,
    register_webhook,
    webhook_state,
)

from . import resources
from .deps import BodyLimit, Gateway, Key, gateway_of, json_object, user_of, validate_seq
from .errors import ConflictError, NotFoundError, error_body, error_status
from .openapi import CONFIRM_BODY, CONFIRMATION_OPTIONS, SUBMIT_BODY, openapi
from .runs import RunOwner, authorize, forget_run, record_run
from .settings import GatewaySettings
from .stream import event_frames

# Gateway and Key are re-exported for the routes built beside these (gateway.console_api).
__all__ = ["Gateway", "Key", "create_app"]

logger = logging.getLogger(__name__)

#: The older private name of :func:`gateway.deps.user_of` (the console's routes use it).
_user_of = user_of


# --- the work of the routes ----------------------------------------------------------------


async def _submit(
    gateway: Gateway, fields: dict[str, Any], webhook_url: object
) -> dict[str, Any]:
    """Validate a run request, record its owner (and webhook), send it; the 202 body."""
    workers = gateway.settings.workers
    request = RunRequest.from_task_arguments(
        (), fields, max_message_chars=workers.max_message_chars
    )
    if webhook_url is not None:
        if gateway.webhooks.secret is None:
            raise InvalidRequestError(
                "webhook_url cannot be used: webhooks are not configured on this gateway "
                "(AGENT_RUNNER_WEBHOOK_SECRET)."
            )
        await asyncio.to_thread(check_url, webhook_url, gateway.webhooks)
    invocation_id = str(uuid.uuid4())
    session_id = request.session_id or invocation_id
    owner = RunOwner(request.app_name, request.user_id, session_id)
    await record_run(gateway.redis, invocation_id, owner, prefix=gateway.prefix)
    try:
        if isinstance(webhook_url, str):
            await register_webhook(
                gateway.redis,
                invocation_id,
                webhook_url,
                prefix=gateway.prefix,
                ttl_s=max(OWNER_TTL_S, workers.event_ttl_s),
            )
        args, kwargs = request.task_arguments()
        send = functools.partial(client.submit, *args, invocation_id=invocation_id, **kwargs)
        await asyncio.to_thread(send)
    except Exception:  # not sent: leave nothing behind (a cancelled request may have sent it)
        await forget_webhook(gateway.redis, invocation_id, prefix=gateway.prefix)
        await forget_run(gateway.redis, invocation_id, prefix=gateway.prefix)
        raise
    return {
        "invocation_id": invocation_id,
        "app_name": owner.app_name,
        "user_id": owner.user_id,
        "session_id": session_id,
        "run_url": f"/v1/runs/{invocation_id}",
        "events_url": f"/v1/runs/{invocation_id}/events",
    }


def _history_url(owner: RunOwner) -> str:
    return f"/v1/sessions/{owner.app_name}/{owner.session_id}"


# --- the app -------------------------------------------------------------------------------


def create_app(
    settings: GatewaySettings | None = None, webhooks: WebhookSettings | None = None
) -> FastAPI:
    """The gateway's ASGI app.

    Args:
        settings: default: :meth:`GatewaySettings.from_env`.
        webhooks: default: :meth:`WebhookSettings.from_env`.

    Raises:
        ConfigurationError: a bad setting (or no API key), naming the variable.
    """
    settings = settings or GatewaySettings.from_env()
    gateway = Gateway(settings, webhooks or WebhookSettings.from_env())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.open()
        try:
            yield
        finally:
            await gateway.close()

    app = FastAPI(
        title="agent-runner gateway",
        version="1",
        description="Submit runs, stream their events (SSE), cancel and confirm them. "
        "See docs/gateway.md.",
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    _install_error_handlers(app)
    _add_routes(app)
    app.include_router(resources.router)
    from .console import install_console  # it builds on this module's routes and key check

    install_console(app)
    app.openapi = functools.partial(openapi, app)  # type: ignore[method-assign]
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "X-API-Key"],
        )
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        status, error_type = error_status(exc)
        if status >= 500 and not isinstance(exc, AgentRunnerError):
            logger.exception("%s %s failed", request.method, request.url.path)
            message = "the gateway failed to serve this request; the error is in its log."
        else:
            message = str(exc)
        return JSONResponse(error_body(error_type, message), status_code=status)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        error_type = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http")
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.url.path}; the API is described at /openapi.json."
        return JSONResponse(
            error_body(error_type, message), status_code=exc.status_code, headers=exc.headers
        )

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        return JSONResponse(
            error_body("invalid_request", f"invalid request: {problems}"), status_code=422
        )

    app.add_exception_handler(Exception, on_error)
    app.add_exception_handler(AgentRunnerError, on_error)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)


def _add_routes(app: FastAPI) -> None:  # noqa: C901 (one closure per route)
    gw = Depends(gateway_of)

    @app.get("/healthz", tags=["service"])
    async def healthz(gateway: Gateway = gw) -> dict[str, str]:
        """Liveness and readiness: the events Redis answers."""
        await gateway.bus.last_seq("healthz")
        return {"status": "ok"}

    @app.post("/v1/runs", status_code=202, tags=["runs"], openapi_extra=SUBMIT_BODY)
    async def submit_run(request: Request, key: Key, gateway: Gateway = gw) -> dict[str, Any]:
        """Submit a run: the fields of ``submit_run`` (user from the key) and ``webhook_url``."""
        body = await json_object(request)
        webhook_url = body.pop("webhook_url", None)
        body["user_id"] = user_of(key, body.get("user_id"))
        return await _submit(gateway, body, webhook_url)

    @app.get("/v1/runs/{invocation_id}", tags=["runs"])
    async def get_run(invocation_id: str, key: Key, gateway: Gateway = gw) -> dict[str, Any]:
        """A run's owner, state (queued, running, or its completion's status) and webhook."""
        client.validate_invocation_id(invocation_id)
        owner = await authorize(gateway.redis, key, invocation_id, prefix=gateway.prefix)
        last_seq = await gateway.bus.last_seq(invocation_id)
        completion = await gateway.bus.completion(invocation_id)
        status: str
        if completion is not None:
            status = completion.status
        else:
            status = "queued" if last_seq is None else "running"
        return {
            "invocation_id": invocation_id,
            "app_name": owner.app_name,
            "user_id": owner.user_id,
            "session_id": owner.session_id,
            "status": status,
            "last_seq": last_seq,
            "completion": None if completion is None else json.loads(completion.to_json()),
            "webhook": await webhook_state(gateway.redis, invocation_id, prefix=gateway.prefix),
        }

    @app.get(
        "/v1/runs/{invocation_id}/events",
        tags=["runs"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}, 204: {}},
    )
    async def run_events(
        invocation_id: str,
        key: Key,
        gateway: Gateway = gw,
        last_event_id: Annotated[str | None, Header()] = None,
        after_seq: Annotated[str | None, Query()] = None,
    ) -> Response:
        """The run's events as server-sent events (``id:`` = ``seq``), resumable with
        ``Last-Event-ID`` (or ``?after_seq=``); 204 when the client has the completion."""
        client.validate_invocation_id(invocation_id)
        owner = await authorize(gateway.redis, key, invocation_id, prefix=gateway.prefix)
        position: int | None = None
        if last_event_id is not None and last_event_id.strip():
            position = validate_seq(last_event_id.strip(), "Last-Event-ID")
        elif after_seq is not None:
            position = validate_seq(after_seq, "after_seq")
        if position is not None:
            done = await gateway.bus.completion(invocation_id)
            if done is not None and position >= done.seq:
                return Response(status_code=204)  # EventSource stops reconnecting on 204
        frames = event_frames(
            gateway.redis,
            invocation_id,
            prefix=gateway.prefix,
            after_seq=position,
            keepalive_s=gateway.settings.keepalive_s,
            history=_history_url(owner),
            claim_key=session_lock_key(
                session_digest(owner.app_name, owner.user_id, owner.session_id),
                "claim",
                gateway.prefix,
            ),
        )
        return StreamingResponse(
            _with_retry_hint(frames),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.post("/v1/runs/{invocation_id}/cancel", tags=["runs"])
    async def cancel_run(invocation_id: str, key: Key, gateway: Gateway = gw) -> JSONResponse:
        """Ask the run to stop (202), or say how it already ended (200)."""
        client.validate_invocation_id(invocation_id)
        await authorize(gateway.redis, key, invocation_id, prefix=gateway.prefix)
        done = await gateway.bus.request_cancel(invocation_id)
        if done is None:
            return JSONResponse(
                {"invocation_id": invocation_id, "cancel_requested": True}, status_code=202
            )
        return JSONResponse(
            {
                "invocation_id": invocation_id,
                "cancel_requested": False,
                "status": done.status,
                "completion": json.loads(done.to_json()),
            }
        )

    @app.post(
        "/v1/runs/{invocation_id}/confirmations",
        status_code=202,
        tags=["runs"],
        openapi_extra=CONFIRM_BODY,
    )
    async def confirm_run(
        invocation_id: str, request: Request, key: Key, gateway: Gateway = gw
    ) -> dict[str, Any]:
        """Answer a paused run's confirmations: a new run of the same session (202)."""
        client.validate_invocation_id(invocation_id)
        owner = await authorize(gateway.redis, key, invocation_id, prefix=gateway.prefix)
        body = await json_object(request)
        if "tool_confirmations" not in body:
            raise InvalidRequestError(
                "tool_confirmations is required: {call_id: true | false | "
                "{\"arguments\": {...}}} for the calls the run.paused event lists."
            )
        extra = sorted(set(body) - CONFIRMATION_OPTIONS - {"tool_confirmations"})
        if extra:
            raise InvalidRequestError(
                f"unexpected field(s) {', '.join(map(shown, extra))}: a confirmation continues "
                "the paused run's session; it takes tool_confirmations and "
                f"{', '.join(sorted(CONFIRMATION_OPTIONS))}."
            )
        done = await gateway.bus.completion(invocation_id)
        last_seq = await gateway.bus.last_seq(invocation_id) if done is None else done.seq
        if done is None and last_seq is not None:
            raise ConflictError(f"run {invocation_id} is still running; it is not paused.")
        if done is not None and done.status != "paused":
            raise ConflictError(
                f"run {invocation_id} ended {done.status!r}, not paused: nothing waits for a "
                "confirmation."
            )
        webhook_url = body.pop("webhook_url", None)
        fields = {
            **body,
            "app_name": owner.app_name,
            "user_id": owner.user_id,
            "session_id": owner.session_id,
            "message": None,
        }
        return await _submit(gateway, fields, webhook_url)

    @app.get("/v1/sessions/{app_name}/{session_id}", tags=["sessions"])
    async def session_history(
        app_name: str,
        session_id: str,
        key: Key,
        gateway: Gateway = gw,
        user_id: Annotated[str | None, Query()] = None,
        limit: Annotated[int | None, Query(ge=1, le=10_000)] = None,
    ) -> Response:
        """A session's stored events (the newest ``limit``) and state."""
        user = user_of(key, user_id)
        session = await gateway.sessions.get_session(app_name, user, session_id, num_events=limit)
        if session is None:
            raise NotFoundError(
                f"no session {session_id!r} of app {app_name!r} for this API key's user."
            )
        events = ",".join(event.to_json() for event in session.events)
        head = json.dumps(
            {
                "app_name": session.app_name,
                "user_id": session.user_id,
                "session_id": session.id,
                "state": session.state,
                "event_count": session.event_count,
            }
        )
        return Response(head[:-1] + f',"events":[{events}]}}', media_type="application/json")

    del healthz, submit_run, get_run, run_events, cancel_run, confirm_run, session_history


async def _with_retry_hint(frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The stream's frames after a ``retry:`` hint (reconnect after 2 s)."""
    yield b"retry: 2000\n\n"
    async for frame in frames:
        yield frame
