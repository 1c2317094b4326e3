"""Transfers between agents (issue 15), in process, through the public API.

A tree of agents: ``triage`` (the root) with the sub-agents ``billing`` and ``support``, each
LLM agent on its own FakeModel, so each test says which agent the model call went to. Every
run is awaited under a deadline, so a run that hangs fails its test instead of the suite.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from runner_core import (
    AgentTransferEvent,
    BaseAgent,
    Event,
    InMemorySessionService,
    InvalidRequestError,
    InvocationContext,
    LLMAgent,
    Message,
    MessageEvent,
    ModelPrice,
    Runner,
    Usage,
    tool,
    transfer_targets,
)
from runner_core.testing import FakeModel

RUN_DEADLINE_S = 10.0


@pytest.fixture
async def service() -> AsyncIterator[InMemorySessionService]:
    svc = InMemorySessionService()
    yield svc
    await svc.close()


class Models:
    """One FakeModel per agent of the tree."""

    def __init__(self) -> None:
        self.triage = FakeModel("triage-model")
        self.billing = FakeModel("billing-model")
        self.support = FakeModel("support-model")


@pytest.fixture
def models() -> Models:
    return Models()


@tool(requires_confirmation=True)
def refund(order_id: str) -> str:
    """Refund an order.

    Args:
        order_id: the order.
    """
    return f"refunded {order_id}"


@tool
def lookup(order_id: str) -> str:
    """Look an order up.

    Args:
        order_id: the order.
    """
    return f"order {order_id}: paid"


def make_tree(models: Models, **billing_options: Any) -> LLMAgent:
    billing = LLMAgent(
        "billing",
        model=models.billing,
        description="Invoices and refunds.",
        tools=[refund],
        **billing_options,
    )
    support = LLMAgent("support", model=models.support, description="Technical problems.")
    return LLMAgent(
        "triage",
        model=models.triage,
        instruction="Route the user.",
        description="Routes requests.",
        tools=[lookup],
        sub_agents=[billing, support],
    )


def make_runner(
    models: Models, service: InMemorySessionService, **options: Any
) -> Runner:
    return Runner("demo", make_tree(models), session_service=service, **options)


async def run_all(runner: Runner, message: str | None = "hi", **options: Any) -> list[Event]:
    async def collect() -> list[Event]:
        return [event async for event in runner.run("alice", "s1", message, **options)]

    events = await asyncio.wait_for(collect(), RUN_DEADLINE_S)
    assert events[-1].is_runner_completion()
    return events


def transfer_call(call_id: str, to_agent: str) -> tuple[str, str, dict[str, str]]:
    return (call_id, "transfer_to_agent", {"agent_name": to_agent})


def assert_gap_free(events: list[Event]) -> None:
    assert [e.seq for e in events] == list(range(events[0].seq, events[0].seq + len(events)))


def completed(events: list[Event]) -> Any:
    done = events[-1]
    assert done.type == "runner.completion"
    return done


def kinds(events: list[Event]) -> list[tuple[str, str]]:
    """(type, author) of every complete event, the completion left out."""
    return [(e.type, e.author) for e in events if not e.partial and not e.is_runner_completion()]


def tool_names(request: dict[str, Any]) -> list[str]:
    return [entry["function"]["name"] for entry in request.get("tools", [])]


def transfer_tool_of(request: dict[str, Any]) -> dict[str, Any]:
    entries = [e for e in request["tools"] if e["function"]["name"] == "transfer_to_agent"]
    assert len(entries) == 1
    function: dict[str, Any] = entries[0]["function"]
    return function


async def stored(service: InMemorySessionService) -> list[Event]:
    session = await service.get_session("demo", "alice", "s1")
    assert session is not None
    return list(session.events)


# --- the model hands over -------------------------------------------------------------------


async def test_the_model_transfers_and_the_target_answers_in_the_same_run(
    models: Models, service: InMemorySessionService
) -> None:
    # Given triage's model hands the conversation to billing, which answers
    models.triage.add_tool_calls([transfer_call("t1", "billing")])
    models.billing.add_text("Your invoice is paid.")
    # When the user asks
    events = await run_all(make_runner(models, service), "Is my invoice paid?")
    # Then billing answers in the same invocation, each event written by its agent
    assert kinds(events) == [
        ("message", "user"),
        ("message", "triage"),
        ("tool.result", "triage"),
        ("agent.transfer", "triage"),
        ("message", "billing"),
    ]
    transfer = next(e for e in events if isinstance(e, AgentTransferEvent))
    assert transfer.to_agent == "billing"
    assert_gap_free(events)
    assert len({e.invocation_id for e in events}) == 1
    done = completed(events)
    assert done.status == "completed" and done.final_text == "Your invoice is paid."
    # And the transfer is stored with the rest
    assert [e.type for e in await stored(service)] == [
        "message", "message", "tool.result", "agent.transfer", "message",
    ]


async def test_the_transfer_tool_lists_the_reachable_agents_with_their_descriptions(
    models: Models, service: InMemorySessionService
) -> None:
    models.triage.add_text("Hello.")
    await run_all(make_runner(models, service))
    function = transfer_tool_of(models.triage.requests[0])
    assert function["parameters"]["properties"]["agent_name"]["enum"] == ["billing", "support"]
    assert "- billing: Invoices and refunds." in function["description"]
    assert "- support: Technical problems." in function["description"]
    assert function["parameters"]["required"] == ["agent_name"]


async def test_the_sessions_next_run_starts_with_the_agent_transferred_to(
    models: Models, service: InMemorySessionService
) -> None:
    # Given a run that ended with billing
    runner = make_runner(models, service)
    models.triage.add_tool_calls([transfer_call("t1", "billing")])
    models.billing.add_text("Which invoice?")
    await run_all(runner, "A question about my invoice.")
    # When the user answers in the next run
    models.billing.add_text("Invoice 7 is paid.")
    events = await run_all(runner, "Invoice 7.")
    # Then billing takes it, triage's model is not asked again
    assert kinds(events) == [("message", "user"), ("message", "billing")]
    assert completed(events).final_text == "Invoice 7 is paid."
    assert len(models.triage.requests) == 1
    # And billing sees its own earlier answer as its own turn
    messages = models.billing.requests[1]["messages"]
    assert {"role": "assistant", "content": "Which invoice?"} in messages


async def test_a_sub_agent_hands_the_user_back_to_its_parent(
    models: Models, service: InMemorySessionService
) -> None:
    # Given billing can reach its parent
    models.triage.add_tool_calls([transfer_call("t1", "billing")])
    models.billing.add_tool_calls([transfer_call("t2", "triage")])
    models.triage.add_text("Anything else?")
    # When it hands back
    events = await run_all(make_runner(models, service))
    # Then triage answers, in the same run
    transfers = [(e.author, e.to_agent) for e in events if isinstance(e, AgentTransferEvent)]
    assert transfers == [("triage", "billing"), ("billing", "triage")]
    assert completed(events).final_text == "Anything else?"
    assert "triage" in transfer_tool_of(models.billing.requests[0])["parameters"][
        "properties"]["agent_name"]["enum"]


async def test_a_transfer_to_a_peer(models: Models, service: InMemorySessionService) -> None:
    models.triage.add_tool_calls([transfer_call("t1", "billing")])
    models.billing.add_tool_calls([transfer_call("t2", "support")])
    models.support.add_text("Restart the router.")
    events = await run_all(make_runner(models, service))
    assert completed(events).final_text == "Restart the router."
    assert events[-2].author == "support"


@pytest.mark.parametrize(
    ("to_agent", "reason"),
    [("nobody", "there is no agent named 'nobody'"), ("triage", "is the current agent")],
)
async def test_a_transfer_the_model_cannot_make_is_a_tool_error_it_recovers_from(
    models: Models, service: InMemorySessionService, to_agent: str, reason: str
) -> None:
    # Given triage's model names an agent it cannot transfer to, then tries again
    models.triage.add_tool_calls([transfer_call("t1", to_agent)])
    models.triage.add_tool_calls([transfer_call("t2", "billing")])
    models.billing.add_text("Billing here.")
    # When it runs
    events = await run_all(make_runner(models, service))
    # Then the first call gets an error result the model reads, and the run goes on
    results = [e for e in events if e.type == "tool.result"]
    assert results[0].error is not None and reason in results[0].error.message
    assert "billing, support" in results[0].error.message
    second = models.triage.requests[1]["messages"][-1]
    assert second["role"] == "tool" and second["content"].startswith("Error: ")
    assert reason in second["content"]
    assert completed(events).status == "completed"
    assert completed(events).final_text == "Billing here."


async def test_a_sub_agent_of_a_sub_agent_is_out_of_reach(service: InMemorySessionService) -> None:
    # Given refunds under billing under triage: triage may reach billing, not refunds
    triage_model, billing_model = FakeModel(), FakeModel()
    refunds = LLMAgent("refunds", model=FakeModel())
    billing = LLMAgent("billing", model=billing_model, sub_agents=[refunds])
    runner = Runner(
        "demo", LLMAgent("triage", model=triage_model, sub_agents=[billing]),
        session_service=service,
    )
    triage_model.add_tool_calls([transfer_call("t1", "refunds")])
    triage_model.add_text("I'll handle it.")
    events = await run_all(runner)
    result = next(e for e in events if e.type == "tool.result")
    assert result.error is not None
    assert "'triage' may not transfer to 'refunds'" in result.error.message
    assert not [e for e in events if e.type == "agent.transfer"]
    assert completed(events).final_text == "I'll handle it."


async def test_one_transfer_per_turn(models: Models, service: InMemorySessionService) -> None:
    # Given the model asks for two different transfers in one turn
    models.triage.add_tool_calls([transfer_call("t1", "billing"), transfer_call("t2", "support")])
    models.billing.add_text("Billing here.")
    events = await run_all(make_runner(models, service))
    # Then the first is made, the second is an error result
    results = [e for e in events if e.type == "tool.result"]
    assert results[0].error is None
    assert results[1].error is not None
    assert "only the first transfer_to_agent call of a turn" in results[1].error.message
    assert [e.to_agent for e in events if isinstance(e, AgentTransferEvent)] == ["billing"]
    assert completed(events).final_text == "Billing here."


async def test_no_transfer_in_a_turn_that_pauses_for_a_confirmation(
    models: Models, service: InMemorySessionService
) -> None:
    # Given billing's model asks for a refund (needs confirmation) and a transfer at once
    models.triage.add_tool_calls([transfer_call("t1", "billing")])
    models.billing.add_tool_calls(
        [("r1", "refund", {"order_id": "7"}), transfer_call("t2", "support")]
    )
    events = await run_all(make_runner(models, service))
    # Then the run pauses with billing, and the transfer is refused for the model to redo
    paused = events[-2]
    assert paused.type == "run.paused" and paused.author == "billing"
    result = next(e for e in events if e.type == "tool.result" and e.message.tool_call_id == "t2")
    assert result.error is not None and "wait for a person's confirmation" in result.message.text
    assert [e.to_agent for e in events if isinstance(e, AgentTransferEvent)] == ["billing"]


# --- reachability switches -------------------------------------------------------------------


async def test_switched_off_targets_are_not_offered(service: InMemorySessionService) -> None:
    # Given billing may reach neither its parent nor its peers (and has no sub-agents)
    models = Models()
    tree = make_tree(models, allow_transfer_to_parent=False, allow_transfer_to_peers=False)
    runner = Runner("demo", tree, session_service=service)
    models.triage.add_tool_calls([transfer_call("t1", "billing")])
    models.billing.add_tool_calls([transfer_call("t2", "triage")])
    models.billing.add_text("Billing only.")
    events = await run_all(runner)
    # Then its model is not offered the transfer tool, and a call of it is a tool error
    assert tool_names(models.billing.requests[0]) == ["refund"]
    result = [e for e in events if e.type == "tool.result"][-1]
    assert result.error is not None and result.error.type == "tool_not_found"
    assert completed(events).final_text == "Billing only."


def test_each_switch_removes_its_part_of_the_reach() -> None:
    models = Models()
    child = LLMAgent("child", model=FakeModel())
    tree = make_tree(models)
    billing = tree.find_agent("billing")
    assert billing is not None
    billing.add_sub_agent(child)
    names = lambda agent: [a.name for a in transfer_targets(agent)]  # noqa: E731
    assert names(billing) == ["child", "triage", "support"]
    billing.allow_transfer_to_sub_agents = False
    assert names(billing) == ["triage", "support"]
    billing.allow_transfer_to_peers = False
    assert names(billing) == ["triage"]
    billing.allow_transfer_to_parent = False
    assert names(billing) == []
    assert names(tree) == ["billing", "support"]
    assert LLMAgent("x", model=FakeModel(), allow_transfer_to_sub_agents=False).sub_agents == []


def test_under_a_custom_parent_only_sub_agents_are_reachable() -> None:
    # A workflow or custom agent runs its sub-agents itself: they cannot take the
    # conversation to it or to each other.
    first = LLMAgent("first", model=FakeModel())
    second = LLMAgent("second", model=FakeModel())
    Pipeline("pipeline", sub_agents=[first, second])
    assert transfer_targets(first) == []


# --- transfers requested in code -------------------------------------------------------------


class Router(BaseAgent):
    """Hands every conversation to the agent named ``to``, in code."""

    def __init__(self, name: str, to: str, **options: Any) -> None:
        super().__init__(name, **options)
        self.to = to

    async def run(self, ctx: InvocationContext) -> AsyncIterator[Event]:
        yield ctx.transfer(self.name, self.to)


class Pipeline(BaseAgent):
    """Runs its sub-agents in turn (a stand-in for a workflow agent)."""

    async def run(self, ctx: InvocationContext) -> AsyncIterator[Event]:
        for sub in self.sub_agents:
            async for event in sub.run(ctx):
                yield event


async def test_a_custom_agent_transfers_in_code(service: InMemorySessionService) -> None:
    # Given a router agent that hands over in code
    model = FakeModel()
    model.add_text("Billing here.")
    root = Router("router", "billing", sub_agents=[LLMAgent("billing", model=model)])
    events = await run_all(Runner("demo", root, session_service=service))
    # Then the Runner goes on with the target
    assert kinds(events) == [
        ("message", "user"), ("agent.transfer", "router"), ("message", "billing"),
    ]
    assert completed(events).final_text == "Billing here."
    assert_gap_free(events)


async def test_a_code_transfer_to_an_unreachable_agent_fails_the_run(
    service: InMemorySessionService,
) -> None:
    # Given a router that names an agent that does not exist
    root = Router("router", "nobody", sub_agents=[LLMAgent("billing", model=FakeModel())])
    events = await run_all(Runner("demo", root, session_service=service))
    # Then the run ends failed with an error event; the transfer is not stored
    error = events[-2]
    assert error.type == "error" and error.error.type == "invalid_transfer"
    assert "there is no agent named 'nobody'" in error.error.message
    assert completed(events).status == "failed"
    assert "agent.transfer" not in [e.type for e in await stored(service)]


async def test_a_run_past_max_transfers_ends_failed(
    models: Models, service: InMemorySessionService
) -> None:
    # Given two agents that keep handing the user to each other
    for n in range(3):
        models.triage.add_tool_calls([transfer_call(f"a{n}", "billing")])
        models.billing.add_tool_calls([transfer_call(f"b{n}", "triage")])
    # When the run may make 3 transfers
    events = await run_all(make_runner(models, service, max_transfers=3))
    # Then the fourth ends it with max_transfers_exceeded
    transfers = [e for e in events if isinstance(e, AgentTransferEvent)]
    assert len(transfers) == 3
    error = events[-2]
    assert error.type == "error" and error.error.type == "max_transfers_exceeded"
    assert "Runner(max_transfers=)" in error.error.message
    assert completed(events).status == "failed"
    assert_gap_free(events)
    # And the session's next run starts with the agent the last stored transfer handed to
    assert [e.to_agent for e in await stored(service) if e.type == "agent.transfer"][-1] == (
        "billing"
    )


# --- history ----------------------------------------------------------------------------------


async def test_other_agents_turns_are_context_attributed_to_them(
    models: Models, service: InMemorySessionService
) -> None:
    # Given triage says something, looks an order up, then hands over to billing
    models.triage.add_tool_calls([("l1", "lookup", {"order_id": "7"})])
    models.triage.add_tool_calls([transfer_call("t1", "billing")])
    models.billing.add_tool_calls([transfer_call("t2", "triage")])
    models.triage.add_text("Back with triage.")
    await run_all(make_runner(models, service), "Order 7?")
    # Then billing sees triage's turns as user-role context naming triage, none as its own
    seen = models.billing.requests[0]["messages"]
    assert [m["role"] for m in seen] == ["user"] * 5
    assert seen[0]["content"] == "Order 7?"
    assert seen[1]["content"] == (
        'For context:\n[triage] called tool `lookup` with parameters: {"order_id": "7"}'
    )
    assert seen[2]["content"] == (
        "For context:\n[triage] tool `lookup` returned result: order 7: paid"
    )
    assert seen[3]["content"].startswith("For context:\n[triage] called tool `transfer_to_agent`")
    # And triage, back again, sees its own calls as its turns and billing's as context
    back = models.triage.requests[2]["messages"]
    roles = [m["role"] for m in back]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "tool", "user", "user"]
    assert back[2]["tool_calls"][0]["function"]["name"] == "lookup"
    assert back[-2]["content"].startswith(
        "For context:\n[billing] called tool `transfer_to_agent` with parameters:"
    )
    assert back[-1]["content"] == (
        "For context:\n[billing] tool `transfer_to_agent` returned result: "
        "Transferred to triage."
    )


async def test_another_agents_text_is_said_by_it(
    models: Models, service: InMemorySessionService
) -> None:
    # Given billing answered in an earlier run, then hands the user back to triage
    runner = make_runner(models, service)
    models.triage.add_tool_calls([transfer_call("t1", "billing")])
    models.billing.add_text("Invoice 7 is paid.")
    await run_all(runner)
    models.billing.add_tool_calls([transfer_call("t2", "triage")])
    models.triage.add_text("Anything else?")
    await run_all(runner, "Thanks, now something else.")
    seen = models.triage.requests[-1]["messages"]
    assert {"role": "user", "content": "For context:\n[billing] said: Invoice 7 is paid."} in seen
    assert not [m for m in seen if m["role"] == "assistant" and m.get("content")]


# --- redelivery, pause and resume -----------------------------------------------------------


async def test_a_redelivered_run_continues_with_the_agent_that_was_active(
    models: Models, service: InMemorySessionService
) -> None:
    # Given a first attempt that transferred to billing, then died during billing's model call
    runner = make_runner(models, service)
    models.triage.add_tool_calls([transfer_call("t1", "billing")])
    models.billing.add_hang()
    first = runner.run("alice", "s1", "hi", invocation_id="inv-1")
    seen: list[Event] = []
    async for event in first:
        seen.append(event)
        if event.type == "agent.transfer":
            break
    await first.aclose()
    # When the invocation is delivered again
    models.billing.reset()
    models.billing.add_text("Billing here.")
    events = await run_all(runner, "hi", invocation_id="inv-1", first_seq=seen[-1].seq + 1)
    # Then billing answers; triage's model is not called again
    assert len(models.triage.requests) == 1
    assert kinds(events) == [("message", "billing")]
    assert events[0].seq == seen[-1].seq + 1
    assert_gap_free(events)
    assert completed(events).final_text == "Billing here."


async def test_a_paused_sub_agent_resumes_with_the_confirmation_in_a_second_run(
    models: Models, service: InMemorySessionService
) -> None:
    # Given billing paused for a refund confirmation after a transfer
    runner = make_runner(models, service)
    models.triage.add_tool_calls([transfer_call("t1", "billing")])
    models.billing.add_tool_calls([("r1", "refund", {"order_id": "7"})])
    first = await run_all(runner, "Refund order 7.")
    assert completed(first).status == "paused"
    assert first[-2].type == "run.paused" and first[-2].author == "billing"
    # When the person approves it in a second run
    models.billing.add_text("Refunded.")
    events = await run_all(runner, None, tool_confirmations={"r1": True})
    # Then billing runs the refund and answers; triage is not involved
    assert kinds(events) == [("tool.result", "billing"), ("message", "billing")]
    assert events[0].message.text == "refunded 7"
    assert completed(events).final_text == "Refunded."
    assert len(models.triage.requests) == 1


async def test_a_transfer_to_an_agent_the_tree_lost_starts_at_the_root(
    models: Models, service: InMemorySessionService, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a session that was handed to billing
    models.triage.add_tool_calls([transfer_call("t1", "billing")])
    models.billing.add_text("Billing here.")
    await run_all(make_runner(models, service))
    # When the app's tree no longer has billing
    model = FakeModel()
    model.add_text("Triage here.")
    runner = Runner("demo", LLMAgent("triage", model=model), session_service=service)
    with caplog.at_level(logging.WARNING, logger="runner_core.transfer"):
        events = await run_all(runner, "hello again")
    # Then the root answers, and the log says why
    assert completed(events).final_text == "Triage here."
    assert "no longer has" in caplog.text and "'billing'" in caplog.text


# --- usage and cost --------------------------------------------------------------------------


async def test_usage_and_cost_cover_every_agents_model_calls(
    service: InMemorySessionService,
) -> None:
    # Given two agents on models with different prices
    cheap, dear = ModelPrice(prompt_per_million=1, completion_per_million=2), ModelPrice(
        prompt_per_million=100, completion_per_million=200
    )
    triage_model, billing_model = FakeModel(price=cheap), FakeModel(price=dear)
    billing = LLMAgent("billing", model=billing_model)
    runner = Runner(
        "demo", LLMAgent("triage", model=triage_model, sub_agents=[billing]),
        session_service=service,
    )
    triage_model.add_tool_calls([transfer_call("t1", "billing")])
    billing_model.add_text("A fairly long answer from the expensive model.")
    events = await run_all(runner)
    # Then the totals cover both, each call at its own model's price
    messages = [e for e in events if isinstance(e, MessageEvent) and e.usage is not None]
    usage = sum((e.usage for e in messages if e.usage), Usage())
    done = completed(events)
    assert done.usage == usage and done.usage.model_calls == 2
    by_author = {e.author: e.usage for e in messages}
    expected = cheap.cost(by_author["triage"]) + dear.cost(by_author["billing"])
    assert done.cost == pytest.approx(expected)
    assert done.cost != pytest.approx(cheap.cost(usage))


async def test_cost_is_unknown_when_one_agent_has_no_price(
    service: InMemorySessionService,
) -> None:
    priced = FakeModel(price=ModelPrice(prompt_per_million=1, completion_per_million=1))
    unpriced = FakeModel()
    runner = Runner(
        "demo",
        LLMAgent("triage", model=priced, sub_agents=[LLMAgent("billing", model=unpriced)]),
        session_service=service,
    )
    priced.add_tool_calls([transfer_call("t1", "billing")])
    unpriced.add_text("ok")
    done = completed(await run_all(runner))
    assert done.usage.model_calls == 2 and done.cost is None


# --- construction ----------------------------------------------------------------------------


def test_a_tool_may_not_take_the_transfer_tools_name() -> None:
    @tool
    def transfer_to_agent(agent_name: str) -> str:
        """Mine."""
        return agent_name

    with pytest.raises(InvalidRequestError, match="built-in transfer tool"):
        LLMAgent("a", model=FakeModel(), tools=[transfer_to_agent])


def test_a_switch_must_be_a_bool() -> None:
    with pytest.raises(InvalidRequestError, match="allow_transfer_to_parent must be True or False"):
        LLMAgent("a", model=FakeModel(), allow_transfer_to_parent="no")  # type: ignore[arg-type]


def test_the_runner_takes_the_root_of_a_tree() -> None:
    tree = make_tree(Models())
    billing = tree.find_agent("billing")
    assert billing is not None
    with pytest.raises(InvalidRequestError, match=r"of 'triage'; give the Runner the root"):
        Runner("demo", billing)


def test_the_runner_refuses_a_tree_edited_by_hand() -> None:
    tree = make_tree(Models())
    tree.sub_agents.append(LLMAgent("stray", model=FakeModel()))
    with pytest.raises(InvalidRequestError, match="'stray' is listed in the sub_agents of"):
        Runner("demo", tree)
    twice = make_tree(Models())
    twice.sub_agents.append(twice.sub_agents[0])
    with pytest.raises(InvalidRequestError, match="at 'billing'"):
        Runner("demo", twice)


def test_construction_checks_of_the_tree_still_hold() -> None:
    models = Models()
    with pytest.raises(InvalidRequestError, match="named 'billing'"):
        LLMAgent(
            "triage", model=models.triage,
            sub_agents=[LLMAgent("billing", model=models.billing),
                        LLMAgent("billing", model=models.billing)],
        )
    billing = LLMAgent("billing", model=models.billing)
    LLMAgent("a", model=models.triage, sub_agents=[billing])
    with pytest.raises(InvalidRequestError, match="already a sub-agent of 'a'"):
        LLMAgent("b", model=models.triage, sub_agents=[billing])


@pytest.mark.parametrize("bad", [0, -1, True, 2.5])
def test_max_transfers_must_be_a_positive_int(bad: Any) -> None:
    with pytest.raises(InvalidRequestError, match="max_transfers must be"):
        Runner("demo", make_tree(Models()), max_transfers=bad)


# --- the terminal printer -------------------------------------------------------------------


def test_the_printer_names_the_agent_speaking_and_the_transfers() -> None:
    from workers.cli import EventPrinter

    def event(author: str, **fields: Any) -> Event:
        if "to_agent" in fields:
            return AgentTransferEvent(invocation_id="i", author=author, **fields)
        return MessageEvent(invocation_id="i", author=author, **fields)

    out = io.StringIO()
    printer = EventPrinter(out, show_user=True)
    for item in [
        event("user", message=Message.user("invoice?")),
        event("triage", message=Message.assistant("Let me pass you on.")),
        event("triage", to_agent="billing"),
        event("billing", message=Message.assistant("It is paid.")),
    ]:
        printer(item)
    assert out.getvalue().splitlines() == [
        "user> invoice?",
        "assistant> Let me pass you on.",
        "  [transfer] triage -> billing",
        "billing> It is paid.",
    ]
