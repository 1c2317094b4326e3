"""The routes the web console needs besides the gateway's run and session routes.

- ``GET /v1/apps``: the app names the workers serve (the built-in ``assistant`` and the names
  of ``AGENT_RUNNER_AGENTS``, read from the same settings the workers read);
- ``GET /v1/sessions/{app_name}``: the key's user's live sessions of an app, newest first,
  without their events (an operator key names the user with ``?user_id=``);
- ``POST /v1/runs/{invocation_id}/feedback``: feedback on a step of the run
  (``{"step_id", "kind": "positive" | "negative" | "correction", "content"}``), recorded with
  :func:`workers.feedback.give_feedback` against the same trace store and the long-term memory
  (``AGENT_RUNNER_MEMORY_URL``); the answer names the experience it created, if any.

Every route needs an API key like every other route (:func:`gateway.deps.api_key`); a key only
ever sees its own user's sessions and runs (another user's run is the same 404 as an unknown
one, :func:`gateway.runs.authorize`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from runner_core.errors import InvalidRequestError, TraceNotFoundError, shown
from runner_core.session import validate_identifier
from workers import client
from workers.agents import BUILTIN_APP
from workers.feedback import give_feedback

from .deps import Gateway, Key, gateway_of, json_object, user_of
from .errors import NotFoundError
from .runs import authorize

__all__ = ["router"]

router = APIRouter(tags=["console"])


GatewayDep = Annotated[Gateway, Depends(gateway_of)]


@router.get("/v1/apps")
async def list_apps(key: Key, gateway: GatewayDep) -> dict[str, list[str]]:
    """The apps a run can be submitted to: ``assistant`` and those of ``AGENT_RUNNER_AGENTS``."""
    configured = gateway.settings.workers.agents
    return {"apps": [BUILTIN_APP, *sorted(name for name in configured if name != BUILTIN_APP)]}


@router.get("/v1/sessions/{app_name}")
async def list_sessions(
    app_name: str,
    key: Key,
    gateway: GatewayDep,
    user_id: Annotated[str | None, Query()] = None,
) -> dict[str, Any]:
    """The user's live sessions of ``app_name``, most recently updated first (no events)."""
    validate_identifier(app_name, "app_name")
    user = user_of(key, user_id)
    sessions = await gateway.sessions.list_sessions(app_name, user)
    sessions.sort(key=lambda session: session.updated_at, reverse=True)
    return {
        "app_name": app_name,
        "user_id": user,
        "sessions": [
            {
                "session_id": session.id,
                "event_count": session.event_count,
                "created_at": session.created_at.isoformat(),
                "updated_at": session.updated_at.isoformat(),
            }
            for session in sessions
        ],
    }


#: The fields of a feedback body.
_FEEDBACK_FIELDS = frozenset({"step_id", "kind", "content"})


@router.post("/v1/runs/{invocation_id}/feedback", status_code=201)
async def run_feedback(
    invocation_id: str, request: Request, key: Key, gateway: GatewayDep
) -> dict[str, Any]:
    """Feedback on a step of the run; the answer holds the experience it created, if any."""
    client.validate_invocation_id(invocation_id)
    owner = await authorize(gateway.redis, key, invocation_id, prefix=gateway.prefix)
    body = await json_object(request)
    extra = sorted(set(body) - _FEEDBACK_FIELDS)
    if extra:
        raise InvalidRequestError(
            f"unexpected field(s) {', '.join(map(shown, extra))}: feedback takes step_id, kind "
            "(positive, negative or correction) and content."
        )
    missing = sorted(_FEEDBACK_FIELDS - set(body))
    if missing:
        raise InvalidRequestError(
            f"{', '.join(missing)} missing: send step_id (a step of the run's trace), kind "
            "(positive, negative or correction) and content (what you have to say)."
        )
    try:
        result = await asyncio.to_thread(
            give_feedback,
            owner.app_name,
            owner.user_id,
            invocation_id,
            body["step_id"],
            body["kind"],
            body["content"],
            settings=gateway.settings.workers,
        )
    except TraceNotFoundError as exc:
        raise NotFoundError(str(exc)) from None
    answer: dict[str, Any] = json.loads(json.dumps(result.to_dict()))
    return answer
