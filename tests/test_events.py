"""Events: exact JSON round trip for every type, predicates, and the published schema."""

from __future__ import annotations

import json
from pathlib import Path

import pydantic
import pytest

from runner_core import Event, EventActions, EventError, Message, ToolCall, Usage
from runner_core.events import render_event_json_schema

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "docs" / "event.schema.json"
IDS = {"invocation_id": "inv-1", "app_name": "app", "user_id": "u", "session_id": "s"}


def one_of_each_type() -> list[Event]:
    call = ToolCall.make("call_1", "add", {"a": 1, "b": 2})
    return [
        Event(type="message.delta", author="agent", partial=True, delta="Hel", seq=1, **IDS),
        Event(type="message", author="user", message=Message.user("hi"), **IDS),
        Event(
            type="message",
            author="agent",
            message=Message.assistant(tool_calls=[call]),
            usage=Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7, model_calls=1),
            **IDS,
        ),
        Event(
            type="tool.result",
            author="agent",
            message=Message.tool("call_1", "3", name="add"),
            state_delta={"user:n": 3, "nested": {"a": [1, 2.5, None]}},
            **IDS,
        ),
        Event(type="state.update", author="agent", state_delta={"k": "v"}, **IDS),
        Event(
            type="error",
            author="agent",
            error=EventError(type="model_http_error", message="boom", code="500"),
            **IDS,
        ),
        Event(
            type="run.paused",
            author="agent",
            actions=EventActions(requested_confirmations=[call]),
            **IDS,
        ),
        Event(type="run.queued", author="agent-runner", waiting_for="inv-0", **IDS),
        Event(type="run.restarted", author="app", attempt=2, discard_after_seq=3, seq=6, **IDS),
        Event(
            type="runner.completion",
            author="app",
            status="completed",
            final_text="done",
            usage=Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3, model_calls=2),
            cost=0.0125,
            state={"k": "v"},
            **IDS,
        ),
    ]


@pytest.mark.parametrize("event", one_of_each_type(), ids=lambda e: e.type)
def test_every_event_type_round_trips_exactly_through_json(event: Event) -> None:
    # Given an event of each type, when encoded and decoded
    text = event.to_json()
    decoded = Event.from_json(text)
    # Then nothing changes, and encoding again gives the same bytes
    assert decoded == event
    assert decoded.to_json() == text
    assert json.loads(text)["type"] == event.type


def test_every_event_type_is_covered_by_the_round_trip_test() -> None:
    from typing import get_args

    from runner_core.events import EventType

    assert {e.type for e in one_of_each_type()} == set(get_args(EventType))


def test_predicates() -> None:
    events = {e.type + str(i): e for i, e in enumerate(one_of_each_type())}
    final = [k for k, e in events.items() if e.is_final_response()]
    assert final == ["error5"]
    text = Event(type="message", author="a", message=Message.assistant("ok"), **IDS)
    assert text.is_final_response()
    assert not text.model_copy(update={"partial": True}).is_final_response()
    completion = one_of_each_type()[-1]
    assert completion.is_runner_completion()
    assert not completion.is_final_response()
    assert [e.is_runner_completion() for e in one_of_each_type()].count(True) == 1


def test_unknown_type_and_unknown_fields_are_rejected() -> None:
    good = json.loads(one_of_each_type()[1].to_json())
    with pytest.raises(pydantic.ValidationError, match="type"):
        Event.model_validate({**good, "type": "bogus"})
    with pytest.raises(pydantic.ValidationError, match="surprise"):
        Event.model_validate({**good, "surprise": 1})
    with pytest.raises(pydantic.ValidationError):
        Event.from_json("{not json")
    with pytest.raises(pydantic.ValidationError, match="seq"):
        Event.model_validate({**good, "seq": -1})


@pytest.mark.parametrize(
    ("field", "value"), [("attempt", 1), ("attempt", "two"), ("discard_after_seq", -2)]
)
def test_run_restarted_fields_are_checked(field: str, value: object) -> None:
    # attempt counts from 2 (the first redelivery); discard_after_seq is a seq, or -1 for none
    marker = json.loads(
        Event(type="run.restarted", author="app", attempt=2, discard_after_seq=-1, **IDS).to_json()
    )
    with pytest.raises(pydantic.ValidationError, match=field):
        Event.model_validate({**marker, field: value})


def test_published_json_schema_is_current() -> None:
    # The file non-Python subscribers rely on must match the model; regenerate with
    # `python -m runner_core.schema docs/event.schema.json`.
    assert SCHEMA_FILE.read_text(encoding="utf-8") == render_event_json_schema()


def test_schema_describes_each_event_type() -> None:
    schema = json.loads(render_event_json_schema())
    type_enum = schema["properties"]["type"]["enum"]
    assert set(type_enum) == {e.type for e in one_of_each_type()}
    assert "seq" in schema["required"] or "seq" in schema["properties"]
