"""The gateway's OpenAPI description (served at ``/openapi.json``, browsable at ``/docs``).

The bodies of ``POST /v1/runs`` and ``POST /v1/runs/{id}/confirmations`` are read by hand (so
that they are validated by :class:`~workers.requests.RunRequest`, the one owner of the run's
fields and errors); their schemas are built from that model here.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from workers.requests import RunRequest

__all__ = ["CONFIRMATION_OPTIONS", "CONFIRM_BODY", "SUBMIT_BODY", "openapi"]

#: Fields a confirmation may carry besides ``tool_confirmations`` (the run's identity is the
#: paused run's).
CONFIRMATION_OPTIONS = frozenset({"request_id", "run_timeout_s", "run_config", "webhook_url"})


def _request_schemas() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The submit and confirmation body schemas, built from :class:`RunRequest` (one owner of
    the fields), and the component schemas they refer to."""
    schema = RunRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.pop("$defs", {})
    submit = json.loads(json.dumps(schema))
    submit["title"] = "SubmitRun"
    submit["required"] = [name for name in submit.get("required", []) if name != "user_id"]
    submit["properties"]["user_id"]["description"] = (
        "only with an operator key; a user key's runs are its user's"
    )
    webhook = {
        "type": "string",
        "format": "uri",
        "description": "called (POST, signed) once the run completes; docs/gateway.md",
    }
    submit["properties"]["webhook_url"] = webhook
    props = schema["properties"]
    confirm = {
        "title": "Confirmations",
        "type": "object",
        "additionalProperties": False,
        "required": ["tool_confirmations"],
        "properties": {
            "tool_confirmations": props["tool_confirmations"],
            **{name: props[name] for name in sorted(CONFIRMATION_OPTIONS) if name in props},
            "webhook_url": webhook,
        },
    }
    return submit, confirm, components


def _body_extra(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    }


_SUBMIT_SCHEMA, _CONFIRM_SCHEMA, _COMPONENTS = _request_schemas()
SUBMIT_BODY = _body_extra(_SUBMIT_SCHEMA)
CONFIRM_BODY = _body_extra(_CONFIRM_SCHEMA)


def openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schema.setdefault("components", {}).setdefault("schemas", {}).update(_COMPONENTS)
        schema["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
        schema["security"] = [{"bearer": []}, {"apiKey": []}]
        app.openapi_schema = schema
    return app.openapi_schema
