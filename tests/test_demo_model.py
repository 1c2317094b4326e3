"""The offline demo model: tool calls for arithmetic and time, a helpful reply otherwise."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runner_core.messages import Message
from runner_core.model import GenerationConfig, Model, ModelRequest, ModelResponse, TextDelta
from workers.demo_model import DemoModel, find_arithmetic

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
