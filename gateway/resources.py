"""What runs leave behind, over HTTP: a run's execution trace and a session's artifacts.

Each route acts for the key's user only (an operator key names the user with ``?user_id=``),
through the producers' public helpers: :func:`workers.client.aget_trace` (docs/traces.md) and
:mod:`workers.artifacts` (docs/artifacts.md). Anything another user owns is answered 404, as
an unknown ID is.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from workers import artifacts, client

from .deps import Gateway, Key, gateway_of, user_of
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
