"""runner_core.telemetry in process: spans and metrics read back from the SDK's in-memory
exporters (no collector, no network)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from runner_core import LLMAgent, ParallelAgent, Runner, tool
from runner_core.telemetry import Telemetry
from runner_core.testing import FakeModel


@tool
def lookup(city: str) -> str:
    """Look a city up.

    Args:
        city: the city.
    """
    if city == "Atlantis":
        raise ValueError("no such city")
    return f"{city}: 3 C"


class Otel:
    """An SDK tracer and meter provider writing to memory, and what they hold."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def plugin(self, **options: Any) -> Telemetry:
        return Telemetry(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider, **options
        )

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def span(self, name: str) -> ReadableSpan:
        found = [span for span in self.spans() if span.name == name]
        assert len(found) == 1, [span.name for span in self.spans()]
        return found[0]

    def parent_name(self, span: ReadableSpan) -> str | None:
        if span.parent is None:
            return None
        by_id = {s.context.span_id: s for s in self.spans()}
        parent = by_id.get(span.parent.span_id)
        return parent.name if parent is not None else "<outside>"

    def points(self, metric: str) -> list[tuple[dict[str, Any], Any]]:
        data = self.reader.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data is not None else []:
            for scope in resource.scope_metrics:
                for item in scope.metrics:
                    if item.name == metric:
                        found += [(dict(p.attributes or {}), p) for p in item.data.data_points]
        return found


@pytest.fixture
def otel() -> Iterator[Otel]:
    providers = Otel()
    yield providers
    providers.tracer_provider.shutdown()
    providers.meter_provider.shutdown()


async def test_a_run_is_one_trace_of_run_agent_chat_and_tool_spans(otel: Otel) -> None:
    # Given an agent whose model calls a tool, then answers
    model = FakeModel("gpt-test")
    model.add_tool_calls([("call_1", "lookup", {"city": "Oslo"})], usage={"prompt_tokens": 7})
    model.add_text("Oslo is cold.", usage={"prompt_tokens": 11, "completion_tokens": 4})
    agent = LLMAgent("weather", model=model, tools=[lookup], description="Knows the weather.")

    # When it runs under a span of the calling code
    async with Runner("forecast", agent, plugins=[otel.plugin()]) as runner:
        caller = otel.tracer_provider.get_tracer("caller")
        with caller.start_as_current_span("handle request") as parent:
            completion = await runner.run("alice", "s1", "Weather in Oslo?").completion()

    # Then the spans form one tree under the caller's span
    spans = otel.spans()
    assert {span.context.trace_id for span in spans} == {parent.get_span_context().trace_id}
    assert completion.trace_id == format(parent.get_span_context().trace_id, "032x")
    run = otel.span("run forecast")
    agent_span = otel.span("invoke_agent weather")
    tool_span = otel.span("execute_tool lookup")
    chats = [span for span in spans if span.name == "chat gpt-test"]
    assert otel.parent_name(run) == "handle request"
    assert otel.parent_name(agent_span) == "run forecast"
    assert [otel.parent_name(chat) for chat in chats] == ["invoke_agent weather"] * 2
    assert otel.parent_name(tool_span) == "invoke_agent weather"

    # with the GenAI attributes (v1.36.0 by default) and the run's labels on each
    assert run.attributes is not None and agent_span.attributes is not None
    assert run.attributes["agent_runner.invocation_id"] == completion.invocation_id
    assert run.attributes["agent_runner.app_name"] == "forecast"
    assert run.attributes["user.id"] == "alice"
    assert run.attributes["gen_ai.conversation.id"] == "s1"
    assert run.attributes["agent_runner.run.status"] == "completed"
    assert agent_span.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert agent_span.attributes["gen_ai.agent.name"] == "weather"
    assert agent_span.attributes["gen_ai.agent.description"] == "Knows the weather."
    last = chats[-1]
    assert last.kind == SpanKind.CLIENT
    assert last.attributes is not None
    assert last.attributes["gen_ai.operation.name"] == "chat"
    assert last.attributes["gen_ai.system"] == "openai"
    assert "gen_ai.provider.name" not in last.attributes
    assert last.attributes["gen_ai.request.model"] == "gpt-test"
    assert last.attributes["gen_ai.usage.input_tokens"] == 11
    assert last.attributes["gen_ai.usage.output_tokens"] == 4
    assert last.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert last.attributes["gen_ai.conversation.id"] == "s1"
    assert tool_span.attributes is not None
    assert tool_span.attributes["gen_ai.tool.name"] == "lookup"
    assert tool_span.attributes["gen_ai.tool.call.id"] == "call_1"
    assert tool_span.attributes["gen_ai.operation.name"] == "execute_tool"
    assert all(span.status.status_code != StatusCode.ERROR for span in spans)

    # and no content is recorded unless asked for
    for span in spans:
        recorded = dict(span.attributes or {})
        assert not {
            "gen_ai.input.messages",
            "gen_ai.output.messages",
            "gen_ai.tool.call.arguments",
            "gen_ai.tool.call.result",
        } & set(recorded)
        assert not any("Oslo" in str(value) for value in recorded.values())


async def test_content_is_recorded_only_when_asked_for(otel: Otel) -> None:
    model = FakeModel("gpt-test")
    model.add_tool_calls([("call_1", "lookup", {"city": "Oslo"})])
    model.add_text("Oslo is cold.")
    agent = LLMAgent("weather", model=model, tools=[lookup])
    async with Runner("forecast", agent, plugins=[otel.plugin(capture_content=True)]) as runner:
        await runner.run("alice", "s1", "Weather in Oslo?").completion()

    tool_span = otel.span("execute_tool lookup")
    assert tool_span.attributes is not None
    assert tool_span.attributes["gen_ai.tool.call.arguments"] == '{"city": "Oslo"}'
    assert tool_span.attributes["gen_ai.tool.call.result"] == "Oslo: 3 C"
    last = [span for span in otel.spans() if span.name == "chat gpt-test"][-1]
    assert last.attributes is not None
    assert "Weather in Oslo?" in str(last.attributes["gen_ai.input.messages"])
    assert "Oslo is cold." in str(last.attributes["gen_ai.output.messages"])


async def test_a_failed_model_call_marks_its_span_agent_and_run_with_the_error(otel: Otel) -> None:
    model = FakeModel("gpt-test")
    model.add_error(503, "overloaded")
    async with Runner("forecast", LLMAgent("weather", model=model), plugins=[otel.plugin()]) as r:
        completion = await r.run("alice", "s1", "Weather?").completion()

    assert completion.status == "failed"
    assert completion.trace_id == format(otel.span("run forecast").context.trace_id, "032x")
    for name in ("chat gpt-test", "invoke_agent weather", "run forecast"):
        span = otel.span(name)
        assert span.status.status_code == StatusCode.ERROR, name
        assert span.attributes is not None
        assert span.attributes["error.type"] == "model_http_error", name
    durations = otel.points("gen_ai.client.operation.duration")
    assert [attrs.get("error.type") for attrs, _ in durations] == ["model_http_error"]
    runs = otel.points("agent_runner.run.duration")
    assert [attrs["agent_runner.run.status"] for attrs, _ in runs] == ["failed"]


async def test_a_failed_tool_call_is_an_error_span_and_counted(otel: Otel) -> None:
    model = FakeModel("gpt-test")
    model.add_tool_calls(
        [("call_1", "lookup", {"city": "Atlantis"}), ("call_2", "lookup", {"city": "Oslo"})]
    )
    model.add_text("Only Oslo.")
    agent = LLMAgent("weather", model=model, tools=[lookup])
    async with Runner("forecast", agent, plugins=[otel.plugin()]) as runner:
        completion = await runner.run("alice", "s1", "Weather?").completion()

    assert completion.status == "completed"  # the model read the error and went on
    tools = {
        span.attributes["gen_ai.tool.call.id"]: span
        for span in otel.spans()
        if span.name == "execute_tool lookup" and span.attributes is not None
    }
    assert tools["call_1"].status.status_code == StatusCode.ERROR
    assert tools["call_1"].attributes is not None
    assert tools["call_1"].attributes["error.type"] == "tool_execution_error"
    assert tools["call_2"].status.status_code != StatusCode.ERROR
    errors = otel.points("agent_runner.tool.errors")
    assert [(attrs, point.value) for attrs, point in errors] == [
        ({"gen_ai.tool.name": "lookup", "error.type": "tool_execution_error"}, 1)
    ]
    durations = otel.points("agent_runner.tool.duration")
    assert sorted(point.count for _, point in durations) == [1, 1]


async def test_token_usage_run_duration_and_runs_in_flight(otel: Otel) -> None:
    model = FakeModel("gpt-test")
    model.add_text("hi", usage={"prompt_tokens": 10, "completion_tokens": 3})
    async with Runner("forecast", LLMAgent("a", model=model), plugins=[otel.plugin()]) as runner:
        await runner.run("alice", "s1", "hello").completion()

    usage = {
        attrs["gen_ai.token.type"]: (attrs, point.sum)
        for attrs, point in otel.points("gen_ai.client.token.usage")
    }
    assert usage["input"][1] == 10 and usage["output"][1] == 3
    assert usage["input"][0]["gen_ai.request.model"] == "gpt-test"
    assert usage["input"][0]["gen_ai.operation.name"] == "chat"
    runs = otel.points("agent_runner.run.duration")
    assert [(attrs, point.count) for attrs, point in runs] == [
        ({"agent_runner.app_name": "forecast", "agent_runner.run.status": "completed"}, 1)
    ]
    active = otel.points("agent_runner.runs.active")
    assert [point.value for _, point in active] == [0]  # one run started and ended


async def test_parallel_branches_and_transfers_nest_under_their_agents(otel: Otel) -> None:
    # Given a parallel agent with two branches, then (next run) a transfer
    left, right, desk = FakeModel("m-left"), FakeModel("m-right"), FakeModel("m-desk")
    left.add_text("left done")
    right.add_text("right done")
    fan = ParallelAgent(
        "fan", sub_agents=[LLMAgent("left", model=left), LLMAgent("right", model=right)]
    )
    async with Runner("app", fan, plugins=[otel.plugin()]) as runner:
        await runner.run("u", "s", "go").completion()

    # Then each branch's agent span is a child of the parallel agent's, its chat span its own
    assert otel.parent_name(otel.span("invoke_agent fan")) == "run app"
    for branch in ("left", "right"):
        span = otel.span(f"invoke_agent {branch}")
        assert otel.parent_name(span) == "invoke_agent fan"
        assert span.attributes is not None
        assert span.attributes["agent_runner.branch"] == f"fan.{branch}"
        assert otel.parent_name(otel.span(f"chat m-{branch}")) == f"invoke_agent {branch}"

    # And a transfer: the target's agent span is the run's child, after the first agent's
    otel.exporter.clear()
    billing = FakeModel("m-billing")
    billing.add_text("Your invoice is paid.")
    desk.add_tool_calls([("t1", "transfer_to_agent", {"agent_name": "billing"})])
    root = LLMAgent("desk", model=desk, sub_agents=[LLMAgent("billing", model=billing)])
    async with Runner("support", root, plugins=[otel.plugin()]) as runner:
        completion = await runner.run("u", "s", "my invoice?").completion()
    assert completion.final_text == "Your invoice is paid."
    assert otel.parent_name(otel.span("invoke_agent desk")) == "run support"
    assert otel.parent_name(otel.span("invoke_agent billing")) == "run support"
    assert otel.parent_name(otel.span("execute_tool transfer_to_agent")) == "invoke_agent desk"
    assert otel.parent_name(otel.span("chat m-billing")) == "invoke_agent billing"


async def test_latest_conventions_on_opt_in(otel: Otel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http,gen_ai_latest_experimental")
    model = FakeModel("gpt-test")
    model.add_text("hi")
    async with Runner("app", LLMAgent("a", model=model), plugins=[otel.plugin()]) as runner:
        await runner.run("u", "s", "hello").completion()

    chat = otel.span("chat gpt-test")
    assert chat.attributes is not None
    assert chat.attributes["gen_ai.provider.name"] == "openai"
    assert "gen_ai.system" not in chat.attributes


async def test_without_an_sdk_provider_runs_carry_no_trace_id() -> None:
    # The API alone (no SDK provider configured): every span is a no-op, nothing breaks.
    from opentelemetry.trace import NoOpTracerProvider

    model = FakeModel()
    model.add_text("hi")
    plugin = Telemetry(tracer_provider=NoOpTracerProvider())
    async with Runner("app", LLMAgent("a", model=model), plugins=[plugin]) as runner:
        completion = await runner.run("u", "s", "hello").completion()
    assert completion.status == "completed"
    assert completion.trace_id is None
    assert "trace_id" not in completion.to_json()


def test_runner_core_imports_without_opentelemetry() -> None:
    # Given a Python where opentelemetry cannot be imported
    script = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None\n"
        "import runner_core, runner_core.runner, runner_core.plugins\n"
        "assert not any(name.startswith('opentelemetry') and sys.modules[name] is not None\n"
        "               for name in sys.modules)\n"
        "try:\n"
        "    import runner_core.telemetry\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    # Then the runtime imports, and the telemetry module says what to install
    assert "pip install 'agent-runner[otel]'" in result.stdout


async def test_the_execution_trace_records_the_same_trace_id(otel: Otel) -> None:
    # Given the execution-trace recorder and telemetry on one Runner (telemetry first)
    from runner_core.memory_traces import InMemoryTraceStore
    from runner_core.tracing import TraceRecorder

    model = FakeModel("gpt-test")
    model.add_text("hi")
    store = InMemoryTraceStore()
    agent = LLMAgent("a", model=model)
    plugins = [otel.plugin(), TraceRecorder(store, agent=agent)]
    async with Runner("app", agent, plugins=plugins) as runner:
        completion = await runner.run("u", "s", "hello").completion()

    # Then the stored trace, the completion and the spans name one trace
    trace = await store.get(completion.invocation_id)
    assert trace is not None
    assert trace.otel_trace_id == completion.trace_id
    assert completion.trace_id == format(otel.span("run app").context.trace_id, "032x")


# --- workers.telemetry: the switch ---------------------------------------------------------


def test_workers_telemetry_is_on_only_with_an_otlp_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from workers import telemetry

    for name in telemetry.ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not telemetry.enabled()
    assert telemetry.setup() is False  # nothing set up, nothing imported
    assert telemetry.run_plugins() == []
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:4318/v1/traces")
    assert telemetry.enabled()
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not telemetry.enabled()


def test_an_endpoint_without_the_extra_is_a_configuration_error_naming_it() -> None:
    script = (
        "import sys\n"
        "sys.modules['opentelemetry.sdk'] = None  # the otel extra is not installed\n"
        "from runner_core.errors import ConfigurationError\n"
        "from workers import telemetry\n"
        "try:\n"
        "    telemetry.setup()\n"
        "except ConfigurationError as exc:\n"
        "    print(exc)\n"
    )
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    env.pop("OTEL_SDK_DISABLED", None)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    )
    assert "OTEL_EXPORTER_OTLP_ENDPOINT is set" in result.stdout
    assert "pip install 'agent-runner[otel]'" in result.stdout
