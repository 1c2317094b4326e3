"""Tool confirmations as seed 003 has them: a call may need a person's confirmation depending
on its arguments, the ``run.paused`` event says which arguments the person may edit, and an
edit of any other is refused. In-process, through the public API, with the FakeModel; and once
through a real celery worker."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from runner_core import (
    Event,
    FunctionTool,
    InvalidRequestError,
    LLMAgent,
    Runner,
    ToolContext,
    tool,
)
from runner_core.events import (
    EventError,
    RunCompletionEvent,
    RunPausedEvent,
    ToolResultEvent,
    decode_event,
    encode_event,
)
from runner_core.testing import FakeModel, ScriptedModelServer
from session_backends import InMemorySessionService
from tests.celery_workers import StartWorker, wait_for_completion
from tests.worker_agents import TRANSFERS_KEY

LIMIT = 100


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


@pytest.fixture
async def service() -> AsyncIterator[InMemorySessionService]:
    svc = InMemorySessionService()
    yield svc
    await svc.close()


@pytest.fixture
def transfers() -> list[dict[str, Any]]:
    """The arguments of every transfer that ran."""
    return []


def transfer_tool(transfers: list[dict[str, Any]], **options: Any) -> FunctionTool:
    """``transfer(account, amount, memo="")``: asks above LIMIT, the amount is editable."""
    options.setdefault("requires_confirmation", lambda args: args["amount"] > LIMIT)
    options.setdefault("editable_params", ["amount"])

    @tool(**options)
    def transfer(account: str, amount: int, memo: str = "") -> str:
        """Transfer money.

        Args:
            account: where to.
            amount: how much.
            memo: a note for the statement.
        """
        transfers.append({"account": account, "amount": amount, "memo": memo})
        return f"sent {amount} to {account}"

    return transfer


def make_runner(model: FakeModel, service: InMemorySessionService, *tools: FunctionTool) -> Runner:
    agent = LLMAgent("bank", model=model, instruction="Be brief.", tools=tools)
    return Runner("demo", agent, session_service=service)


async def run_all(runner: Runner, *args: Any, **kwargs: Any) -> list[Event]:
    return [event async for event in runner.run(*args, **kwargs)]


def completion_of(events: list[Event]) -> RunCompletionEvent:
    completion = events[-1]
    assert isinstance(completion, RunCompletionEvent)
    return completion


def tool_results(events: list[Event]) -> list[ToolResultEvent]:
    return [e for e in events if isinstance(e, ToolResultEvent)]


def error_of(events: list[Event]) -> EventError:
    errors = [e.error for e in events if e.type == "error"]
    assert len(errors) == 1
    return errors[0]


def paused_event(events: list[Event]) -> RunPausedEvent:
    paused = [e for e in events if isinstance(e, RunPausedEvent)]
    assert len(paused) == 1
    return paused[0]


async def pause_for_a_large_transfer(
    model: FakeModel, runner: Runner, transfers: list[dict[str, Any]]
) -> RunPausedEvent:
    model.add_tool_calls([("call_big", "transfer", {"account": "ACME", "amount": 500})])
    events = await run_all(runner, "u", "s", "pay ACME 500")
    assert completion_of(events).status == "paused"
    assert transfers == []
    return paused_event(events)


# --- declaring a tool ----------------------------------------------------------------------


def test_editable_params_default_to_every_parameter_but_the_context() -> None:
    @tool(requires_confirmation=True)
    def refund(order_id: str, amount: int, context: ToolContext) -> str:
        return "ok"

    assert refund.editable_params == ("order_id", "amount")


def test_editable_params_keep_the_declaration_order() -> None:
    transfer = transfer_tool([], editable_params=["memo", "amount"])

    assert transfer.editable_params == ("amount", "memo")


def test_an_unknown_editable_param_is_refused_at_construction() -> None:
    with pytest.raises(InvalidRequestError) as info:
        transfer_tool([], editable_params=["amount", "iban"])

    message = str(info.value)
    assert "'transfer'" in message and "'iban'" in message
    assert "its parameters: account, amount, memo" in message


def test_editable_params_given_as_one_string_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match=r"write \['amount'\]"):
        transfer_tool([], editable_params="amount")


def test_requires_confirmation_must_be_a_bool_or_a_function() -> None:
    with pytest.raises(InvalidRequestError, match="requires_confirmation must be True, False"):
        transfer_tool([], requires_confirmation="yes")


# --- whether a call needs confirmation -----------------------------------------------------


async def test_a_large_transfer_pauses_for_confirmation(
    model: FakeModel, service: InMemorySessionService, transfers: list[dict[str, Any]]
) -> None:
    # Given a transfer tool that asks above LIMIT
    runner = make_runner(model, service, transfer_tool(transfers))
    # When the model asks for a large transfer
    paused = await pause_for_a_large_transfer(model, runner, transfers)
    # Then the run waits for that call, and says the amount may be edited
    assert [c.id for c in paused.requested_confirmations] == ["call_big"]
    assert paused.editable_params == {"call_big": ["amount"]}
    assert paused.editable("call_big") == ["amount"]


async def test_a_small_transfer_runs_without_asking(
    model: FakeModel, service: InMemorySessionService, transfers: list[dict[str, Any]]
) -> None:
    # Given the same tool
    runner = make_runner(model, service, transfer_tool(transfers))
    # When the model asks for a small transfer
    model.add_tool_calls([("call_small", "transfer", {"account": "ACME", "amount": 20})])
    model.add_text("Sent.")
    events = await run_all(runner, "u", "s", "pay ACME 20")
    # Then it runs at once and the run completes
    assert not any(e.type == "run.paused" for e in events)
    assert transfers == [{"account": "ACME", "amount": 20, "memo": ""}]
    assert completion_of(events).status == "completed"


async def test_an_async_predicate_sees_validated_arguments(
    model: FakeModel, service: InMemorySessionService, transfers: list[dict[str, Any]]
) -> None:
    seen: list[dict[str, Any]] = []

    async def over_limit(args: dict[str, Any]) -> bool:
        seen.append(args)
        return bool(args["amount"] > LIMIT)

    runner = make_runner(model, service, transfer_tool(transfers, requires_confirmation=over_limit))
    model.add_tool_calls([("call_big", "transfer", {"account": "ACME", "amount": "500"})])
    events = await run_all(runner, "u", "s", "pay ACME 500")

    assert completion_of(events).status == "paused"
    assert seen == [{"account": "ACME", "amount": 500, "memo": ""}]


async def test_in_one_turn_the_small_call_runs_and_only_the_large_one_waits(
    model: FakeModel, service: InMemorySessionService, transfers: list[dict[str, Any]]
) -> None:
    runner = make_runner(model, service, transfer_tool(transfers))
    model.add_tool_calls(
        [
            ("call_small", "transfer", {"account": "A", "amount": 20}),
            ("call_big", "transfer", {"account": "B", "amount": 500}),
        ]
    )
    events = await run_all(runner, "u", "s", "pay both")

    assert [r.message.tool_call_id for r in tool_results(events)] == ["call_small"]
    assert [c.id for c in paused_event(events).requested_confirmations] == ["call_big"]
    assert paused_event(events).editable_params == {"call_big": ["amount"]}
    assert transfers == [{"account": "A", "amount": 20, "memo": ""}]


# --- the pause on the wire -----------------------------------------------------------------


async def test_the_pause_carries_the_editable_params_on_the_wire_and_in_the_session(
    model: FakeModel, service: InMemorySessionService, transfers: list[dict[str, Any]]
) -> None:
    runner = make_runner(model, service, transfer_tool(transfers))
    paused = await pause_for_a_large_transfer(model, runner, transfers)

    wire = json.loads(encode_event(paused))
    assert wire["editable_params"] == {"call_big": ["amount"]}
    assert [c["id"] for c in wire["requested_confirmations"]] == ["call_big"]
    assert decode_event(encode_event(paused)) == paused
    session = await service.get_session("demo", "u", "s")
    assert session is not None
    stored = [e for e in session.events if e.type == "run.paused"]
    assert stored == [paused]


async def test_a_pause_with_nothing_editable_leaves_the_field_out(
    model: FakeModel, service: InMemorySessionService, transfers: list[dict[str, Any]]
) -> None:
    runner = make_runner(model, service, transfer_tool(transfers, editable_params=[]))
    paused = await pause_for_a_large_transfer(model, runner, transfers)

    assert "editable_params" not in json.loads(encode_event(paused))
    assert paused.editable("call_big") == []


# --- answering the pause -------------------------------------------------------------------


async def test_an_approved_transfer_runs_as_the_model_asked(
    model: FakeModel, service: InMemorySessionService, transfers: list[dict[str, Any]]
) -> None:
    runner = make_runner(model, service, transfer_tool(transfers))
    await pause_for_a_large_transfer(model, runner, transfers)
    model.add_text("Sent 500.")

    events = await run_all(runner, "u", "s", None, tool_confirmations={"call_big": True})

    assert transfers == [{"account": "ACME", "amount": 500, "memo": ""}]
    assert completion_of(events).final_text == "Sent 500."


async def test_a_refused_transfer_never_runs_and_the_model_is_told(
    model: FakeModel, service: InMemorySessionService, transfers: list[dict[str, Any]]
) -> None:
    runner = make_runner(model, service, transfer_tool(transfers))
    await pause_for_a_large_transfer(model, runner, transfers)
    model.add_text("Not sent.")

    events = await run_all(runner, "u", "s", None, tool_confirmations={"call_big": False})

    [result] = tool_results(events)
    assert "declined" in (result.message.content or "")
    assert transfers == []
    assert completion_of(events).status == "completed"


async def test_an_edit_of_the_editable_amount_runs_with_the_edited_value(
    model: FakeModel, service: InMemorySessionService, transfers: list[dict[str, Any]]
) -> None:
    runner = make_runner(model, service, transfer_tool(transfers))
    await pause_for_a_large_transfer(model, runner, transfers)
    model.add_text("Sent 300.")

    edited = {"arguments": {"account": "ACME", "amount": 300}}
    events = await run_all(runner, "u", "s", None, tool_confirmations={"call_big": edited})

    assert transfers == [{"account": "ACME", "amount": 300, "memo": ""}]
    [result] = tool_results(events)
    assert result.message.content == "sent 300 to ACME"
    assert completion_of(events).status == "completed"


async def test_leaving_out_a_default_or_restating_it_is_not_an_edit(
    model: FakeModel, service: InMemorySessionService, transfers: list[dict[str, Any]]
) -> None:
    runner = make_runner(model, service, transfer_tool(transfers))
    await pause_for_a_large_transfer(model, runner, transfers)
    model.add_text("Sent.")

    edited = {"arguments": {"account": "ACME", "amount": 500, "memo": ""}}
    events = await run_all(runner, "u", "s", None, tool_confirmations={"call_big": edited})

    assert completion_of(events).status == "completed"
    assert transfers == [{"account": "ACME", "amount": 500, "memo": ""}]


async def test_an_edit_of_a_parameter_that_is_not_editable_is_refused_before_anything_runs(
    model: FakeModel, service: InMemorySessionService, transfers: list[dict[str, Any]]
) -> None:
    # Given a paused large transfer whose amount only is editable
    runner = make_runner(model, service, transfer_tool(transfers))
    await pause_for_a_large_transfer(model, runner, transfers)
    requests_before = len(model.requests)

    # When the confirmation changes the account
    edited = {"arguments": {"account": "MALLORY", "amount": 500}}
    events = await run_all(runner, "u", "s", None, tool_confirmations={"call_big": edited})

    # Then the run fails with invalid_request naming the call, the parameter and the editable ones
    assert [e.type for e in events] == ["error", "runner.completion"]
    error = error_of(events)
    assert error.type == "invalid_request"
    assert "'call_big'" in error.message and "'account'" in error.message
    assert "editable parameters: amount" in error.message
    assert completion_of(events).status == "failed"
    # And nothing ran: no tool, no model call
    assert transfers == [] and len(model.requests) == requests_before

    # And the call still waits: a valid answer completes it
    model.add_text("Sent 400.")
    edited = {"arguments": {"account": "ACME", "amount": 400}}
    events = await run_all(runner, "u", "s", None, tool_confirmations={"call_big": edited})
    assert completion_of(events).status == "completed"
    assert transfers == [{"account": "ACME", "amount": 400, "memo": ""}]


async def test_no_edit_at_all_is_allowed_when_nothing_is_editable(
    model: FakeModel, service: InMemorySessionService, transfers: list[dict[str, Any]]
) -> None:
    runner = make_runner(model, service, transfer_tool(transfers, editable_params=[]))
    await pause_for_a_large_transfer(model, runner, transfers)

    edited = {"arguments": {"account": "ACME", "amount": 1}}
    events = await run_all(runner, "u", "s", None, tool_confirmations={"call_big": edited})

    assert [e.type for e in events] == ["error", "runner.completion"]
    assert "editable parameters: none" in error_of(events).message
    assert transfers == []


async def test_edited_arguments_are_still_validated_against_the_schema(
    model: FakeModel, service: InMemorySessionService, transfers: list[dict[str, Any]]
) -> None:
    runner = make_runner(model, service, transfer_tool(transfers))
    await pause_for_a_large_transfer(model, runner, transfers)
    model.add_text("That amount is not a number.")

    edited = {"arguments": {"account": "ACME", "amount": "lots"}}
    events = await run_all(runner, "u", "s", None, tool_confirmations={"call_big": edited})

    [result] = tool_results(events)
    assert result.error is not None and result.error.type == "tool_invalid_arguments"
    assert transfers == []


# --- a predicate that fails ----------------------------------------------------------------


async def test_a_raising_predicate_fails_the_run_naming_the_tool(
    model: FakeModel, service: InMemorySessionService, transfers: list[dict[str, Any]]
) -> None:
    def broken(args: dict[str, Any]) -> bool:
        raise KeyError("limit")

    runner = make_runner(model, service, transfer_tool(transfers, requires_confirmation=broken))
    model.add_tool_calls([("call_big", "transfer", {"account": "ACME", "amount": 500})])
    events = await run_all(runner, "u", "s", "pay ACME 500")

    error = error_of(events)
    assert error.type == "callback_error"
    assert "tool 'transfer' requires_confirmation raised KeyError" in error.message
    assert completion_of(events).status == "failed"
    assert transfers == []


async def test_a_predicate_that_answers_no_bool_fails_the_run(
    model: FakeModel, service: InMemorySessionService, transfers: list[dict[str, Any]]
) -> None:
    runner = make_runner(
        model, service, transfer_tool(transfers, requires_confirmation=lambda args: "maybe")
    )
    model.add_tool_calls([("call_big", "transfer", {"account": "ACME", "amount": 500})])
    events = await run_all(runner, "u", "s", "pay ACME 500")

    error = error_of(events)
    assert error.type == "callback_error" and "returned str" in error.message
    assert completion_of(events).status == "failed"
    assert transfers == []


# --- through a worker ----------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.celery
def test_a_worker_pauses_a_large_transfer_and_runs_it_with_the_edited_amount(
    producer: Any, start_worker: StartWorker, redis_url: str
) -> None:
    from workers.tasks import submit_run

    with ScriptedModelServer() as model_server:
        # Given a worker whose payments agent asks before transfers above 100
        start_worker(
            OPENAI_BASE_URL=model_server.url,
            AGENT_RUNNER_AGENTS="payments=tests.worker_agents:build_payments",
        )
        model_server.add_tool_calls([("call_big", "transfer", {"account": "ACME", "amount": 500})])

        # When a producer submits a run whose model asks to transfer 500
        first = submit_run.delay("payments", "alice", "s-pay", "pay ACME 500")

        # Then the run pauses, saying the call waits and its amount may be edited
        events = wait_for_completion(redis_url, first.id)
        assert events[-1]["status"] == "paused"
        paused = events[-2]
        assert paused["type"] == "run.paused"
        assert [c["id"] for c in paused["requested_confirmations"]] == ["call_big"]
        assert paused["editable_params"] == {"call_big": ["amount"]}

        # When the person confirms it with the amount changed to 300
        model_server.add_text("Sent 300.")
        edited = {"call_big": {"arguments": {"account": "ACME", "amount": 300}}}
        second = submit_run.delay("payments", "alice", "s-pay", None, tool_confirmations=edited)

        # Then the run completes, and the tool sent 300
        events = wait_for_completion(redis_url, second.id)
    assert events[-1]["status"] == "completed"
    assert events[-1]["final_text"] == "Sent 300."
    result = next(e for e in events if e["type"] == "tool.result")
    assert result["message"]["content"] == "sent 300 to ACME"
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.hgetall(TRANSFERS_KEY) == {b"ACME": b"300"}
    finally:
        client.close()
