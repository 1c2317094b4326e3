"""Memory injection through the public API: Runner(memory_service=...) tells each agent the
skills and experiences relevant to the request, records what it told (``memory.injected`` and
a ``memory_read`` trace step), and answers ``load_memory`` calls. In process, FakeModel."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runner_core import LLMAgent, Plugin, Runner
from runner_core.errors import InvalidRequestError
from runner_core.events import EventBase, MemoryInjectedEvent, MessageEvent
from runner_core.invocation import InvocationContext
from runner_core.memory import Experience, Fact, Skill, agent_scope, user_scope
from runner_core.memory_injection import (
    EXPERIENCES_HEADING,
    SKILLS_HEADING,
    MemoryInjection,
    load_memory,
)
from runner_core.memory_store import InMemoryMemoryService
from runner_core.memory_traces import InMemoryTraceStore
from runner_core.testing import FakeModel
from runner_core.tracing import TraceRecorder
from runner_core.workflow import SequentialAgent

APP = "helpdesk"


def system_prompt(request: dict[str, Any]) -> str:
    first = request["messages"][0]
    assert first["role"] == "system"
    return str(first["content"])


@pytest.fixture
async def memory() -> InMemoryMemoryService:
    memory = InMemoryMemoryService()
    await memory.add(
        Experience(
            app_name=APP,
            scope=agent_scope("triage"),
            condition="when a printer is offline",
            rule="Ask for the printer's IP address first",
            confidence=0.8,
        )
    )
    await memory.add(
        Skill(
            app_name=APP,
            scope=agent_scope("triage"),
            name="printer reset",
            description="Reset a stuck printer",
            content="Hold the power button for ten seconds.",
        )
    )
    await memory.add(
        Experience(app_name=APP, scope=agent_scope("triage"), rule="Billing goes to finance")
    )
    await memory.add(
        Experience(app_name=APP, scope=agent_scope("other"), rule="Printer offline: reboot it")
    )
    return memory


async def test_relevant_memory_is_in_the_system_prompt_of_every_model_call(
    memory: InMemoryMemoryService,
) -> None:
    # Given an agent whose scope holds a skill and experiences, and a run that calls a tool
    model = FakeModel()
    model.add_tool_calls([("c1", "lookup", {"name": "lp1"})])
    model.add_text("Please send the IP address.")

    def lookup(name: str) -> str:
        return "offline"

    agent = LLMAgent("triage", model=model, instruction="You triage tickets.", tools=[lookup])
    runner = Runner(APP, agent, memory_service=memory)

    # When the user asks about an offline printer
    events = [e async for e in runner.run("alice", None, "My printer is offline")]

    # Then both model calls were told the skill and the matching experience, under seed 003's
    # sections, after the agent's instruction; not the unrelated or other agent's experience
    for request in model.requests:
        prompt = system_prompt(request)
        assert prompt.startswith("You triage tickets.\n\n" + SKILLS_HEADING)
        assert "### printer reset\nReset a stuck printer\nHold the power button" in prompt
        assert EXPERIENCES_HEADING + "\n- when a printer is offline: Ask for the printer's IP" in (
            prompt
        )
        assert "Billing" not in prompt and "reboot" not in prompt
    # And one memory.injected event says what, before the first model turn's events
    injected = [e for e in events if isinstance(e, MemoryInjectedEvent)]
    assert len(injected) == 1
    assert injected[0].scope == "agent:triage" and injected[0].author == "triage"
    assert injected[0].query == "My printer is offline"
    assert [i.kind for i in injected[0].items] == ["skill", "experience"]
    first_model_turn = next(
        i for i, e in enumerate(events) if isinstance(e, MessageEvent) and e.author == "triage"
    )
    assert events.index(injected[0]) < first_model_turn
    assert events[-1].type == "runner.completion" and events[-1].status == "completed"
    # And it is stored with the session
    session = await runner.session_service.get_session(APP, "alice", events[-1].session_id)
    assert session is not None
    assert [e.type for e in session.events].count("memory.injected") == 1


async def test_an_agent_without_instruction_gets_a_system_message(
    memory: InMemoryMemoryService,
) -> None:
    model = FakeModel()
    model.add_text("ok")
    runner = Runner(APP, LLMAgent("triage", model=model), memory_service=memory)
    await runner.run("alice", None, "printer offline").completion()
    assert system_prompt(model.requests[0]).startswith(SKILLS_HEADING)


async def test_nothing_relevant_means_an_untouched_prompt_and_an_empty_event(
    memory: InMemoryMemoryService,
) -> None:
    model = FakeModel()
    model.add_text("Hello")
    runner = Runner(APP, LLMAgent("triage", model=model, instruction="Hi."), memory_service=memory)
    events = [e async for e in runner.run("alice", None, "good morning")]
    assert system_prompt(model.requests[0]) == "Hi."
    [injected] = [e for e in events if isinstance(e, MemoryInjectedEvent)]
    assert injected.items == []


async def test_each_agent_of_a_tree_is_told_its_own_scope(memory: InMemoryMemoryService) -> None:
    model = FakeModel()
    model.add_text("first")
    model.add_text("second")
    tree = SequentialAgent(
        "pipeline",
        sub_agents=[
            LLMAgent("triage", model=model, instruction="T."),
            LLMAgent("other", model=model, instruction="O."),
        ],
    )
    runner = Runner(APP, tree, memory_service=memory)
    events = [e async for e in runner.run("alice", None, "printer offline")]
    assert "IP address" in system_prompt(model.requests[0])
    assert "reboot it" not in system_prompt(model.requests[0])
    assert "reboot it" in system_prompt(model.requests[1])
    scopes = [e.scope for e in events if isinstance(e, MemoryInjectedEvent)]
    assert scopes == ["agent:triage", "agent:other"]


async def test_the_trace_gets_a_memory_read_step_before_the_model_call(
    memory: InMemoryMemoryService,
) -> None:
    model = FakeModel()
    model.add_text("done")
    traces = InMemoryTraceStore()
    runner = Runner(
        APP,
        LLMAgent("triage", model=model),
        memory_service=memory,
        plugins=[TraceRecorder(traces)],
    )
    completion = await runner.run("alice", None, "printer offline").completion()
    trace = await traces.get(completion.invocation_id)
    assert trace is not None
    kinds = [step.kind for step in trace.steps]
    assert kinds[:2] == ["memory_read", "model_call"]
    memory_step, model_step = trace.steps[0], trace.steps[1]
    assert model_step.parent_ids == [memory_step.step_id]
    assert memory_step.data["scope"] == "agent:triage"
    assert [item["kind"] for item in memory_step.data["items"]] == ["skill", "experience"]


async def test_load_memory_searches_the_agent_the_user_and_the_app(
    memory: InMemoryMemoryService,
) -> None:
    await memory.add(Fact(app_name=APP, scope=user_scope("alice"), content="Alice's printer: LX"))
    await memory.add(Fact(app_name=APP, scope=user_scope("bob"), content="Bob's printer: QZ"))
    model = FakeModel()
    model.add_tool_calls([("m1", "load_memory", {"query": "printer"})])
    model.add_tool_calls([("m2", "load_memory", {"query": "bad\x00query"})])
    model.add_text("done")
    runner = Runner(
        APP, LLMAgent("triage", model=model, tools=[load_memory]), memory_service=memory
    )
    await runner.run("alice", None, "hello").completion()

    found = model.requests[1]["messages"][-1]["content"]
    assert "[fact] Alice's printer: LX" in found
    assert "IP address" in found  # the agent's own experience
    assert "QZ" not in found and "reboot" not in found  # another user's, another agent's
    refused = model.requests[2]["messages"][-1]["content"]
    assert refused.startswith("Error:") and "control character" in refused


async def test_load_memory_without_memory_tells_the_model_how_to_turn_it_on() -> None:
    model = FakeModel()
    model.add_tool_calls([("m1", "load_memory", {"query": "printer"})])
    model.add_text("done")
    runner = Runner(APP, LLMAgent("triage", model=model, tools=[load_memory]))
    await runner.run("alice", None, "hello").completion()
    assert "memory_service" in model.requests[1]["messages"][-1]["content"]


async def test_a_failing_memory_store_does_not_fail_the_run(
    memory: InMemoryMemoryService, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        from runner_core.errors import MemoryBackendError

        raise MemoryBackendError("memory store down")

    memory._keyword_search = broken  # type: ignore[method-assign]
    model = FakeModel()
    model.add_text("fine")
    runner = Runner(APP, LLMAgent("triage", model=model, instruction="I."), memory_service=memory)
    completion = await runner.run("alice", None, "printer offline").completion()
    assert completion.status == "completed"
    assert system_prompt(model.requests[0]) == "I."
    assert "without long-term memory" in caplog.text


def test_memory_injection_checks_its_arguments() -> None:
    with pytest.raises(InvalidRequestError, match="MemoryService"):
        MemoryInjection(object())  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="skills_limit"):
        MemoryInjection(InMemoryMemoryService(), skills_limit=-1)


async def test_ctx_emit_refuses_what_only_the_runner_writes() -> None:
    seen: list[str] = []

    class Emitter(Plugin):
        async def before_model(self, ctx: InvocationContext, request: Any) -> None:
            for event in (
                ctx.event(EventBase, "x", type="runner.completion"),
                EventBase(type="state.update", invocation_id="another", author="x"),
            ):
                with pytest.raises(InvalidRequestError) as raised:
                    ctx.emit(event)
                seen.append(str(raised.value))

    model = FakeModel()
    model.add_text("ok")
    runner = Runner(APP, LLMAgent("triage", model=model), plugins=[Emitter()])
    await runner.run("alice", None, "hi").completion()
    assert "only the Runner" in seen[0] and "this invocation" in seen[1]


def test_the_injected_event_is_json_with_its_items() -> None:
    event = MemoryInjectedEvent(invocation_id="i", author="triage", scope="agent:triage", query="q")
    assert json.loads(event.to_json())["items"] == []
