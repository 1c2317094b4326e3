"""Plugin scopes (runner_core.plugins): around the run, each agent run, model call and tool call;
exited exactly once, with what ended the step, in the context they entered."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from runner_core import (
    BaseAgent,
    InvocationContext,
    LLMAgent,
    ModelRequest,
    Plugin,
    Runner,
    SequentialAgent,
    ToolCall,
    tool,
)
from runner_core.testing import FakeModel

CURRENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("current", default=None)


@tool
def lookup(city: str) -> str:
    """Look a city up.

    Args:
        city: the city.
    """
    if city == "Atlantis":
        raise ValueError("no such city")
    return f"{city}: 3 C"


class Recorder(Plugin):
    """Logs each scope's entry and exit (with what it exited with) and its parent scope."""

    name = "recorder"

    def __init__(self) -> None:
        self.log: list[tuple[str, str, str | None, str | None]] = []
        self.outcomes: list[str] = []
        self.model_called = asyncio.Event()

    @asynccontextmanager
    async def _scope(self, label: str) -> AsyncIterator[None]:
        parent = CURRENT.get()
        token = CURRENT.set(label)
        self.log.append(("enter", label, parent, None))
        try:
            yield
        except BaseException as exc:
            self.log.append(("exit", label, parent, type(exc).__name__))
            raise
        else:
            self.log.append(("exit", label, parent, None))
        finally:
            CURRENT.reset(token)

    def run_scope(self, ctx: InvocationContext) -> Any:
        @asynccontextmanager
        async def scope() -> AsyncIterator[None]:
            async with self._scope("run"):
                yield
            self.outcomes.append(ctx.outcome.status)

        return scope()

    def agent_scope(self, ctx: InvocationContext, agent: BaseAgent) -> Any:
        return self._scope(f"agent {agent.name}")

    def model_scope(self, ctx: InvocationContext, request: ModelRequest) -> Any:
        self.model_called.set()
        return self._scope("model")

    def tool_scope(self, ctx: InvocationContext, call: ToolCall) -> Any:
        return self._scope(f"tool {call.id}")


async def test_scopes_nest_run_agent_model_tool_and_see_tool_errors() -> None:
    # Given a model that calls one tool that works and one that fails, then answers
    model = FakeModel()
    model.add_tool_calls(
        [("c1", "lookup", {"city": "Oslo"}), ("c2", "lookup", {"city": "Atlantis"})]
    )
    model.add_text("Oslo is cold.")
    recorder = Recorder()
    agent = LLMAgent("weather", model=model, tools=[lookup])

    # When it runs
    async with Runner("app", agent, plugins=[recorder]) as runner:
        completion = await runner.run("u", "s", "Weather?").completion()

    # Then every scope is entered under its parent and exited once; the failed call's scope
    # exited with its ToolError, and the run's scope saw how the run ended
    assert completion.status == "completed"
    entered = [(label, parent) for kind, label, parent, _ in recorder.log if kind == "enter"]
    assert entered == [
        ("run", None),
        ("agent weather", "run"),
        ("model", "agent weather"),
        ("tool c1", "agent weather"),
        ("tool c2", "agent weather"),
        ("model", "agent weather"),
    ]
    exits = {label: error for kind, label, _, error in recorder.log if kind == "exit"}
    assert exits["tool c1"] is None
    assert exits["tool c2"] == "ToolExecutionError"
    assert exits["run"] is None
    assert [kind for kind, *_ in recorder.log].count("exit") == len(entered)
    assert recorder.outcomes == ["completed"]


async def test_a_model_error_exits_the_model_scope_with_it_and_the_run_ends_failed() -> None:
    model = FakeModel()
    model.add_error(500, "boom")
    recorder = Recorder()
    async with Runner("app", LLMAgent("a", model=model), plugins=[recorder]) as runner:
        completion = await runner.run("u", "s", "hi").completion()

    assert completion.status == "failed"
    exits = {label: error for kind, label, _, error in recorder.log if kind == "exit"}
    assert exits["model"] == "ModelHTTPError"
    assert recorder.outcomes == ["failed"]


async def test_sub_agents_nest_under_their_workflow_agent() -> None:
    model = FakeModel()
    model.add_text("one")
    model.add_text("two")
    recorder = Recorder()
    tree = SequentialAgent(
        "pipeline",
        sub_agents=[LLMAgent("first", model=model), LLMAgent("second", model=model)],
    )
    async with Runner("app", tree, plugins=[recorder]) as runner:
        await runner.run("u", "s", "go").completion()

    agents = [
        (label, parent)
        for kind, label, parent, _ in recorder.log
        if kind == "enter" and label.startswith("agent")
    ]
    assert agents == [
        ("agent pipeline", "run"),
        ("agent first", "agent pipeline"),
        ("agent second", "agent pipeline"),
    ]


async def test_a_cancelled_run_exits_its_scopes_with_the_cancelled_outcome() -> None:
    model = FakeModel()
    model.add_hang()
    recorder = Recorder()
    async with Runner("app", LLMAgent("a", model=model), plugins=[recorder]) as runner:
        stream = runner.run("u", "s", "hi")
        first = asyncio.ensure_future(stream.completion())
        await recorder.model_called.wait()
        stream.cancel()
        completion = await first

    assert completion.status == "cancelled"
    exits = {label: error for kind, label, _, error in recorder.log if kind == "exit"}
    assert exits["model"] == "CancelledError"
    assert recorder.outcomes == ["cancelled"]


async def test_a_scope_that_is_not_a_context_manager_fails_the_run_naming_it() -> None:
    class Broken(Plugin):
        name = "broken"

        def model_scope(self, ctx: InvocationContext, request: ModelRequest) -> Any:
            return "not a scope"

    model = FakeModel()
    model.add_text("hi")
    async with Runner("app", LLMAgent("a", model=model), plugins=[Broken()]) as runner:
        completion = await runner.run("u", "s", "hi").completion()

    assert completion.status == "failed"
    assert completion.error is not None
    assert completion.error.type == "callback_error"
    assert "plugin 'broken' model_scope" in completion.error.message


async def test_a_scope_failing_on_the_way_out_fails_the_run() -> None:
    class FailsOnExit(Plugin):
        name = "fails-on-exit"

        def run_scope(self, ctx: InvocationContext) -> Any:
            @asynccontextmanager
            async def scope() -> AsyncIterator[None]:
                yield
                raise RuntimeError("exporter down")

            return scope()

    model = FakeModel()
    model.add_text("hi")
    async with Runner("app", LLMAgent("a", model=model), plugins=[FailsOnExit()]) as runner:
        completion = await runner.run("u", "s", "hi").completion()

    assert completion.status == "failed"
    assert completion.error is not None
    assert "run_scope raised RuntimeError: exporter down" in completion.error.message
