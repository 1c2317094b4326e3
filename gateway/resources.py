"""What runs leave behind, over HTTP: a run's execution trace, feedback on its steps, and a
session's artifacts.

Each route acts for the key's user only (an operator key names the user with ``?user_id=``),
through the producers' public helpers: :func:`workers.client.aget_trace` (docs/traces.md),
:func:`workers.feedback.give_feedback` (docs/memory.md) and :mod:`workers.artifacts`
(docs/artifacts.md). Anything another user owns is answered 404, as an unknown ID is.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from runner_core.errors import InvalidRequestError, shown
from workers import artifacts, client
from workers.feedback import give_feedback

from .deps import Gateway, Key, gateway_of, json_object, user_of
from .errors import NotFoundError
from .runs import authorize

__all__ = ["router"]

router = APIRouter()
UserQuery = Annotated[str | None, Query(description="the user, with an operator key only")]


@router.get("/v1/runs/{invocation_id}/trace", tags=["runs"])
async def run_trace(
    invocation_id: str, key: Key, gateway: Annotated[Gateway, Depends(gateway_of)]
) -> Response:
    """The run's execution trace (docs/traces.md) as JSON."""
    client.validate_invocation_id(invocation_id)
    owner = await authorize(gateway.redis, key, invocation_id, prefix=gateway.prefix)
    trace = await client.aget_trace(owner.app_name, owner.user_id, invocation_id)
    return Response(trace.to_json(), media_type="application/json")


#: The fields of a feedback body.
_FEEDBACK_FIELDS = ("step_id", "kind", "content")


@router.post(
    "/v1/runs/{invocation_id}/feedback",
    status_code=201,
    tags=["runs"],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": list(_FEEDBACK_FIELDS),
                        "properties": {
                            "step_id": {"type": "string", "description": "a step of the trace"},
                            "kind": {"enum": ["positive", "negative", "correction"]},
                            "content": {"type": "string"},
                        },
                    }
                }
            },
        }
    },
)
async def run_feedback(
    invocation_id: str,
    request: Request,
    key: Key,
    gateway: Annotated[Gateway, Depends(gateway_of)],
) -> dict[str, Any]:
    """Feedback on a step of the run (docs/memory.md): recorded in its trace and, with memory
    configured, learnt as an experience. 201 with what was stored."""
    client.validate_invocation_id(invocation_id)
    owner = await authorize(gateway.redis, key, invocation_id, prefix=gateway.prefix)
    body = await json_object(request)
    unknown = sorted(set(body) - set(_FEEDBACK_FIELDS))
    missing = [name for name in _FEEDBACK_FIELDS if name not in body]
    if unknown or missing:
        problems = [f"missing {', '.join(missing)}"] if missing else []
        problems += [f"unexpected {', '.join(map(shown, unknown))}"] if unknown else []
        raise InvalidRequestError(
            f"invalid feedback: {'; '.join(problems)}; send step_id (a step of GET .../trace), "
            "kind (positive, negative or correction) and content."
        )
    # The stores' own helper, in a thread: it opens and closes them around the one write.
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
    return result.to_dict()


@router.get("/v1/sessions/{app_name}/{session_id}/artifacts", tags=["artifacts"])
async def list_artifacts(
    app_name: str, session_id: str, key: Key, user_id: UserQuery = None
) -> dict[str, Any]:
    """The artifact names the session sees (its own and the user's ``user:...``), sorted."""
    user = user_of(key, user_id)
    names = await artifacts.alist_artifacts(app_name, user, session_id)
    return {"app_name": app_name, "user_id": user, "session_id": session_id, "artifacts": names}


@router.get("/v1/sessions/{app_name}/{session_id}/artifacts/{name}/versions", tags=["artifacts"])
async def artifact_versions(
    app_name: str, session_id: str, name: str, key: Key, user_id: UserQuery = None
) -> dict[str, Any]:
    """Every stored version of an artifact, oldest first, without the bytes."""
    user = user_of(key, user_id)
    versions = await artifacts.aartifact_versions(app_name, user, session_id, name)
    if not versions:
        raise _no_artifact(name, session_id)
    return {"name": name, "versions": [version.to_json() for version in versions]}


@router.get(
    "/v1/sessions/{app_name}/{session_id}/artifacts/{name}",
    tags=["artifacts"],
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def fetch_artifact(
    app_name: str,
    session_id: str,
    name: str,
    key: Key,
    user_id: UserQuery = None,
    version: Annotated[int | None, Query(ge=0)] = None,
) -> Response:
    """The bytes of an artifact's latest version (or ``?version=N``), with its content type;
    ``X-Artifact-Version`` says which version it is."""
    user = user_of(key, user_id)
    artifact = await artifacts.aload_artifact(app_name, user, session_id, name, version=version)
    if artifact is None:
        raise _no_artifact(name, session_id, version)
    return Response(
        artifact.data,
        media_type=artifact.content_type,
        headers={
            "X-Artifact-Version": str(artifact.version),
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(artifact.name)}",
        },
    )


def _no_artifact(name: str, session_id: str, version: int | None = None) -> NotFoundError:
    which = f"version {version} of " if version is not None else ""
    return NotFoundError(
        f"no {which}artifact {name!r} in session {session_id!r} for this API key's user; "
        "GET .../artifacts lists the names it has."
    )
