"""Events built from one dict of fields, whatever their type, for tests that make many.

``make_event(type=..., **fields)`` validates like a decoded event. Test call sites keep one
dict of IDs for a run (invocation, app, user, session); only ``runner.completion`` names the
run, so the labels are dropped from the other types here, and ``partial`` (which the type
says) is dropped too.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from runner_core.events import Event

_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
_LABELS = ("app_name", "user_id", "session_id", "request_id")


def make_event(**fields: Any) -> Event:
    fields.pop("partial", None)
    if fields.get("type") != "runner.completion":
        for label in _LABELS:
            fields.pop(label, None)
    return _ADAPTER.validate_python(fields)
