"""Events: one model per type, an exact and lean JSON round trip for each, the published
schema (a oneOf over the types), and events stored by the version before typed events."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import jsonschema
import pydantic
import pytest

from runner_core import (
    AgentTransferEvent,
    ErrorEvent,
    Event,
    EventError,
    Message,
    MessageDeltaEvent,
    MessageEvent,
    RunCompletionEvent,
    RunPausedEvent,
    RunQueuedEvent,
    RunRestartedEvent,
    StateUpdateEvent,
    ToolCall,
    ToolResultEvent,
    Usage,
)
from runner_core.events import (
    EVENT_CLASSES,
    EventNumbering,
    EventType,
    InjectedMemory,
    MemoryInjectedEvent,
    decode_event,
    encode_event,
    event_json_schema,
    render_event_json_schema,
)

HERE = Path(__file__).resolve().parent
SCHEMA_FILE = HERE.parent / "docs" / "event.schema.json"
OLD_EVENTS = HERE / "data" / "events_before_typed.jsonl"
INV = {"invocation_id": "inv-1"}
LABELS = {"app_name": "app", "user_id": "u", "session_id": "s"}


def one_of_each_type() -> list[Event]:
    call = ToolCall.make("call_1", "add", {"a": 1, "b": 2})
    return [
        MessageDeltaEvent(author="agent", delta="Hel", seq=1, **INV),
        MessageEvent(author="user", message=Message.user("hi"), **INV),
        MessageEvent(
            author="agent",
            message=Message.assistant(tool_calls=[call]),
            usage=Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7, model_calls=1),
            seq=2,
            **INV,
        ),
        ToolResultEvent(
            author="agent",
            message=Message.tool("call_1", "3", name="add"),
            state_delta={"user:n": 3, "nested": {"a": [1, 2.5, None]}},
            seq=3,
            **INV,
        ),
        StateUpdateEvent(author="agent", state_delta={"k": "v", "gone": None}, seq=4, **INV),
        ErrorEvent(
            author="agent",
            error=EventError(type="model_http_error", message="boom", code="500"),
            seq=5,
            **INV,
        ),
        RunPausedEvent(author="agent", requested_confirmations=[call], seq=6, **INV),
        RunQueuedEvent(author="agent-runner", waiting_for="inv-0", **INV),
        RunRestartedEvent(author="app", attempt=2, discard_after_seq=3, seq=7, **INV),
        AgentTransferEvent(author="triage", to_agent="billing", branch="desk", seq=8, **INV),
        MemoryInjectedEvent(
            author="triage",
            scope="agent:triage",
            query="printer offline",
            items=[
                InjectedMemory(
                    id="1872e3c1a0b4c5d6e7f80912e",
                    kind="experience",
                    score=1.5,
                    text="when a printer is offline: ask for its IP address",
                )
            ],
            seq=9,
            **INV,
        ),
        RunCompletionEvent(
            author="app",
            status="completed",
            final_text="done",
            usage=Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3, model_calls=2),
            cost=0.0125,
            request_id="req-9",
            seq=8,
            **INV,
            **LABELS,
        ),
    ]


def _nulls(value: Any, path: str = "$") -> list[str]:
    """Paths of null values that are fields of the event (not values inside state)."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "state_delta":
                continue  # state values are the user's: null is a value there
            if item is None:
                found.append(f"{path}.{key}")
            found += _nulls(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _nulls(item, f"{path}[{i}]")
    return found


@pytest.mark.parametrize("event", one_of_each_type(), ids=lambda e: e.type)
def test_every_event_type_round_trips_exactly_through_json(event: Event) -> None:
    # Given an event of each type, when encoded and decoded
    text = encode_event(event)
    decoded = decode_event(text)
    # Then it is the same type with the same fields, and encoding again gives the same bytes
    assert type(decoded) is type(event)
    assert decoded == event
    assert encode_event(decoded) == text == event.to_json()
    wire = json.loads(text)
    # No null fields on the wire, no ID (it is "{invocation_id}:{seq}"), no repeated labels
    assert _nulls(wire) == []
    assert "id" not in wire and decoded.id == f"inv-1:{event.seq}"
    assert {"type", "seq", "invocation_id", "author", "created_at"} <= set(wire)
    if event.type != "runner.completion":
        assert not set(LABELS) & set(wire)


def test_required_fields_are_on_the_wire_even_when_zero() -> None:
    first = MessageDeltaEvent(author="agent", delta="", **INV)  # seq 0, empty text
    wire = json.loads(first.to_json())
    assert wire["seq"] == 0 and wire["delta"] == ""
    done = RunCompletionEvent(author="app", status="completed", **INV, **LABELS)
    assert json.loads(done.to_json())["usage"] == {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "model_calls": 0,
    }


def test_every_event_type_is_covered_by_the_round_trip_test() -> None:
    assert {e.type for e in one_of_each_type()} == set(get_args(EventType)) == set(EVENT_CLASSES)


def test_the_reference_delta_is_at_most_200_bytes() -> None:
    # A single-agent message.delta of " hi", as a worker publishes it: a Celery task ID (a
    # UUID) as invocation ID, a 3-digit seq, the app's agent as author.
    event = MessageDeltaEvent(
        invocation_id=str(uuid.uuid4()),
        seq=123,
        author="assistant",
        created_at=datetime(2026, 11, 30, 2, 16, 0, 123456, tzinfo=UTC),
        delta=" hi",
    )
    size = len(event.to_json().encode())
    assert size <= 200, f"{size} bytes: {event.to_json()}"


def test_predicates() -> None:
    events = {e.type + str(i): e for i, e in enumerate(one_of_each_type())}
    assert [k for k, e in events.items() if e.is_final_response()] == ["error5"]
    assert [k for k, e in events.items() if e.partial] == ["message.delta0"]
    assert [k for k, e in events.items() if e.is_user_message()] == ["message1"]
    text = MessageEvent(author="a", message=Message.assistant("ok"), **INV)
    assert text.is_final_response()
    assert [e.is_runner_completion() for e in one_of_each_type()].count(True) == 1
    assert not one_of_each_type()[-1].is_final_response()


def test_unknown_type_missing_and_unknown_fields_are_rejected() -> None:
    good = json.loads(one_of_each_type()[1].to_json())
    with pytest.raises(pydantic.ValidationError, match="bogus"):
        decode_event(json.dumps({**good, "type": "bogus"}))
    with pytest.raises(pydantic.ValidationError, match="surprise"):
        decode_event(json.dumps({**good, "surprise": 1}))
    with pytest.raises(pydantic.ValidationError, match="delta"):
        decode_event(json.dumps({**good, "type": "message.delta"}))  # a delta needs its text
    with pytest.raises(ValueError):
        decode_event("{not json")
    with pytest.raises(pydantic.ValidationError, match="seq"):
        decode_event(json.dumps({**good, "seq": -1}))
    with pytest.raises(pydantic.ValidationError, match="session_id"):
        # the completion is the one event that must name the run
        wire = json.loads(one_of_each_type()[-1].to_json())
        del wire["session_id"]
        decode_event(json.dumps(wire))


@pytest.mark.parametrize(
    ("field", "value"), [("attempt", 1), ("attempt", "two"), ("discard_after_seq", -2)]
)
def test_run_restarted_fields_are_checked(field: str, value: object) -> None:
    # attempt counts from 2 (the first redelivery); discard_after_seq is a seq, or -1 for none
    marker = json.loads(
        RunRestartedEvent(author="app", attempt=2, discard_after_seq=-1, **INV).to_json()
    )
    with pytest.raises(pydantic.ValidationError, match=field):
        decode_event(json.dumps({**marker, field: value}))


def test_numbering_is_gap_free_and_can_take_back_the_last_number() -> None:
    numbering = EventNumbering.after(None)
    events = [MessageDeltaEvent(author="a", delta=str(i), **INV) for i in range(3)]
    for event in events:
        numbering.stamp(event)
    assert [e.seq for e in events] == [0, 1, 2]
    numbering.take_back()
    assert numbering.next_seq == 2
    assert EventNumbering.after(41).next_seq == 42


# --- the JSON Schema -------------------------------------------------------------------------


def test_published_json_schema_is_current() -> None:
    # The file non-Python subscribers rely on must match the models; regenerate with
    # `python -m runner_core.schema docs/event.schema.json`.
    assert SCHEMA_FILE.read_text(encoding="utf-8") == render_event_json_schema()


def test_schema_is_a_one_of_over_the_types_each_with_its_required_fields() -> None:
    schema = event_json_schema()
    branches = [schema["$defs"][ref["$ref"].split("/")[-1]] for ref in schema["oneOf"]]
    by_type = {b["properties"]["type"]["const"]: b for b in branches}
    assert set(by_type) == set(get_args(EventType))
    for kind, branch in by_type.items():
        required = set(branch["required"])
        assert {"type", "seq", "invocation_id", "author", "created_at"} <= required, kind
    assert {"delta"} <= set(by_type["message.delta"]["required"])
    assert {"message"} <= set(by_type["message"]["required"])
    assert {"error"} <= set(by_type["error"]["required"])
    assert {"requested_confirmations"} <= set(by_type["run.paused"]["required"])
    assert {"status", "usage", "app_name", "user_id", "session_id"} <= set(
        by_type["runner.completion"]["required"]
    )
    assert schema["discriminator"]["propertyName"] == "type"


@pytest.mark.parametrize("event", one_of_each_type(), ids=lambda e: e.type)
def test_every_wire_event_validates_against_the_schema(event: Event) -> None:
    validator = jsonschema.Draft202012Validator(event_json_schema())
    validator.validate(json.loads(event.to_json()))


def test_the_schema_rejects_a_field_of_another_type() -> None:
    validator = jsonschema.Draft202012Validator(event_json_schema())
    wire = json.loads(one_of_each_type()[0].to_json())
    assert not validator.is_valid({**wire, "status": "completed"})
    assert not validator.is_valid({k: v for k, v in wire.items() if k != "delta"})


# --- events stored before typed events --------------------------------------------------------


def old_events() -> list[str]:
    return OLD_EVENTS.read_text(encoding="utf-8").splitlines()


def test_events_stored_in_the_flat_shape_of_earlier_versions_still_load() -> None:
    # Given one event of each type as the version before typed events wrote them (every field
    # on every event, most null; tests/data/events_before_typed.jsonl)
    raws = old_events()
    assert all('"partial":' in raw and '"actions":' in raw for raw in raws)
    # When decoded by this version
    events = [decode_event(raw) for raw in raws]
    # Then each is its own type with what it carried
    assert [e.type for e in events] == [json.loads(raw)["type"] for raw in raws]
    newer = {"agent.transfer", "memory.injected"}
    assert {e.type for e in events} == set(get_args(EventType)) - newer
    user, calls, result, update, error, paused, legacy_id, delta = events[:8]
    queued, restarted, completion = events[8:]
    assert user.type == "message" and user.message == Message.user("hi")
    assert calls.type == "message" and calls.usage == Usage(
        prompt_tokens=3, completion_tokens=4, total_tokens=7, model_calls=1
    )
    assert calls.message.tool_calls and calls.message.tool_calls[0].function.name == "add"
    assert result.type == "tool.result"
    assert result.state_delta == {"user:n": 3, "nested": {"a": [1, 2.5, None]}}
    assert update.type == "state.update" and update.state_delta == {"k": "v"}
    assert error.type == "error" and error.error.code == "500"
    assert paused.type == "run.paused" and [c.id for c in paused.requested_confirmations] == [
        "call_1"
    ]
    assert delta.type == "message.delta" and delta.delta == " hi"
    assert queued.type == "run.queued" and queued.waiting_for == "inv-0"
    assert restarted.type == "run.restarted" and restarted.discard_after_seq == 3
    assert completion.type == "runner.completion"
    assert (completion.status, completion.final_text) == ("completed", "done")
    assert completion.cost == 0.0125
    assert (completion.session_id, completion.request_id) == ("s", "req-1")
    # IDs: the derived ones stay derived; a random one (older still) is kept, as summaries
    # refer to events by ID
    assert [e.id for e in events[:6]] == [f"inv-old:{n}" for n in range(6)]
    assert legacy_id.id == "3b9f0a7c1d2e4f5a8b6c7d8e9f0a1b2c"
    assert json.loads(legacy_id.to_json())["id"] == legacy_id.id
    assert events[0].created_at == datetime(2026, 11, 29, 12, 0, 0, 123456, tzinfo=UTC)
    # And written again, each takes the lean form
    for event, raw in zip(events, raws, strict=True):
        assert len(event.to_json()) < len(raw) / 2 or event.type == "runner.completion"
        assert decode_event(event.to_json()) == event


def test_a_damaged_old_event_is_still_an_error() -> None:
    raw = json.loads(old_events()[0])
    raw["message"] = None  # a message event without its message
    with pytest.raises(pydantic.ValidationError, match="message"):
        decode_event(json.dumps(raw))
