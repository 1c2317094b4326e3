"""Function tools: schemas from type hints and docstrings, validation, context, decorators."""

from __future__ import annotations

import asyncio
import threading
from typing import Literal

import pytest
from pydantic import BaseModel

from runner_core import FunctionTool, InvalidRequestError, ToolContext, tool
from runner_core.errors import ToolArgumentsError, ToolExecutionError


class Address(BaseModel):
    city: str
    zip_code: str | None = None


def make_context(state: dict[str, object] | None = None) -> ToolContext:
    return ToolContext(app_name="a", user_id="u", session_id="s", invocation_id="inv",
                       tool_call_id="c1", state=state or {})


def test_schema_comes_from_type_hints_defaults_and_docstring() -> None:
    @tool
    def ship(item: str, quantity: int = 1, mode: Literal["air", "sea"] = "sea",
             to: Address | None = None, context: ToolContext | None = None) -> str:
        """Ship an item.

        Args:
            item: what to ship.
            quantity: how many,
                at least one.
            mode: how to ship it.
        """
        return item

    schema = ship.openai_schema()
    assert schema["type"] == "function"
    fn = schema["function"]
    assert fn["name"] == "ship" and fn["description"] == "Ship an item."
    props = fn["parameters"]["properties"]
    assert props["item"] == {"type": "string", "description": "what to ship."}
    assert props["quantity"]["default"] == 1
    assert props["quantity"]["description"] == "how many, at least one."
    assert props["mode"]["enum"] == ["air", "sea"]
    assert fn["parameters"]["required"] == ["item"]
    assert fn["parameters"]["additionalProperties"] is False


def test_context_parameter_is_hidden_from_the_schema_and_passed_in() -> None:
    @tool
    def whoami(context: ToolContext) -> str:
        """Who am I."""
        context.state["seen"] = True
        return f"{context.invocation_id}/{context.tool_call_id}/{context.state['base']}"

    assert whoami.parameters["properties"] == {}
    ctx = make_context({"base": 7})
    assert asyncio.run(whoami.call({}, ctx)) == "inv/c1/7"
    assert ctx.state.delta == {"seen": True}
    assert dict(ctx.state) == {"seen": True, "base": 7}


def test_sync_tools_run_off_the_event_loop_thread_and_async_tools_on_it() -> None:
    loop_thread: list[int] = []

    @tool
    def blocking() -> int:
        """Sync."""
        return threading.get_ident()

    @tool
    async def native() -> int:
        """Async."""
        return threading.get_ident()

    async def go() -> tuple[int, int]:
        loop_thread.append(threading.get_ident())
        return await blocking.call({}, make_context()), await native.call({}, make_context())

    sync_thread, async_thread = asyncio.run(go())
    assert sync_thread != loop_thread[0]
    assert async_thread == loop_thread[0]


def test_arguments_are_validated_before_the_call() -> None:
    calls: list[int] = []

    @tool
    def double(n: int) -> int:
        """Double."""
        calls.append(n)
        return 2 * n

    with pytest.raises(ToolArgumentsError, match="not valid JSON"):
        double.parse_arguments("{")
    with pytest.raises(ToolArgumentsError, match="n: Input should be a valid integer"):
        double.parse_arguments('{"n": "many"}')
    with pytest.raises(ToolArgumentsError, match="extra: Extra inputs"):
        double.parse_arguments('{"n": 1, "extra": 2}')
    with pytest.raises(ToolArgumentsError, match="must be a JSON object, got list"):
        double.parse_arguments("[1]")
    with pytest.raises(ToolArgumentsError, match="n: Field required"):
        double.parse_arguments("")  # empty arguments mean {}
    assert calls == []
    assert double.parse_arguments({"n": "3"}) == {"n": 3}  # lax mode coerces numeric strings


def test_a_raising_tool_raises_tool_execution_error_with_the_cause() -> None:
    @tool
    def broken() -> None:
        """Broken."""
        raise KeyError("missing")

    with pytest.raises(ToolExecutionError, match="raised KeyError") as info:
        asyncio.run(broken.call({}, make_context()))
    assert isinstance(info.value.__cause__, KeyError)


def test_decorator_options_and_function_tool_constructor() -> None:
    @tool(name="custom-name", requires_confirmation=True, description="Custom.")
    def fn(x: int) -> int:
        return x

    assert isinstance(fn, FunctionTool)
    assert fn.name == "custom-name" and fn.requires_confirmation
    assert fn.openai_schema()["function"]["description"] == "Custom."
    plain = FunctionTool(fn.fn, name="plain")
    assert plain.name == "plain" and not plain.requires_confirmation


def test_bad_tool_definitions_are_refused() -> None:
    def untyped(x):  # type: ignore[no-untyped-def]
        return x

    with pytest.raises(InvalidRequestError, match="parameter 'x' has no type hint"):
        FunctionTool(untyped)

    def ok(x: int) -> int:
        return x

    with pytest.raises(InvalidRequestError, match="tool name 'has space' is invalid"):
        FunctionTool(ok, name="has space")


def test_tool_state_cannot_delete_keys() -> None:
    ctx = make_context({"k": 1})
    with pytest.raises(TypeError, match="set the key to None"):
        del ctx.state["k"]
