"""The runtime's extension contract (issue 14), through the public API, in process.

Custom agents, callbacks, plugins, guardrails, per-run options, ``temp:`` state, structured
output, single call mode and the construction checks; driven by the in-process FakeModel and
the in-memory session store. Every run is awaited under a deadline, so a run that hangs fails
its test instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pydantic import BaseModel

from runner_core import (
    BaseAgent,
    Event,
    Guardrail,
    InMemorySessionService,
    InvalidRequestError,
    InvocationContext,
    LLMAgent,
    Message,
    ModelPrice,
    ModelRequest,
    ModelResponse,
    Plugin,
    RunConfig,
    Runner,
    RunOutcome,
    Summarizer,
    ToolCall,
    ToolContext,
    Usage,
    tool,
)
from runner_core.testing import FakeModel

#: Long enough for any run here; short enough that a hang fails fast.
RUN_DEADLINE_S = 10.0


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


@pytest.fixture
async def service() -> AsyncIterator[InMemorySessionService]:
    svc = InMemorySessionService()
    yield svc
    await svc.close()


@tool
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first addend.
        b: the second addend.
    """
    return a + b


def make_runner(
    model: FakeModel,
    service: InMemorySessionService,
    *,
    tools: list[Any] | None = None,
    plugins: list[Plugin] | None = None,
    **agent_options: Any,
) -> Runner:
    agent = LLMAgent(
        "helper",
        model=model,
        instruction="Be brief.",
        tools=tools if tools is not None else [add],
        **agent_options,
    )
    return Runner("demo", agent, session_service=service, plugins=plugins or [])


async def run_all(runner: Runner, message: str = "hi", **options: Any) -> list[Event]:
    """Every event of one run in session ``s1``; fails (instead of hanging) past the deadline."""

    async def collect() -> list[Event]:
        return [event async for event in runner.run("alice", "s1", message, **options)]

    events = await asyncio.wait_for(collect(), RUN_DEADLINE_S)
    assert events[-1].is_runner_completion()
    return events


def completion(events: list[Event]) -> Any:
    assert sum(e.is_runner_completion() for e in events) == 1
    return events[-1]


def error_of(events: list[Event]) -> Any:
    errors = [e for e in events if e.type == "error"]
    assert len(errors) == 1, [e.type for e in events]
    return errors[0]


async def stored_events(service: InMemorySessionService) -> list[Event]:
    session = await service.get_session("demo", "alice", "s1")
    assert session is not None
    return list(session.events)


async def session_state(service: InMemorySessionService) -> dict[str, Any]:
    session = await service.get_session("demo", "alice", "s1")
    assert session is not None
    return dict(session.state)


# --- custom agents -------------------------------------------------------------------------


class EchoAgent(BaseAgent):
    """Answers with the user's text; no model."""

    async def run(self, ctx: InvocationContext) -> AsyncIterator[Event]:
        user_text = ctx.session.events[-1].message.text
        answer = f"echo: {user_text}"
        yield ctx.message_event(self.name, Message.assistant(answer))
        ctx.outcome = RunOutcome(status="completed", final_text=answer)


class BrokenAgent(BaseAgent):
    """Says something, then raises."""

    async def run(self, ctx: InvocationContext) -> AsyncIterator[Event]:
        yield ctx.message_event(self.name, Message.assistant("working on it"))
        raise RuntimeError("the custom agent broke")


async def test_custom_agent_runs_and_completes(service: InMemorySessionService) -> None:
    # Given a BaseAgent subclass that yields a message and sets the outcome
    runner = Runner("demo", EchoAgent("echo"), session_service=service)
    # When it runs
    events = await run_all(runner, "ping")
    # Then its message is handed out and stored, and the run completes with its outcome
    assert [e.type for e in events] == ["message", "message", "runner.completion"]
    done = completion(events)
    assert done.status == "completed"
    assert done.final_text == "echo: ping"
    assert [e.message.text for e in await stored_events(service)] == ["ping", "echo: ping"]


async def test_custom_agent_that_raises_ends_failed_and_the_stream_ends(
    service: InMemorySessionService,
) -> None:
    # Given a custom agent that raises mid-run
    runner = Runner("demo", BrokenAgent("broken"), session_service=service)
    # When it runs (run_all fails rather than hangs if the stream never ends)
    events = await run_all(runner)
    # Then what it said is kept, then an error event and a failed completion end the stream
    assert [e.type for e in events] == ["message", "message", "error", "runner.completion"]
    error = error_of(events).error
    assert error.type == "internal_error"
    assert "the custom agent broke" in error.message
    assert completion(events).status == "failed"
    assert completion(events).error == error


async def test_custom_agent_needs_no_model_attribute(service: InMemorySessionService) -> None:
    # Given a custom agent class that never declares a model
    agent = EchoAgent("echo")
    assert agent.model is None
    runner = Runner("demo", agent, session_service=service)
    # When it runs, Then it completes, with no cost (there is no model to price)
    done = completion(await run_all(runner))
    assert done.status == "completed"
    assert done.cost is None


@pytest.mark.parametrize("agent", [None, object()], ids=["None", "object"])
def test_runner_refuses_what_is_not_an_agent(agent: Any) -> None:
    with pytest.raises(InvalidRequestError, match=r"needs an agent .*BaseAgent.*, got"):
        Runner("demo", agent)


def test_llm_agent_refuses_a_missing_model() -> None:
    with pytest.raises(InvalidRequestError, match=r"LLMAgent 'a' needs a model .*got NoneType"):
        LLMAgent("a", model=None)  # type: ignore[arg-type]


# --- agent callbacks -----------------------------------------------------------------------


async def test_before_model_callback_changes_the_request(
    model: FakeModel, service: InMemorySessionService
) -> None:
    # Given a callback that appends a system message to every request
    def add_policy(ctx: InvocationContext, request: ModelRequest) -> None:
        request.messages.append(Message.system("Answer in French."))

    model.add_text("Bonjour")
    runner = make_runner(model, service, before_model_callback=add_policy)
    # When the agent runs
    await run_all(runner)
    # Then the model received the changed request
    assert model.requests[0]["messages"][-1] == {"role": "system", "content": "Answer in French."}


async def test_before_model_callback_answers_instead_of_the_model(
    model: FakeModel, service: InMemorySessionService
) -> None:
    # Given a callback that answers itself
    def cached(ctx: InvocationContext, request: ModelRequest) -> ModelResponse:
        return ModelResponse(message=Message.assistant("from the cache"), usage=Usage())

    runner = make_runner(model, service, before_model_callback=cached)
    # When the agent runs
    events = await run_all(runner)
    # Then the model is never called and the callback's answer is the run's
    assert model.requests == []
    assert completion(events).final_text == "from the cache"
    assert (await stored_events(service))[-1].message.text == "from the cache"


async def test_after_model_callback_replaces_the_response(
    model: FakeModel, service: InMemorySessionService
) -> None:
    def rewrite(ctx: InvocationContext, response: ModelResponse) -> ModelResponse:
        return ModelResponse(message=Message.assistant("rewritten"), usage=response.usage)

    model.add_text("original")
    runner = make_runner(model, service, after_model_callback=rewrite, generation=None)
    events = await run_all(runner, run_config={"streaming": False})
    assert completion(events).final_text == "rewritten"
    assert (await stored_events(service))[-1].message.text == "rewritten"


async def test_before_tool_callback_changes_the_arguments(
    model: FakeModel, service: InMemorySessionService
) -> None:
    def double_a(ctx: InvocationContext, call: ToolCall, args: dict[str, Any]) -> None:
        args["a"] *= 2

    model.add_tool_calls([("call_1", "add", {"a": 2, "b": 3})])
    model.add_text("done")
    runner = make_runner(model, service, before_tool_callback=double_a)
    await run_all(runner)
    assert model.requests[1]["messages"][-1]["content"] == "7"


async def test_before_tool_callback_skips_the_tool(
    model: FakeModel, service: InMemorySessionService
) -> None:
    # Given a tool that records its calls, and a callback that answers for it
    calls: list[int] = []

    @tool
    def lookup(order: int) -> str:
        """Look an order up.

        Args:
            order: the order number.
        """
        calls.append(order)
        return "from the tool"

    def from_cache(ctx: InvocationContext, call: ToolCall, args: dict[str, Any]) -> str:
        return "from the cache"

    model.add_tool_calls([("call_1", "lookup", {"order": 7})])
    model.add_text("done")
    runner = make_runner(model, service, tools=[lookup], before_tool_callback=from_cache)
    # When the model calls the tool
    events = await run_all(runner)
    # Then the tool never ran and its result is the callback's
    assert calls == []
    result = next(e for e in events if e.type == "tool.result")
    assert result.message.content == "from the cache"
    assert model.requests[1]["messages"][-1]["content"] == "from the cache"


async def test_after_tool_callback_replaces_the_result(
    model: FakeModel, service: InMemorySessionService
) -> None:
    def redact(ctx: InvocationContext, call: ToolCall, args: dict[str, Any], result: str) -> str:
        return f"[{call.function.name} said {result}]"

    model.add_tool_calls([("call_1", "add", {"a": 2, "b": 3})])
    model.add_text("done")
    runner = make_runner(model, service, after_tool_callback=redact)
    events = await run_all(runner)
    result = next(e for e in events if e.type == "tool.result")
    assert result.message.content == "[add said 5]"
    assert model.requests[1]["messages"][-1]["content"] == "[add said 5]"


async def test_sync_and_async_callbacks_both_run(
    model: FakeModel, service: InMemorySessionService
) -> None:
    seen: list[str] = []

    def sync_hook(ctx: InvocationContext, request: ModelRequest) -> None:
        seen.append("sync")

    async def async_hook(ctx: InvocationContext, request: ModelRequest) -> None:
        await asyncio.sleep(0)
        seen.append("async")

    model.add_text("ok")
    runner = make_runner(model, service, before_model_callback=[sync_hook, async_hook])
    events = await run_all(runner)
    assert seen == ["sync", "async"]
    assert completion(events).status == "completed"


# --- plugins -------------------------------------------------------------------------------


class Recorder(Plugin):
    """Records which of its hooks ran, under its name."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def before_run(self, ctx: InvocationContext) -> None:
        self.log.append(f"{self.name}.before_run")

    async def after_run(self, ctx: InvocationContext, outcome: RunOutcome) -> None:
        self.log.append(f"{self.name}.after_run:{outcome.status}")

    async def on_event(self, ctx: InvocationContext, event: Event) -> None:
        self.log.append(f"{self.name}.on_event:{event.type}")

    async def before_model(self, ctx: InvocationContext, request: ModelRequest) -> None:
        self.log.append(f"{self.name}.before_model")

    async def after_model(self, ctx: InvocationContext, response: ModelResponse) -> None:
        self.log.append(f"{self.name}.after_model")

    async def before_tool(
        self, ctx: InvocationContext, call: ToolCall, args: dict[str, Any]
    ) -> None:
        self.log.append(f"{self.name}.before_tool")

    async def after_tool(
        self, ctx: InvocationContext, call: ToolCall, args: dict[str, Any], result: str
    ) -> None:
        self.log.append(f"{self.name}.after_tool")


async def test_plugins_run_first_in_order_then_the_agent_callbacks(
    model: FakeModel, service: InMemorySessionService
) -> None:
    # Given two plugins and an agent with its own callbacks, all recording their calls
    log: list[str] = []

    def agent_hook(step: str) -> Callable[..., None]:
        return lambda *args: log.append(f"agent.{step}")

    model.add_tool_calls([("call_1", "add", {"a": 1, "b": 1})])
    model.add_text("2")
    runner = make_runner(
        model,
        service,
        plugins=[Recorder("first", log), Recorder("second", log)],
        before_model_callback=agent_hook("before_model"),
        after_model_callback=agent_hook("after_model"),
        before_tool_callback=agent_hook("before_tool"),
        after_tool_callback=agent_hook("after_tool"),
    )
    # When a run calls the model, the tool, then the model again
    await run_all(runner, run_config={"streaming": False})
    # Then each step runs the plugins in the order given, then the agent's callback
    steps = [entry for entry in log if ".on_event" not in entry]
    model_turn = [
        "first.before_model",
        "second.before_model",
        "agent.before_model",
        "first.after_model",
        "second.after_model",
        "agent.after_model",
    ]
    assert steps == [
        "first.before_run", "second.before_run",
        *model_turn,
        "first.before_tool", "second.before_tool", "agent.before_tool",
        "first.after_tool", "second.after_tool", "agent.after_tool",
        *model_turn,
        "first.after_run:completed", "second.after_run:completed",
    ]  # fmt: skip


async def test_first_hook_with_an_answer_short_circuits_the_rest(
    model: FakeModel, service: InMemorySessionService
) -> None:
    # Given a plugin that answers for every tool, then a recording plugin and agent callback
    log: list[str] = []

    class Cache(Plugin):
        name = "cache"

        async def before_tool(
            self, ctx: InvocationContext, call: ToolCall, args: dict[str, Any]
        ) -> str:
            return "cached"

    model.add_tool_calls([("call_1", "add", {"a": 1, "b": 1})])
    model.add_text("done")
    runner = make_runner(
        model,
        service,
        plugins=[Cache(), Recorder("later", log)],
        before_tool_callback=lambda *args: log.append("agent.before_tool"),
    )
    # When the model calls the tool
    events = await run_all(runner)
    # Then the hooks after the one that answered never run, and its answer is the result
    assert "later.before_tool" not in log
    assert "agent.before_tool" not in log
    assert "later.after_tool" in log  # a different step: still runs
    assert next(e for e in events if e.type == "tool.result").message.content == "cached"


async def test_plugin_sees_every_event_and_the_run_around_them(
    model: FakeModel, service: InMemorySessionService
) -> None:
    log: list[str] = []
    model.add_text("hello")
    runner = make_runner(model, service, plugins=[Recorder("p", log)])
    events = await run_all(runner, run_config={"streaming": False})
    assert log[0] == "p.before_run"
    assert log[-1] == "p.after_run:completed"
    on_event = [entry.removeprefix("p.on_event:") for entry in log if "on_event" in entry]
    assert on_event == [e.type for e in events if not e.is_runner_completion()]


async def test_plugin_on_event_replaces_an_event_with_one_of_the_same_type(
    model: FakeModel, service: InMemorySessionService
) -> None:
    # Given a plugin that redacts the assistant's answers
    class Redact(Plugin):
        name = "redact"

        async def on_event(self, ctx: InvocationContext, event: Event) -> Event | None:
            if event.type == "message" and event.message.role == "assistant":
                return event.model_copy(update={"message": Message.assistant("[redacted]")})
            return None

    model.add_text("the secret")
    runner = make_runner(model, service, plugins=[Redact()])
    # When the agent answers
    events = await run_all(runner, run_config={"streaming": False})
    # Then what is handed out, stored and reported is the replacement
    assert [e.message.text for e in events if e.type == "message"] == ["hi", "[redacted]"]
    assert (await stored_events(service))[-1].message.text == "[redacted]"
    assert completion(events).final_text == "[redacted]"
    assert all("the secret" not in e.to_json() for e in events)


async def test_plugin_on_event_returning_another_type_fails_the_run(
    model: FakeModel, service: InMemorySessionService
) -> None:
    class Wrong(Plugin):
        name = "wrong"

        async def on_event(self, ctx: InvocationContext, event: Event) -> Any:
            if event.type == "message" and event.message.role == "assistant":
                return {"type": "message"}
            return None

    model.add_text("hello")
    runner = make_runner(model, service, plugins=[Wrong()])
    events = await run_all(runner)
    error = error_of(events).error
    assert error.type == "callback_error"
    assert "plugin 'wrong' on_event" in error.message
    assert completion(events).status == "failed"


class Raises(Plugin):
    """Raises in one hook."""

    name = "raises"

    def __init__(self, hook: str) -> None:
        self.hook = hook

    def _maybe_raise(self, hook: str) -> None:
        if hook == self.hook:
            raise ValueError(f"{hook} failed")

    async def before_run(self, ctx: InvocationContext) -> None:
        self._maybe_raise("before_run")

    async def after_run(self, ctx: InvocationContext, outcome: RunOutcome) -> None:
        self._maybe_raise("after_run")

    async def on_event(self, ctx: InvocationContext, event: Event) -> None:
        if event.type == "tool.result":
            self._maybe_raise("on_event")

    async def before_model(self, ctx: InvocationContext, request: ModelRequest) -> None:
        self._maybe_raise("before_model")

    async def after_model(self, ctx: InvocationContext, response: ModelResponse) -> None:
        self._maybe_raise("after_model")

    async def before_tool(
        self, ctx: InvocationContext, call: ToolCall, args: dict[str, Any]
    ) -> None:
        self._maybe_raise("before_tool")

    async def after_tool(
        self, ctx: InvocationContext, call: ToolCall, args: dict[str, Any], result: str
    ) -> None:
        self._maybe_raise("after_tool")


@pytest.mark.parametrize(
    "hook",
    ["before_run", "after_run", "on_event", "before_model", "after_model", "before_tool",
     "after_tool"],
)  # fmt: skip
async def test_an_exception_in_a_plugin_hook_fails_the_run(
    model: FakeModel, service: InMemorySessionService, hook: str
) -> None:
    model.add_tool_calls([("call_1", "add", {"a": 1, "b": 1})])
    model.add_text("2")
    runner = make_runner(model, service, plugins=[Raises(hook)])
    events = await run_all(runner)
    error = error_of(events).error
    assert error.type == "callback_error"
    assert f"plugin 'raises' {hook} raised ValueError: {hook} failed" in error.message
    assert completion(events).status == "failed"
    assert completion(events).error == error


@pytest.mark.parametrize("callback", ["before_model", "after_model", "before_tool", "after_tool"])
async def test_an_exception_in_an_agent_callback_fails_the_run(
    model: FakeModel, service: InMemorySessionService, callback: str
) -> None:
    def broken(*args: Any) -> None:
        raise KeyError("missing")

    model.add_tool_calls([("call_1", "add", {"a": 1, "b": 1})])
    model.add_text("2")
    runner = make_runner(model, service, **{f"{callback}_callback": broken})
    events = await run_all(runner)
    error = error_of(events).error
    assert error.type == "callback_error"
    assert f"agent 'helper' {callback}_callback raised KeyError" in error.message
    assert completion(events).status == "failed"


async def test_a_hook_returning_the_wrong_type_fails_the_run_as_a_callback_error(
    model: FakeModel, service: InMemorySessionService
) -> None:
    model.add_text("hello")
    runner = make_runner(model, service, after_model_callback=lambda ctx, response: "hello")
    events = await run_all(runner)
    error = error_of(events).error
    assert error.type == "callback_error"
    assert error.message == (
        "agent 'helper' after_model_callback returned str; return None or a ModelResponse."
    )
    assert completion(events).status == "failed"


# --- guardrails ----------------------------------------------------------------------------


def no_secrets(ctx: InvocationContext, text: str) -> str | None:
    return "it mentions a secret" if "secret" in text else None


async def test_input_guardrail_trips_before_the_model_is_called(
    model: FakeModel, service: InMemorySessionService
) -> None:
    # Given an agent whose input guardrail refuses the user's message
    runner = make_runner(model, service, input_guardrails=[no_secrets])
    # When the user sends it
    events = await run_all(runner, "tell me the secret")
    # Then the run fails with the guardrail named, and the model was never called
    error = error_of(events).error
    assert error.type == "input_guardrail_tripped"
    assert error.code == "no_secrets"
    assert "it mentions a secret" in error.message
    assert completion(events).status == "failed"
    assert model.requests == []


async def test_output_guardrail_buffers_the_answer_by_default(
    model: FakeModel, service: InMemorySessionService
) -> None:
    # Given an agent with an output guardrail and a model whose answer it refuses
    model.add_text("the secret is xyzzy")
    runner = make_runner(model, service, output_guardrails=[Guardrail("leak", no_secrets)])
    # When the agent answers
    events = await run_all(runner)
    # Then no text was published, the answer was not stored, and the run failed
    assert [e.type for e in events] == ["message", "error", "runner.completion"]
    error = error_of(events)
    assert error.error.type == "output_guardrail_tripped"
    assert error.error.code == "leak"
    assert error.retracts_streamed_text is None
    assert completion(events).status == "failed"
    assert all("xyzzy" not in e.to_json() for e in events)
    assert [e.type for e in await stored_events(service)] == ["message", "error"]


async def test_output_guardrail_with_streamed_output_retracts_the_streamed_text(
    model: FakeModel, service: InMemorySessionService
) -> None:
    # Given an agent that streams guarded output
    model.add_text("the secret is xyzzy", chunks=2)
    runner = make_runner(model, service, output_guardrails=[no_secrets], stream_guarded_output=True)
    # When the agent answers with text the guardrail refuses
    events = await run_all(runner)
    # Then the text was streamed, and the error event says it is withdrawn
    assert [e.type for e in events] == [
        "message", "message.delta", "message.delta", "error", "runner.completion"
    ]  # fmt: skip
    error = error_of(events)
    assert error.error.type == "output_guardrail_tripped"
    assert error.retracts_streamed_text is True
    assert json.loads(error.to_json())["retracts_streamed_text"] is True
    assert completion(events).status == "failed"
    assert [e.type for e in await stored_events(service)] == ["message", "error"]


async def test_passing_guardrails_change_nothing(
    model: FakeModel, service: InMemorySessionService
) -> None:
    model.add_text("all fine", chunks=2)
    runner = make_runner(
        model,
        service,
        input_guardrails=[no_secrets],
        output_guardrails=[no_secrets],
        stream_guarded_output=True,
    )
    events = await run_all(runner)
    assert [e.type for e in events] == [
        "message", "message.delta", "message.delta", "message", "runner.completion"
    ]  # fmt: skip
    assert completion(events).status == "completed"
    assert completion(events).final_text == "all fine"


async def test_a_guardrail_that_raises_fails_the_run_as_a_callback_error(
    model: FakeModel, service: InMemorySessionService
) -> None:
    def broken(ctx: InvocationContext, text: str) -> None:
        raise RuntimeError("classifier down")

    runner = make_runner(model, service, input_guardrails=[broken])
    events = await run_all(runner)
    error = error_of(events).error
    assert error.type == "callback_error"
    assert "input guardrail 'broken' raised RuntimeError: classifier down" in error.message
    assert completion(events).status == "failed"


async def test_an_output_guardrail_that_raises_retracts_the_streamed_text(
    model: FakeModel, service: InMemorySessionService
) -> None:
    def broken(ctx: InvocationContext, text: str) -> None:
        raise RuntimeError("classifier down")

    model.add_text("an answer", chunks=2)
    runner = make_runner(model, service, output_guardrails=[broken], stream_guarded_output=True)
    events = await run_all(runner)
    error = error_of(events)
    assert error.error.type == "callback_error"
    assert "output guardrail 'broken' raised RuntimeError" in error.error.message
    assert error.retracts_streamed_text is True
    assert completion(events).status == "failed"
    assert [e.type for e in await stored_events(service)] == ["message", "error"]


# --- run options ---------------------------------------------------------------------------


async def test_run_config_streaming_off_sends_no_deltas(
    model: FakeModel, service: InMemorySessionService
) -> None:
    model.add_text("Hello there friend", chunks=3)
    runner = make_runner(model, service)
    events = await run_all(runner, run_config=RunConfig(streaming=False))
    assert [e.type for e in events] == ["message", "message", "runner.completion"]
    assert "stream" not in model.requests[0]


async def test_run_config_model_name_is_sent(
    model: FakeModel, service: InMemorySessionService
) -> None:
    model.add_text("ok")
    runner = make_runner(model, service)
    await run_all(runner, run_config={"model": "gpt-4o-mini"})
    assert model.requests[0]["model"] == "gpt-4o-mini"


async def test_run_config_generation_is_laid_over_the_agents(
    model: FakeModel, service: InMemorySessionService
) -> None:
    model.add_text("ok")
    runner = make_runner(model, service)
    await run_all(runner, run_config={"generation": {"temperature": 0.2}})
    assert model.requests[0]["temperature"] == 0.2


async def test_run_config_max_iterations_overrides_the_agents(
    model: FakeModel, service: InMemorySessionService
) -> None:
    # Given an agent allowed 10 model calls, and a model that keeps calling tools
    model.set_default(None)
    for i in range(3):
        model.add_tool_calls([(f"call_{i}", "add", {"a": i, "b": 1})])
    runner = make_runner(model, service)
    # When a run allows only 2
    events = await run_all(runner, run_config={"max_iterations": 2})
    # Then it stops after 2 model calls
    assert len(model.requests) == 2
    assert error_of(events).error.type == "max_iterations_exceeded"
    assert completion(events).status == "failed"


async def test_runtime_state_is_read_by_tools_and_callbacks_and_never_stored_or_published(
    model: FakeModel, service: InMemorySessionService
) -> None:
    # Given a tool and a callback that read the run's runtime state
    seen: dict[str, Any] = {}

    @tool
    def whoami(context: ToolContext) -> str:
        """Who is calling."""
        seen["tool"] = context.runtime_state["api_token"]
        return "you are alice"

    def peek(ctx: InvocationContext, request: ModelRequest) -> None:
        seen["callback"] = ctx.runtime_state["api_token"]

    model.add_tool_calls([("call_1", "whoami", {})])
    model.add_text("done")
    runner = make_runner(model, service, tools=[whoami], before_model_callback=peek)
    # When a run passes a token in runtime_state
    events = await run_all(runner, run_config={"runtime_state": {"api_token": "tok-5f3a"}})
    # Then both read it, and it is in no event, no stored event and not in the state
    assert seen == {"tool": "tok-5f3a", "callback": "tok-5f3a"}
    assert completion(events).status == "completed"
    assert all("tok-5f3a" not in e.to_json() for e in events)
    assert all("tok-5f3a" not in e.to_json() for e in await stored_events(service))
    assert "tok-5f3a" not in json.dumps(await session_state(service))
    assert all("tok-5f3a" not in json.dumps(request) for request in model.requests)


@pytest.mark.parametrize(
    ("run_config", "named"),
    [
        ({"stream_mode": "off"}, "run_config: stream_mode"),
        ({"generation": {"temperature": 5}}, "run_config.generation: temperature"),
        ({"generation": {"temprature": 0.5}}, "run_config.generation: temprature"),
        ({"max_iterations": 0}, "run_config: max_iterations"),
        ({"generation": {"stream": False}}, "run_config.streaming"),
        ("fast", "run_config must be a RunConfig or a JSON object"),
    ],
)
async def test_invalid_run_config_is_refused_naming_the_field(
    model: FakeModel, service: InMemorySessionService, run_config: Any, named: str
) -> None:
    runner = make_runner(model, service)
    with pytest.raises(InvalidRequestError) as raised:
        runner.run("alice", "s1", "hi", run_config=run_config)
    assert named in str(raised.value)
    assert model.requests == []


async def test_run_config_applies_to_one_run_only(
    model: FakeModel, service: InMemorySessionService
) -> None:
    model.add_text("first")
    model.add_text("second")
    runner = make_runner(model, service)
    await run_all(runner, run_config={"model": "other", "generation": {"temperature": 0}})
    await run_all(runner)
    assert model.requests[1]["model"] == "scripted"
    assert "temperature" not in model.requests[1]


# --- temp: state ---------------------------------------------------------------------------


async def test_temp_state_lives_for_the_run_only(
    model: FakeModel, service: InMemorySessionService
) -> None:
    # Given one tool that writes a temp: key (and a session key), and one that reads it
    read: list[Any] = []

    @tool
    def remember(context: ToolContext) -> str:
        """Remember a scratch value."""
        context.state["temp:scratch"] = "scratch-7c1d"
        context.state["visits"] = 1
        return "remembered"

    @tool
    def recall(context: ToolContext) -> str:
        """Read the scratch value."""
        read.append(context.state.get("temp:scratch"))
        return "recalled"

    model.add_tool_calls([("call_1", "remember", {})])
    model.add_tool_calls([("call_2", "recall", {})])
    model.add_text("done")
    runner = make_runner(model, service, tools=[remember, recall])
    # When a run calls one, then the other
    events = await run_all(runner)
    # Then the later tool saw the value, but no event, stored event or state holds it
    assert read == ["scratch-7c1d"]
    assert completion(events).status == "completed"
    assert all("scratch-7c1d" not in e.to_json() for e in events)
    stored = await stored_events(service)
    assert all("scratch-7c1d" not in e.to_json() for e in stored)
    assert await session_state(service) == {"visits": 1}
    # And the session key it wrote beside it is kept
    first_result = next(e for e in stored if e.type == "tool.result")
    assert first_result.state_delta == {"visits": 1}


async def test_temp_state_does_not_outlive_the_run(
    model: FakeModel, service: InMemorySessionService
) -> None:
    read: list[Any] = []

    @tool
    def remember(context: ToolContext) -> str:
        """Remember a scratch value."""
        context.state["temp:scratch"] = "x"
        return "remembered"

    @tool
    def recall(context: ToolContext) -> str:
        """Read the scratch value."""
        read.append(context.state.get("temp:scratch"))
        return "recalled"

    model.add_tool_calls([("call_1", "remember", {})])
    model.add_text("ok")
    model.add_tool_calls([("call_2", "recall", {})])
    model.add_text("ok")
    runner = make_runner(model, service, tools=[remember, recall])
    await run_all(runner)
    await run_all(runner, "again")
    assert read == [None]


# --- structured output ---------------------------------------------------------------------


class Weather(BaseModel):
    city: str
    celsius: float


async def test_output_schema_asks_the_model_for_json_of_it(
    model: FakeModel, service: InMemorySessionService
) -> None:
    model.add_text('{"city": "Oslo", "celsius": 3.5}')
    runner = make_runner(model, service, output_schema=Weather)
    await run_all(runner)
    response_format = model.requests[0]["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["name"] == "Weather"
    assert response_format["json_schema"]["schema"] == Weather.model_json_schema()


async def test_valid_structured_output_is_on_the_completion(
    model: FakeModel, service: InMemorySessionService
) -> None:
    model.add_text('{"city": "Oslo", "celsius": 3.5}')
    runner = make_runner(model, service, output_schema=Weather)
    events = await run_all(runner)
    done = completion(events)
    assert done.status == "completed"
    assert done.output == {"city": "Oslo", "celsius": 3.5}
    assert json.loads(done.to_json())["output"] == {"city": "Oslo", "celsius": 3.5}


async def test_invalid_structured_output_fails_the_run(
    model: FakeModel, service: InMemorySessionService
) -> None:
    model.add_text('{"city": "Oslo"}')
    runner = make_runner(model, service, output_schema=Weather)
    events = await run_all(runner)
    error = error_of(events).error
    assert error.type == "invalid_output"
    assert "Weather" in error.message and "celsius" in error.message
    assert error_of(events).retracts_streamed_text is True  # its JSON was streamed
    done = completion(events)
    assert done.status == "failed"
    assert done.output is None
    assert [e.type for e in await stored_events(service)] == ["message", "error"]


def test_output_schema_must_be_a_pydantic_model(model: FakeModel) -> None:
    with pytest.raises(InvalidRequestError, match="output_schema must be a pydantic model"):
        LLMAgent("a", model=model, output_schema=dict)  # type: ignore[arg-type]


# --- single call mode ----------------------------------------------------------------------


async def test_call_makes_one_model_call_without_tools() -> None:
    # Given an agent with tools and a priced model
    price = ModelPrice(prompt_per_million=1.0, completion_per_million=2.0)
    model = FakeModel(price=price)
    model.add_text("Paris is the capital of France.")
    agent = LLMAgent("helper", model=model, instruction="Be brief.", tools=[add])
    # When it is called once
    result = await asyncio.wait_for(agent.call("Capital of France?"), RUN_DEADLINE_S)
    # Then one request went out, without tools, and the answer comes with usage and cost
    assert len(model.requests) == 1
    assert "tools" not in model.requests[0]
    assert model.requests[0]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
    ]
    assert result.text == "Paris is the capital of France."
    assert result.usage.model_calls == 1
    assert result.usage.total_tokens > 0
    assert result.cost == price.cost(result.usage)
    assert result.cost is not None and result.cost > 0


async def test_call_takes_a_run_config() -> None:
    model = FakeModel()
    model.add_text("ok")
    agent = LLMAgent("helper", model=model)
    await agent.call("hi", run_config={"model": "small", "generation": {"temperature": 0}})
    assert model.requests[0]["model"] == "small"
    assert model.requests[0]["temperature"] == 0


# --- end_invocation ------------------------------------------------------------------------


async def test_end_invocation_from_a_tool_stops_the_run(
    model: FakeModel, service: InMemorySessionService
) -> None:
    # Given a tool that ends the invocation
    @tool
    def hand_off(context: ToolContext) -> str:
        """Hand the conversation to a person."""
        context.end_invocation()
        return "handed off"

    model.add_tool_calls([("call_1", "hand_off", {})])
    model.add_text("never asked for")
    runner = make_runner(model, service, tools=[hand_off])
    # When the model calls it
    events = await run_all(runner)
    # Then the tool's result is recorded, the model is not called again, and the run completes
    assert len(model.requests) == 1
    assert [e.type for e in events][-2:] == ["tool.result", "runner.completion"]
    assert completion(events).status == "completed"


async def test_end_invocation_keeps_the_results_of_the_other_calls_of_the_turn(
    model: FakeModel, service: InMemorySessionService
) -> None:
    # Given a turn of two tool calls, the first of which ends the invocation
    @tool
    def hand_off(context: ToolContext) -> str:
        """Hand the conversation to a person."""
        context.end_invocation()
        return "handed off"

    model.add_tool_calls([("call_1", "hand_off", {}), ("call_2", "add", {"a": 1, "b": 2})])
    runner = make_runner(model, service, tools=[hand_off, add])
    # When the model makes them
    events = await run_all(runner)
    # Then both results are stored: the session has no call left without a result
    results = [e for e in await stored_events(service) if e.type == "tool.result"]
    assert [e.message.tool_call_id for e in results] == ["call_1", "call_2"]
    assert completion(events).status == "completed"
    assert len(model.requests) == 1


async def test_end_invocation_from_a_model_callback_makes_no_tool_calls(
    model: FakeModel, service: InMemorySessionService
) -> None:
    # Given a callback that ends the run after the model's turn
    calls: list[int] = []

    @tool
    def record(n: int) -> str:
        """Record a number.

        Args:
            n: the number.
        """
        calls.append(n)
        return "recorded"

    def stop_here(ctx: InvocationContext, response: ModelResponse) -> None:
        ctx.end_invocation()

    model.add_tool_calls([("call_1", "record", {"n": 1})])
    runner = make_runner(model, service, tools=[record], after_model_callback=stop_here)
    # When the model asks for a tool
    events = await run_all(runner)
    # Then its turn is recorded, the tool is not called, and the run completes
    assert calls == []
    assert [e.type for e in events][-2:] == ["message", "runner.completion"]
    assert completion(events).status == "completed"


# --- the rest of the contract --------------------------------------------------------------


async def test_run_sync_inside_a_running_loop_says_what_to_call(
    model: FakeModel, service: InMemorySessionService
) -> None:
    runner = make_runner(model, service)
    with pytest.raises(RuntimeError, match=r"await runner\.run\(.*\)\.completion\(\)"):
        runner.run_sync("alice", "s1", "hi")
    assert model.requests == []


def test_summarizer_must_be_a_summarizer(model: FakeModel) -> None:
    with pytest.raises(InvalidRequestError, match=r"summarizer must be a runner_core\.Summarizer"):
        LLMAgent("a", model=model, summarizer=object())  # type: ignore[arg-type]
    agent = LLMAgent("a", model=model, summarizer=Summarizer(model=model))
    assert isinstance(agent.summarizer, Summarizer)


def test_the_extension_names_are_exported() -> None:
    import runner_core

    names = {
        "BaseAgent",
        "Guardrail",
        "InMemorySessionService",
        "InvocationContext",
        "Plugin",
        "RunConfig",
        "RunOutcome",
        "CallbackError",
        "GuardrailTripped",
        "CallResult",
    }
    assert names <= set(runner_core.__all__)
    assert all(hasattr(runner_core, name) for name in names)


@pytest.mark.parametrize("plugin", [object(), lambda ctx: None], ids=["object", "function"])
def test_runner_refuses_what_is_not_a_plugin(model: FakeModel, plugin: Any) -> None:
    with pytest.raises(InvalidRequestError, match=r"plugins must be runner_core\.Plugin"):
        Runner("demo", LLMAgent("a", model=model), plugins=[plugin])


def test_llm_agent_refuses_a_callback_that_is_not_callable(model: FakeModel) -> None:
    with pytest.raises(InvalidRequestError, match="before_model_callback must be a function"):
        LLMAgent("a", model=model, before_model_callback=["not callable"])  # type: ignore[list-item]


async def test_a_run_that_fails_mid_reply_retracts_the_text_it_streamed(
    model: FakeModel, service: InMemorySessionService
) -> None:
    # Given a model that streams part of its reply, then stalls past the run's deadline
    model.add_text("one two three four", chunk_delay=0.2)
    runner = make_runner(model, service)
    # When the run times out with text half streamed
    events = await run_all(runner, timeout_s=0.3)
    # Then the error that ends it withdraws that text, and only then
    kinds = [e.type for e in events]
    assert "message.delta" in kinds and kinds[-2:] == ["error", "runner.completion"]
    assert error_of(events).retracts_streamed_text is True
    assert events[-1].type == "runner.completion" and events[-1].status == "timeout"


async def test_an_error_after_a_complete_message_retracts_nothing(
    model: FakeModel, service: InMemorySessionService
) -> None:
    model.add_error(500)
    events = await run_all(make_runner(model, service))
    assert error_of(events).retracts_streamed_text is None


async def test_a_redelivered_run_whose_answer_was_stored_still_reports_its_output(
    model: FakeModel, service: InMemorySessionService
) -> None:
    # Given a run whose structured answer was stored (its worker died before the completion)
    model.add_text('{"city": "Oslo", "celsius": -3.5}')
    runner = make_runner(model, service, output_schema=Weather)
    first = await run_all(runner, invocation_id="inv-redelivered")
    assert first[-1].type == "runner.completion" and first[-1].output is not None
    # When the same invocation runs again (a redelivery): it finds its answer in the session
    again = await run_all(runner, invocation_id="inv-redelivered")
    # Then it completes with the same parsed output, without calling the model again
    assert again[-1].type == "runner.completion" and again[-1].status == "completed"
    assert again[-1].output == {"city": "Oslo", "celsius": -3.5}
    assert len(model.requests) == 1


async def test_a_hook_that_fails_one_call_stops_the_other_calls_of_its_turn(
    model: FakeModel, service: InMemorySessionService
) -> None:
    finished: list[str] = []

    async def slow(x: int) -> str:
        """Takes its time."""
        await asyncio.sleep(2)
        finished.append("slow")
        return "late"

    def boom(x: int) -> str:
        """Never runs: its hook fails first."""
        return "never"

    def refuse_boom(ctx: Any, call: Any, args: dict[str, Any]) -> None:
        if call.function.name == "boom":
            raise RuntimeError("policy says no")

    model.add_tool_calls([("c1", "slow", {"x": 1}), ("c2", "boom", {"x": 2})])
    runner = make_runner(model, service, tools=[slow, boom], before_tool_callback=refuse_boom)
    events = await run_all(runner)
    assert error_of(events).error.type == "callback_error"
    assert events[-1].type == "runner.completion" and events[-1].status == "failed"
    await asyncio.sleep(2.2)
    assert finished == []  # the sibling call was cancelled with the run, not left running
