"""An offline model for demos: no network, no API key, deterministic.

:class:`DemoModel` implements :class:`runner_core.model.Model` well enough to show the whole
path (streamed text, a tool call, the tool's result, the answer) without an LLM:

- arithmetic in the user's last message ("what is 12*7") -> a ``calculator`` tool call with
  ``{"expression": "12*7"}``, then, after the tool result, an answer quoting it;
- a question about the time -> a ``current_time`` tool call, then the answer;
- anything else -> a short reply saying it is the offline demo and how to connect a real model.

A tool is called only if the request offers it. When it is not offered but the built-in
``transfer_to_agent`` tool is, and one of the agents that tool lists has a description about the
question's topic (the time and date; arithmetic or a calculator), the model hands the
conversation to that agent, as an LLM would: that is how the built-in ``assistant`` app shows a
transfer (time questions go to its ``clock`` sub-agent, and arithmetic asked of ``clock`` goes
back). Otherwise arithmetic is answered directly.

In a tree of agents, other agents' turns reach the model as user messages starting with
``For context:`` (:func:`runner_core.context.as_seen_by`); the question is the newest user
message that is not one of those.
"""

from __future__ import annotations

import ast
import asyncio
import json
import operator
import re
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from runner_core.context import CONTEXT_PREFIX
from runner_core.events import Usage
from runner_core.messages import Message, ToolCall
from runner_core.model import ModelPrice, ModelRequest, ModelResponse, TextDelta
from runner_core.transfer import TRANSFER_TOOL_NAME

__all__ = ["CALCULATOR_TOOL", "CURRENT_TIME_TOOL", "TRANSFER_TOOL", "DemoModel", "find_arithmetic"]

CALCULATOR_TOOL = "calculator"
CURRENT_TIME_TOOL = "current_time"
TRANSFER_TOOL = TRANSFER_TOOL_NAME
#: How other agents' turns begin in an agent's history (runner_core.context.as_seen_by).
_CONTEXT_PREFIX = CONTEXT_PREFIX

OFFLINE_REPLY = (
    "Hello! I am the offline demo model of agent-runner: no LLM is connected, so I can only do "
    'arithmetic (try "what is 12*7") and tell the time (try "what time is it?": the assistant '
    "hands that to its clock agent), both through tools. To talk to a real model, set "
    "OPENAI_API_KEY for the OpenAI API, or OPENAI_BASE_URL for any OpenAI-compatible "
    "endpoint (with OPENAI_API_KEY if it needs one), and AGENT_RUNNER_MODEL for the model name, "
    "then start again."
)

_NUMBER = r"\(*\s*-?\d+(?:\.\d+)?\s*\)*"
_ARITHMETIC_RE = re.compile(rf"{_NUMBER}(?:\s*(?:\*\*|[-+*/%^x\u00d7\u00f7])\s*{_NUMBER})+")
_TIME_RE = re.compile(r"\b(time|clock|what day|date|today)\b", re.IGNORECASE)
#: An agent description about arithmetic (the time topic reuses _TIME_RE).
_ARITHMETIC_TOPIC_RE = re.compile(r"arithmetic|calculat|\bmath", re.IGNORECASE)
#: One agent in the transfer tool's description: ``- clock: Tells the time.``
_TARGET_LINE_RE = re.compile(r"^- (?P<name>[^:\s]+)(?:: (?P<description>.*))?$", re.MULTILINE)

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.FloorDiv: operator.floordiv,
}


def find_arithmetic(text: str) -> str | None:
    """The first arithmetic expression in ``text`` in Python syntax (``6 x 7`` -> ``6*7``)."""
    match = _ARITHMETIC_RE.search(text)
    if match is None:
        return None
    expression = match.group(0).strip()
    expression = re.sub(r"(?<=[\d)\s])x(?=[\s\d(])", "*", expression)
    return expression.replace("\u00d7", "*").replace("\u00f7", "/").replace("^", "**")


def _evaluate(expression: str) -> float | int:
    """Evaluate plain arithmetic (numbers and + - * / % ** //), nothing else."""

    def walk(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            value = walk(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 100:
                raise ValueError("exponent too large")
            return _BINARY[type(node.op)](left, right)
        raise ValueError(f"not plain arithmetic: {expression!r}")

    result = walk(ast.parse(expression, mode="eval"))
    assert isinstance(result, int | float)
    return result


def _tool_output(content: str | None) -> str:
    """A tool result as text: ``{"result": 42}`` and ``42`` both read as ``42``."""
    text = content or ""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, dict) and "result" in value:
        value = value["result"]
    return value if isinstance(value, str) else json.dumps(value)


def _estimate_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


class DemoModel:
    """A scripted stand-in for an LLM (see the module docstring).

    Args:
        name: reported as the model name.
        delay_s: pause before each streamed chunk, so the demo visibly streams (0 for tests
            and benchmarks).
    """

    price: ModelPrice | None = None

    def __init__(self, name: str = "offline-demo", *, delay_s: float = 0.03) -> None:
        self.name = name
        self.delay_s = delay_s

    async def generate(self, request: ModelRequest) -> AsyncIterator[TextDelta | ModelResponse]:
        """Stream one turn: text deltas (when streaming), then one :class:`ModelResponse`."""
        message = self._reply(request)
        prompt = sum(_estimate_tokens(m.text) + 4 for m in request.messages)
        prompt += sum(_estimate_tokens(json.dumps(t)) for t in request.tools)
        completion = _estimate_tokens(message.text)
        if message.tool_calls:
            completion += sum(
                _estimate_tokens(c.function.name + c.function.arguments) for c in message.tool_calls
            )
        if message.content and request.generation.stream:
            for chunk in re.findall(r"\S+\s*|\s+", message.content):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                yield TextDelta(chunk)
        elif self.delay_s:
            await asyncio.sleep(self.delay_s)
        yield ModelResponse(
            message=message,
            usage=Usage(
                prompt_tokens=prompt,
                completion_tokens=completion,
                total_tokens=prompt + completion,
                model_calls=1,
            ),
            finish_reason="tool_calls" if message.tool_calls else "stop",
        )

    async def close(self) -> None:
        """Nothing to release."""

    def _reply(self, request: ModelRequest) -> Message:
        offered = {_tool_name(t) for t in request.tools}
        last = request.messages[-1] if request.messages else Message.user("")
        if last.role == "tool":
            return Message.assistant(self._answer_tool_result(request.messages))
        text = _question(request.messages)
        expression = find_arithmetic(text)
        if expression is not None:
            if CALCULATOR_TOOL in offered:
                return self._call(CALCULATOR_TOOL, {"expression": expression})
            target = _transfer_target(request.tools, _ARITHMETIC_TOPIC_RE)
            if target is not None:
                return self._call(TRANSFER_TOOL, {"agent_name": target})
            try:
                return Message.assistant(f"{expression} = {_format(_evaluate(expression))}.")
            except (ValueError, ZeroDivisionError, SyntaxError, OverflowError):
                return Message.assistant(f"I cannot work out {expression}, sorry.")
        if _TIME_RE.search(text):
            if CURRENT_TIME_TOOL in offered:
                return self._call(CURRENT_TIME_TOOL, {})
            target = _transfer_target(request.tools, _TIME_RE)
            if target is not None:
                return self._call(TRANSFER_TOOL, {"agent_name": target})
        return Message.assistant(OFFLINE_REPLY)

    @staticmethod
    def _call(name: str, arguments: dict[str, Any]) -> Message:
        call = ToolCall.make(f"call_demo_{uuid.uuid4().hex[:12]}", name, arguments)
        return Message.assistant(None, tool_calls=[call])

    @staticmethod
    def _answer_tool_result(messages: list[Message]) -> str:
        result = messages[-1]
        call: ToolCall | None = None
        for message in reversed(messages):
            for candidate in message.tool_calls or []:
                if candidate.id == result.tool_call_id:
                    call = candidate
        output = _tool_output(result.content)
        if call is None:
            return f"The tool answered: {output}"
        if call.function.name == CALCULATOR_TOOL:
            try:
                expression = str(json.loads(call.function.arguments).get("expression", ""))
            except (ValueError, AttributeError):
                expression = ""
            return f"{expression} = {output}." if expression else f"The result is {output}."
        if call.function.name == CURRENT_TIME_TOOL:
            return f"The current time is {output}."
        return f"{call.function.name} answered: {output}"


def _tool_name(schema: dict[str, Any]) -> str:
    return str(schema.get("function", {}).get("name", schema.get("name", "")))


def _question(messages: list[Message]) -> str:
    """The user's question: the newest user message that is not another agent's turn shown
    as context; empty when the newest message that is neither is not the user's."""
    for message in reversed(messages):
        if message.role == "user" and message.text.startswith(_CONTEXT_PREFIX):
            continue
        return message.text if message.role == "user" else ""
    return ""


def _transfer_target(tools: list[dict[str, Any]], topic: re.Pattern[str]) -> str | None:
    """The first agent the request's ``transfer_to_agent`` tool offers whose description is
    about ``topic``; None without that tool or such an agent."""
    for schema in tools:
        if _tool_name(schema) != TRANSFER_TOOL:
            continue
        function = schema.get("function", {})
        enum = function.get("parameters", {}).get("properties", {}).get("agent_name", {})
        reachable = set(enum.get("enum", ()))
        for line in _TARGET_LINE_RE.finditer(str(function.get("description", ""))):
            if line["name"] in reachable and topic.search(line["description"] or ""):
                return line["name"]
    return None


def _format(value: float | int) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
