"""An agent called as a tool (issue 15): isolated history, result, failures, usage, hooks.

In process, one FakeModel per agent (``writer_model`` for the caller, ``researcher_model`` for
the agent it calls), so each agent's requests are asserted on their own. Every run is awaited
under a deadline, so a run that hangs fails its test instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from runner_core import (
    AgentTool,
    BaseAgent,
    Event,
    InMemorySessionService,
    InvalidRequestError,
    InvocationContext,
    LLMAgent,
    Message,
    ModelPrice,
    Runner,
    RunOutcome,
    ToolCall,
    ToolContext,
    ToolResultEvent,
    Usage,
    tool,
)
from runner_core.testing import FakeModel

RUN_DEADLINE_S = 10.0
ASK = "ask_1"  # the caller's call ID for the agent tool


@pytest.fixture
def writer_model() -> FakeModel:
    return FakeModel()


@pytest.fixture
def researcher_model() -> FakeModel:
    return FakeModel()


@pytest.fixture
async def service() -> AsyncIterator[InMemorySessionService]:
    svc = InMemorySessionService()
    yield svc
    await svc.close()


def researcher(model: FakeModel, **options: Any) -> LLMAgent:
    options.setdefault("description", "Finds facts about a topic.")
    return LLMAgent("researcher", model=model, instruction="Research briefly.", **options)


def writer_runner(
    model: FakeModel, service: InMemorySessionService, agent_tool: AgentTool, **options: Any
) -> Runner:
    writer = LLMAgent(
        "writer", model=model, instruction="Write with facts.", tools=[agent_tool], **options
    )
    return Runner("demo", writer, session_service=service)


def script_ask(writer_model: FakeModel, request: str, answer: str = "Done.") -> None:
    """The caller asks the researcher once, then answers."""
    writer_model.add_tool_calls([(ASK, "researcher", {"request": request})])
    writer_model.add_text(answer)


async def run_all(runner: Runner, message: str, **options: Any) -> list[Event]:
    async def collect() -> list[Event]:
        return [event async for event in runner.run("alice", "s1", message, **options)]

    events = await asyncio.wait_for(collect(), RUN_DEADLINE_S)
    assert events[-1].is_runner_completion()
    return events


def tool_result(events: list[Event]) -> ToolResultEvent:
    results = [e for e in events if isinstance(e, ToolResultEvent)]
    assert len(results) == 1, [e.type for e in events]
    return results[0]


async def stored_events(service: InMemorySessionService) -> list[Event]:
    session = await service.get_session("demo", "alice", "s1")
    assert session is not None
    return list(session.events)


# --- what the calling model sees -----------------------------------------------------------


async def test_the_calling_model_sees_the_agent_as_a_tool_with_one_request_argument(
    writer_model: FakeModel, researcher_model: FakeModel, service: InMemorySessionService
) -> None:
    # Given a writer whose tool is the researcher agent
    writer_model.add_text("Hello.")
    runner = writer_runner(writer_model, service, AgentTool(researcher(researcher_model)))
    # When it runs
    await run_all(runner, "hi")
    # Then the writer's model is offered a tool named and described after the agent
    [offered] = writer_model.requests[0]["tools"]
    function = offered["function"]
    assert function["name"] == "researcher"
    assert function["description"] == "Finds facts about a topic."
    assert function["parameters"]["required"] == ["request"]
    assert function["parameters"]["properties"]["request"]["type"] == "string"


def test_name_and_description_can_be_given() -> None:
    agent_tool = AgentTool(researcher(FakeModel()), name="look_up", description="Look a fact up.")
    function = agent_tool.openai_schema()["function"]
    assert (function["name"], function["description"]) == ("look_up", "Look a fact up.")


def test_an_agent_without_a_description_gets_one_that_says_it_sees_only_the_request() -> None:
    agent_tool = AgentTool(LLMAgent("helper", model=FakeModel()))
    assert "sees only the request" in agent_tool.description


def test_construction_refuses_what_is_not_an_agent_and_names_unfit_for_a_tool() -> None:
    with pytest.raises(InvalidRequestError, match=r"needs an agent .* got str"):
        AgentTool("researcher")  # type: ignore[arg-type]
    dotted = LLMAgent("support.bot", model=FakeModel())
    with pytest.raises(InvalidRequestError, match=r"'support.bot' cannot name a tool.*name="):
        AgentTool(dotted)
    assert AgentTool(dotted, name="support_bot").name == "support_bot"


# --- history and result --------------------------------------------------------------------


async def test_the_agent_sees_only_its_instruction_and_the_request(
    writer_model: FakeModel, researcher_model: FakeModel, service: InMemorySessionService
) -> None:
    # Given a session whose history holds something the researcher must not see
    writer_model.add_text("Noted, Ann.")
    runner = writer_runner(writer_model, service, AgentTool(researcher(researcher_model)))
    await run_all(runner, "My name is Ann and my PIN is 4321.")
    # When the writer asks the researcher in the next run
    script_ask(writer_model, "When was the Eiffel Tower built?")
    researcher_model.add_text("1887 to 1889.")
    await run_all(runner, "Write a line about the Eiffel Tower.")
    # Then the researcher's one request holds its instruction and the request, nothing else
    [request] = researcher_model.requests
    assert request["messages"] == [
        {"role": "system", "content": "Research briefly."},
        {"role": "user", "content": "When was the Eiffel Tower built?"},
    ]
    assert "4321" not in json.dumps(request)


async def test_the_answer_is_the_tool_result_and_the_agents_turns_stay_out_of_the_caller(
    writer_model: FakeModel, researcher_model: FakeModel, service: InMemorySessionService
) -> None:
    # Given a writer that asks the researcher, which answers
    script_ask(writer_model, "When was the Eiffel Tower built?", "Built 1887-1889.")
    researcher_model.add_text("1887 to 1889.")
    runner = writer_runner(writer_model, service, AgentTool(researcher(researcher_model)))
    # When it runs
    events = await run_all(runner, "Write a line about the Eiffel Tower.")
    # Then the researcher's answer reaches the writer's model as the tool result
    assert writer_model.requests[1]["messages"][-1] == {
        "role": "tool",
        "tool_call_id": ASK,
        "name": "researcher",
        "content": "1887 to 1889.",
    }
    result = tool_result(events)
    assert result.error is None
    assert result.author == "writer"
    assert events[-1].final_text == "Built 1887-1889."
    # And the stream and the session hold the writer's events only, not the researcher's
    assert [e.type for e in events if not e.partial] == [
        "message", "message", "tool.result", "message", "runner.completion"
    ]  # fmt: skip
    streamed = "".join(e.delta for e in events if e.type == "message.delta")
    assert streamed == "Built 1887-1889."  # the writer's text; the researcher's is not streamed
    assert {e.author for e in events} <= {"user", "writer", "demo"}
    assert {e.author for e in await stored_events(service)} == {"user", "writer"}


async def test_structured_output_is_the_tool_result_as_json_text(
    writer_model: FakeModel, researcher_model: FakeModel, service: InMemorySessionService
) -> None:
    # Given a researcher with an output schema
    class Fact(BaseModel):
        subject: str
        year: int

    script_ask(writer_model, "When was the Eiffel Tower finished?")
    researcher_model.add_text('{"subject": "Eiffel Tower", "year": 1889}')
    agent = researcher(researcher_model, output_schema=Fact)
    runner = writer_runner(writer_model, service, AgentTool(agent))
    # When the writer asks it
    events = await run_all(runner, "Write.")
    # Then the tool result is its parsed output as JSON text
    content = tool_result(events).message.content
    assert json.loads(content or "") == {"subject": "Eiffel Tower", "year": 1889}
    assert researcher_model.requests[0]["response_format"]["type"] == "json_schema"


async def test_a_custom_agent_can_be_called_as_a_tool(
    writer_model: FakeModel, service: InMemorySessionService
) -> None:
    # Given a BaseAgent subclass with no model
    class Upper(BaseAgent):
        async def run(self, ctx: InvocationContext) -> AsyncIterator[Event]:
            text = ctx.session.events[-1].message.text.upper()
            yield ctx.message_event(self.name, Message.assistant(text))
            ctx.outcome = RunOutcome(status="completed", final_text=text)

    writer_model.add_tool_calls([(ASK, "upper", {"request": "shout this"})])
    writer_model.add_text("Done.")
    runner = writer_runner(writer_model, service, AgentTool(Upper("upper")))
    # When the writer calls it
    events = await run_all(runner, "go")
    # Then its answer is the tool result, and the tool result carries no usage (no model)
    result = tool_result(events)
    assert result.message.content == "SHOUT THIS"
    assert result.usage is None
    assert "usage" not in json.loads(result.to_json())


# --- failures ------------------------------------------------------------------------------


def no_answers(ctx: InvocationContext, text: str) -> str:
    return "answers are not allowed"


@tool
def search(topic: str) -> str:
    """Search for a topic.

    Args:
        topic: what to search for.
    """
    return f"results for {topic}"


@pytest.mark.parametrize(
    "failure, options, error_type",
    [
        ("model", {}, "model_http_error"),
        ("guardrail", {"output_guardrails": [no_answers]}, "output_guardrail_tripped"),
        ("iterations", {"tools": [search], "max_iterations": 1}, "max_iterations_exceeded"),
    ],
)
async def test_a_failing_agent_is_a_tool_error_and_the_caller_recovers(
    writer_model: FakeModel,
    researcher_model: FakeModel,
    service: InMemorySessionService,
    failure: str,
    options: dict[str, Any],
    error_type: str,
) -> None:
    # Given a researcher whose run fails
    if failure == "model":
        researcher_model.add_error(500, "the model is down")
    elif failure == "guardrail":
        researcher_model.add_text("an answer")
    else:
        researcher_model.add_tool_calls([("s1", "search", {"topic": "towers"})])
    script_ask(writer_model, "Find facts.", "I could not find facts, sorry.")
    runner = writer_runner(
        writer_model, service, AgentTool(researcher(researcher_model, **options))
    )
    # When the writer asks it
    events = await run_all(runner, "Write.")
    # Then the call is a tool error saying how the researcher's run ended
    result = tool_result(events)
    assert result.error is not None
    assert result.error.type == "tool_execution_error"
    assert f"agent 'researcher' failed ({error_type})" in result.error.message
    # And the writer's model reads it and the writer's run completes
    told = writer_model.requests[1]["messages"][-1]
    assert told["role"] == "tool"
    assert told["content"].startswith("Error: agent 'researcher' failed")
    assert events[-1].status == "completed"
    assert events[-1].final_text == "I could not find facts, sorry."


async def test_an_agent_whose_tool_needs_confirmation_is_a_tool_error(
    writer_model: FakeModel, researcher_model: FakeModel, service: InMemorySessionService
) -> None:
    # Given a researcher whose tool needs a person's confirmation
    @tool(requires_confirmation=True)
    def publish(text: str) -> str:
        """Publish a text."""
        return "published"

    researcher_model.add_tool_calls([("p1", "publish", {"text": "x"})])
    script_ask(writer_model, "Publish x.")
    agent = researcher(researcher_model, tools=[publish])
    runner = writer_runner(writer_model, service, AgentTool(agent))
    # When the writer asks it
    events = await run_all(runner, "Go.")
    # Then the call fails (nobody can confirm inside an agent tool) and the writer goes on
    result = tool_result(events)
    assert result.error is not None
    assert "cannot do" in result.error.message
    assert "requires_confirmation on the AgentTool" in result.error.message
    assert events[-1].status == "completed"


async def test_the_agent_tool_itself_may_require_confirmation(
    writer_model: FakeModel, researcher_model: FakeModel, service: InMemorySessionService
) -> None:
    # Given an agent tool that needs confirmation
    script_ask(writer_model, "Find facts.")
    researcher_model.add_text("Facts.")
    agent_tool = AgentTool(researcher(researcher_model), requires_confirmation=True)
    runner = writer_runner(writer_model, service, agent_tool)
    # When the writer calls it, Then the run pauses before the researcher runs
    events = await run_all(runner, "Write.")
    assert events[-1].status == "paused"
    assert researcher_model.requests == []
    # And once confirmed, the researcher runs and the writer answers
    events = await run_all(runner, None, tool_confirmations={ASK: True})  # type: ignore[arg-type]
    assert tool_result(events).message.content == "Facts."
    assert events[-1].status == "completed"


# --- usage ---------------------------------------------------------------------------------


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion}


async def test_usage_totals_include_the_agents_model_calls(
    researcher_model: FakeModel, service: InMemorySessionService
) -> None:
    # Given a priced writer model, and a researcher that calls a tool then answers
    writer_model = FakeModel(price=ModelPrice(prompt_per_million=1.0, completion_per_million=2.0))
    writer_model.add_tool_calls([(ASK, "researcher", {"request": "towers"})], usage=usage(100, 10))
    writer_model.add_text("Done.", usage=usage(200, 20))
    researcher_model.add_tool_calls([("s1", "search", {"topic": "towers"})], usage=usage(30, 3))
    researcher_model.add_text("Towers are tall.", usage=usage(40, 4))
    agent = researcher(researcher_model, tools=[search])
    runner = writer_runner(writer_model, service, AgentTool(agent))
    # When the writer asks the researcher
    events = await run_all(runner, "Write.")
    # Then the tool result carries the researcher's usage
    assert tool_result(events).usage == Usage(
        prompt_tokens=70, completion_tokens=7, total_tokens=77, model_calls=2
    )
    # And the run's totals (and cost) include both agents' calls
    done = events[-1]
    assert done.usage == Usage(
        prompt_tokens=370, completion_tokens=37, total_tokens=407, model_calls=4
    )
    assert done.cost == pytest.approx((370 * 1.0 + 37 * 2.0) / 1_000_000)


async def test_a_failed_agents_usage_still_counts(
    writer_model: FakeModel, researcher_model: FakeModel, service: InMemorySessionService
) -> None:
    # Given a researcher that spends a model call, then runs out of iterations
    researcher_model.add_tool_calls([("s1", "search", {"topic": "x"})], usage=usage(30, 3))
    script_ask(writer_model, "Find facts.")
    agent = researcher(researcher_model, tools=[search], max_iterations=1)
    runner = writer_runner(writer_model, service, AgentTool(agent))
    # When the writer asks it
    events = await run_all(runner, "Write.")
    # Then the failed call's tool result and the run's totals count that model call
    result = tool_result(events)
    assert result.error is not None
    assert result.usage is not None and result.usage.model_calls == 1
    assert events[-1].usage.model_calls == 3


async def test_a_redelivered_run_counts_the_agents_usage_again_from_the_session(
    writer_model: FakeModel, researcher_model: FakeModel, service: InMemorySessionService
) -> None:
    # Given a run that called the researcher and completed
    script_ask(writer_model, "Find facts.")
    researcher_model.add_text("Facts.")
    runner = writer_runner(writer_model, service, AgentTool(researcher(researcher_model)))
    first = (await run_all(runner, "Write.", invocation_id="inv-1"))[-1]
    # When the same invocation is delivered again (it finds its events stored)
    again = (await run_all(runner, "Write.", invocation_id="inv-1"))[-1]
    # Then its totals, summed from the stored events, include the researcher's call
    assert first.usage.model_calls == 3
    assert again.usage == first.usage
    assert len(researcher_model.requests) == 1  # not run again


# --- state, runtime state, hooks, trees ----------------------------------------------------


async def test_the_agent_reads_the_callers_state_and_runtime_state_and_its_writes_come_back(
    writer_model: FakeModel, researcher_model: FakeModel, service: InMemorySessionService
) -> None:
    # Given a researcher tool that reads state and runtime state and writes state
    seen: dict[str, Any] = {}

    @tool
    def look_up(topic: str, context: ToolContext) -> str:
        """Look a topic up."""
        seen["city"] = context.state.get("city")
        seen["tenant"] = context.runtime_state.get("tenant")
        context.state["last_topic"] = topic
        return "found"

    await service.create_session("demo", "alice", "s1", state={"city": "Paris"})
    researcher_model.add_tool_calls([("l1", "look_up", {"topic": "towers"})])
    researcher_model.add_text("Towers.")
    script_ask(writer_model, "Look up towers.")
    agent = researcher(researcher_model, tools=[look_up])
    runner = writer_runner(writer_model, service, AgentTool(agent))
    # When the writer asks it, with runtime state
    events = await run_all(runner, "Write.", run_config={"runtime_state": {"tenant": "acme"}})
    # Then the researcher's tool saw the caller's state and runtime state
    assert seen == {"city": "Paris", "tenant": "acme"}
    # And what it wrote is the agent tool's state write, stored in the caller's session
    assert tool_result(events).state_delta == {"last_topic": "towers"}
    session = await service.get_session("demo", "alice", "s1")
    assert session is not None and session.state["last_topic"] == "towers"


async def test_callbacks_and_plugins_see_the_agent_tool_like_any_tool(
    writer_model: FakeModel, researcher_model: FakeModel, service: InMemorySessionService
) -> None:
    # Given before/after tool callbacks on the writer
    seen: list[tuple[str, str, Any]] = []

    def before(ctx: InvocationContext, call: ToolCall, args: dict[str, Any]) -> None:
        seen.append(("before", call.function.name, dict(args)))

    def after(ctx: InvocationContext, call: ToolCall, args: dict[str, Any], result: str) -> str:
        seen.append(("after", call.function.name, result))
        return result + " (checked)"

    script_ask(writer_model, "Find facts.")
    researcher_model.add_text("Facts.")
    runner = writer_runner(
        writer_model,
        service,
        AgentTool(researcher(researcher_model)),
        before_tool_callback=before,
        after_tool_callback=after,
    )
    # When the writer calls the agent tool
    events = await run_all(runner, "Write.")
    # Then the callbacks saw the call, its arguments and the agent's answer, and may change it
    assert seen == [
        ("before", "researcher", {"request": "Find facts."}),
        ("after", "researcher", "Facts."),
    ]
    assert tool_result(events).message.content == "Facts. (checked)"


async def test_a_before_tool_callback_can_answer_instead_of_the_agent(
    writer_model: FakeModel, researcher_model: FakeModel, service: InMemorySessionService
) -> None:
    script_ask(writer_model, "Find facts.")
    runner = writer_runner(
        writer_model,
        service,
        AgentTool(researcher(researcher_model)),
        before_tool_callback=lambda ctx, call, args: "cached facts",
    )
    events = await run_all(runner, "Write.")
    assert tool_result(events).message.content == "cached facts"
    assert researcher_model.requests == []


def test_a_sub_agent_of_another_tree_is_refused_at_construction() -> None:
    # Given a researcher that is a sub-agent of another agent
    agent = researcher(FakeModel())
    LLMAgent("lead", model=FakeModel(), sub_agents=[agent])
    # When it is wrapped, Then the error names its parent and says what to do
    with pytest.raises(InvalidRequestError, match=r"sub-agent of 'lead'.*build another agent"):
        AgentTool(agent)


async def test_the_wrapped_agent_may_have_sub_agents(
    writer_model: FakeModel, researcher_model: FakeModel, service: InMemorySessionService
) -> None:
    # Given a researcher that is the root of a tree of its own
    agent = researcher(researcher_model, sub_agents=[LLMAgent("archivist", model=FakeModel())])
    script_ask(writer_model, "Find facts.")
    researcher_model.add_text("Facts.")
    # When a writer calls it as a tool, Then it answers
    runner = writer_runner(writer_model, service, AgentTool(agent))
    events = await run_all(runner, "Write.")
    assert tool_result(events).message.content == "Facts."


async def test_two_calls_in_one_turn_run_on_separate_histories(
    writer_model: FakeModel, researcher_model: FakeModel, service: InMemorySessionService
) -> None:
    # Given a writer that asks the researcher twice in one turn
    writer_model.add_tool_calls(
        [
            ("a1", "researcher", {"request": "first question"}),
            ("a2", "researcher", {"request": "second question"}),
        ]
    )
    writer_model.add_text("Done.")
    researcher_model.add_text("answer one", match="first question")
    researcher_model.add_text("answer two", match="second question")
    runner = writer_runner(writer_model, service, AgentTool(researcher(researcher_model)))
    # When it runs
    events = await run_all(runner, "Write.")
    # Then each call's run saw only its own request, and each result is its own answer
    users = [[m for m in r["messages"] if m["role"] == "user"] for r in researcher_model.requests]
    assert sorted(u[0]["content"] for u in users) == ["first question", "second question"]
    assert all(len(u) == 1 for u in users)
    results = [e for e in events if isinstance(e, ToolResultEvent)]
    assert [r.message.content for r in results] == ["answer one", "answer two"]
