"""The offline demo model: tool calls for arithmetic and time, a transfer to the agent that has
the tool, a helpful reply otherwise; and the built-in ``assistant`` app's transfer with it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runner_core import AgentTransferEvent, Event, LLMAgent, Runner
from runner_core.messages import Message
from runner_core.model import GenerationConfig, Model, ModelRequest, ModelResponse, TextDelta
from runner_core.transfer import transfer_tool
from workers.agents import build_assistant
from workers.demo_model import DemoModel, find_arithmetic
from workers.settings import Settings

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate an arithmetic expression.",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string"}},
                "required": ["expression"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "current_time",
            "description": "The current time.",
            "parameters": {"type": "object", "properties": {}},
        },
    },
]


async def turn(
    messages: list[Message], *, tools: list[dict[str, Any]] | None = None, stream: bool = True
) -> tuple[list[str], ModelResponse]:
    model = DemoModel(delay_s=0)
    request = ModelRequest(
        messages=messages,
        tools=TOOLS if tools is None else tools,
        generation=GenerationConfig(stream=stream),
    )
    deltas: list[str] = []
    responses: list[ModelResponse] = []
    async for item in model.generate(request):
        if isinstance(item, TextDelta):
            assert not responses, "a delta came after the response"
            deltas.append(item.text)
        else:
            responses.append(item)
    assert len(responses) == 1
    return deltas, responses[0]


def test_it_is_a_model() -> None:
    assert isinstance(DemoModel(), Model)


async def test_arithmetic_calls_the_calculator_then_answers_with_its_result() -> None:
    question = Message.user("what is 12*7")
    deltas, first = await turn([question])

    assert deltas == []
    calls = first.message.tool_calls or []
    assert [c.function.name for c in calls] == ["calculator"]
    assert json.loads(calls[0].function.arguments) == {"expression": "12*7"}
    assert first.finish_reason == "tool_calls"

    result = Message.tool(calls[0].id, "84", name="calculator")
    deltas, second = await turn([question, first.message, result])

    assert len(deltas) >= 3
    assert "".join(deltas) == second.message.content
    assert second.message.content == "12*7 = 84."
    assert not second.message.tool_calls


async def test_tool_result_as_json_object_is_read() -> None:
    question = Message.user("6 x 7?")
    _, first = await turn([question])
    call = (first.message.tool_calls or [])[0]
    assert json.loads(call.function.arguments) == {"expression": "6 * 7"}
    _, second = await turn([question, first.message, Message.tool(call.id, '{"result": 42}')])
    assert second.message.content == "6 * 7 = 42."


async def test_time_question_calls_current_time() -> None:
    question = Message.user("What time is it?")
    _, first = await turn([question])
    call = (first.message.tool_calls or [])[0]
    assert call.function.name == "current_time"
    assert json.loads(call.function.arguments) == {}

    _, second = await turn([question, first.message, Message.tool(call.id, "12:00 UTC")])
    assert second.message.content == "The current time is 12:00 UTC."


async def test_anything_else_explains_how_to_use_a_real_model() -> None:
    deltas, response = await turn([Message.user("hello there")])

    assert len(deltas) > 5
    text = response.message.content or ""
    assert "offline demo" in text
    assert "OPENAI_API_KEY" in text and "OPENAI_BASE_URL" in text


async def test_without_the_calculator_tool_it_answers_directly() -> None:
    _, response = await turn([Message.user("what is (2+3)*4")], tools=[])
    assert response.message.content == "(2+3)*4 = 20."


async def test_not_streaming_gives_no_deltas() -> None:
    deltas, response = await turn([Message.user("hello")], stream=False)
    assert deltas == []
    assert response.message.content


async def test_usage_is_sensible() -> None:
    _, response = await turn([Message.system("be nice"), Message.user("hello there")])
    usage = response.usage
    assert usage.model_calls == 1
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.parametrize(
    ("text", "expression"),
    [
        ("what is 12*7", "12*7"),
        ("compute (2+3)*4 please", "(2+3)*4"),
        ("2^10?", "2**10"),
        ("hello", None),
        ("I am 42 years old", None),
    ],
)
def test_find_arithmetic(text: str, expression: str | None) -> None:
    assert find_arithmetic(text) == expression


# --- transfers --------------------------------------------------------------------------------


def transfer_schema(**descriptions: str) -> dict[str, Any]:
    """The real ``transfer_to_agent`` schema of an agent whose sub-agents are ``descriptions``
    (name -> description)."""
    subs = [LLMAgent(name, model=DemoModel(), description=d) for name, d in descriptions.items()]
    tool = transfer_tool(LLMAgent("root", model=DemoModel(), sub_agents=subs))
    assert tool is not None
    return tool.openai_schema()


def transfer_target(response: ModelResponse) -> str | None:
    calls = response.message.tool_calls or []
    if [c.function.name for c in calls] != ["transfer_to_agent"]:
        return None
    target: str = json.loads(calls[0].function.arguments)["agent_name"]
    return target


async def test_a_time_question_goes_to_the_agent_whose_description_is_about_time() -> None:
    # Given the model is offered no current_time tool, but a transfer to a clock agent
    tools = [
        TOOLS[0],
        transfer_schema(billing="Invoices and refunds.", clock="Tells the current date and time."),
    ]
    # When asked the time
    _, response = await turn([Message.user("What time is it?")], tools=tools)
    # Then it hands the conversation to that agent
    assert transfer_target(response) == "clock"
    assert response.finish_reason == "tool_calls"


async def test_arithmetic_goes_to_the_agent_with_a_calculator_when_it_has_none() -> None:
    tools = [transfer_schema(assistant="Does arithmetic with a calculator.")]
    _, response = await turn([Message.user("what is 6*7")], tools=tools)
    assert transfer_target(response) == "assistant"


async def test_it_uses_its_own_tool_before_any_transfer() -> None:
    tools = [*TOOLS, transfer_schema(clock="Tells the current date and time.")]
    _, response = await turn([Message.user("What time is it?")], tools=tools)
    assert [c.function.name for c in response.message.tool_calls or []] == ["current_time"]


async def test_without_an_agent_for_the_topic_it_does_not_transfer() -> None:
    tools = [transfer_schema(billing="Invoices and refunds.")]
    _, arithmetic = await turn([Message.user("what is 6*7")], tools=tools)
    assert arithmetic.message.content == "6*7 = 42."
    _, time = await turn([Message.user("What time is it?")], tools=tools)
    assert transfer_target(time) is None and "offline demo" in (time.message.content or "")


async def test_the_question_is_the_users_not_another_agents_turn_shown_as_context() -> None:
    # Given an agent transferred to: the newest messages are the other agent's, as context
    call = 'called tool `transfer_to_agent` with parameters: {"agent_name": "clock"}'
    result = "tool `transfer_to_agent` returned result: Transferred to clock."
    messages = [
        Message.user("What time is it?"),
        Message.user(f"For context:\n[assistant] {call}"),
        Message.user(f"For context:\n[assistant] {result}"),
    ]
    # When its model is asked
    _, response = await turn(messages)
    # Then it answers the user's question
    assert [c.function.name for c in response.message.tool_calls or []] == ["current_time"]


# --- the built-in assistant app ---------------------------------------------------------------


async def run_assistant(runner: Runner, message: str) -> list[Event]:
    events = [event async for event in runner.run("alice", "s1", message)]
    assert events[-1].type == "runner.completion" and events[-1].status == "completed"
    return events


def transfers(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.author, e.to_agent) for e in events if isinstance(e, AgentTransferEvent)]


async def test_the_assistant_app_hands_a_time_question_to_clock_and_gets_arithmetic_back() -> None:
    # Given the built-in app with the offline demo model (no API key, no base URL)
    agent = build_assistant(Settings.from_env({}))
    assert isinstance(agent.model, DemoModel)
    agent.model.delay_s = 0
    async with Runner("assistant", agent) as runner:
        # When the user asks the time
        first = await run_assistant(runner, "what time is it?")
        # Then the assistant transfers to clock, which answers with its current_time tool
        assert transfers(first) == [("assistant", "clock")]
        final = first[-2]
        assert final.type == "message" and final.author == "clock"
        assert (final.message.content or "").startswith("The current time is ")
        # When the same session asks arithmetic, clock (now active) hands it back
        second = await run_assistant(runner, "what is 6*7")
        assert transfers(second) == [("clock", "assistant")]
        assert second[-1].final_text == "6*7 = 42."
        # And arithmetic asked first is the assistant's own: no transfer (the main command)
        third = [event async for event in runner.run("alice", "s2", "what is 6*7")]
        assert transfers(third) == [] and third[-1].final_text == "6*7 = 42."
