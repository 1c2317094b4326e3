"""OpenTelemetry spans and metrics for runs, as a plugin: ``Runner(..., plugins=[Telemetry()])``.

Needs the ``otel`` extra (``pip install 'agent-runner[otel]'``); nothing else in runner_core
imports this module, so a runtime without the extra pays nothing. Built on the plugin scopes of
:mod:`runner_core.plugins` (put ``Telemetry`` first in ``plugins``: a plugin before it that
replaces a model answer hides that answer's usage from it).

Spans follow the OpenTelemetry GenAI semantic conventions, v1.36.0 by default;
``OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental`` switches to the latest
experimental version (as the conventions ask), which names the provider
``gen_ai.provider.name`` instead of ``gen_ai.system``. Opted-in content is recorded as the latest
conventions' span attributes in both modes (v1.36.0 used log events, not emitted here)::

    run {app}                      the run (INTERNAL); its trace ID is the completion's trace_id
    └── invoke_agent {agent}       each run of each agent of the tree (INTERNAL)
        ├── chat {model}           each model call (CLIENT)
        ├── execute_tool {tool}    each tool call (INTERNAL), concurrent ones side by side
        └── invoke_agent {sub}     a workflow's sub-agents, a parallel agent's branches

Every span carries ``agent_runner.invocation_id``, ``agent_runner.app_name``, ``user.id`` and
``gen_ai.conversation.id`` (the session). A step that failed has status ERROR and
``error.type``. Message, tool argument and tool result content is recorded only when asked for
(``capture_content=True`` or ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``).
docs/telemetry.md lists every span, attribute and metric.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

from .errors import AgentRunnerError, FencedError
from .plugins import Plugin

try:
    from opentelemetry import metrics, trace
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - exercised without the extra only
    raise ImportError(
        "runner_core.telemetry needs OpenTelemetry: pip install 'agent-runner[otel]'."
    ) from exc

if TYPE_CHECKING:
    from .agent import BaseAgent
    from .invocation import InvocationContext
    from .messages import Message, ToolCall
    from .model import ModelRequest, ModelResponse

__all__ = [
    "CAPTURE_CONTENT_ENV",
    "DURATION_BUCKETS",
    "INSTRUMENTATION_NAME",
    "SEMCONV_OPT_IN_ENV",
    "Telemetry",
    "error_type_of",
    "latest_semconv",
]

#: The tracer's and meter's name.
INSTRUMENTATION_NAME = "agent_runner"
#: The conventions' switch between the GenAI versions this module speaks.
SEMCONV_OPT_IN_ENV = "OTEL_SEMCONV_STABILITY_OPT_IN"
_LATEST = "gen_ai_latest_experimental"
#: Opt-in to recording message and tool content (the name other GenAI instrumentations read).
CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"

# Bucket boundaries the GenAI metric conventions advise.
_TOKEN_BUCKETS = [4**i for i in range(14)]
#: Also the buckets of the workers' own duration metrics (workers.telemetry).
DURATION_BUCKETS = [0.01 * 2**i for i in range(14)]

INVOCATION_ID = "agent_runner.invocation_id"
APP_NAME = "agent_runner.app_name"
BRANCH = "agent_runner.branch"
RUN_STATUS = "agent_runner.run.status"
USER_ID = "user.id"
ERROR_TYPE = "error.type"


def error_type_of(exc: BaseException) -> str:
    """``error.type`` of an exception: the project's error kind (``model_timeout``,
    ``tool_execution_error``, ...), ``fenced`` for a run another delivery took over, else the
    exception's qualified class name."""
    if isinstance(exc, AgentRunnerError):
        kind = getattr(exc, "error_type", None)
        if isinstance(kind, str):
            return kind
    if isinstance(exc, FencedError):
        return "fenced"
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass(slots=True)
class _ModelCall:
    """The model call under way in this context: its chat span and its metric attributes."""

    span: Span
    metric_attributes: dict[str, Any]


@dataclass(slots=True)
class _Instruments:
    token_usage: metrics.Histogram
    operation_duration: metrics.Histogram
    run_duration: metrics.Histogram
    runs_active: metrics.UpDownCounter
    tool_duration: metrics.Histogram
    tool_errors: metrics.Counter

    @classmethod
    def of(cls, meter: metrics.Meter) -> _Instruments:
        return cls(
            token_usage=meter.create_histogram(
                "gen_ai.client.token.usage",
                unit="{token}",
                description="Number of input and output tokens used.",
                explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
            ),
            operation_duration=meter.create_histogram(
                "gen_ai.client.operation.duration",
                unit="s",
                description="GenAI operation duration.",
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
            ),
            run_duration=meter.create_histogram(
                "agent_runner.run.duration",
                unit="s",
                description="Duration of runs, by how they ended (agent_runner.run.status).",
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
            ),
            runs_active=meter.create_up_down_counter(
                "agent_runner.runs.active", unit="{run}", description="Runs under way."
            ),
            tool_duration=meter.create_histogram(
                "agent_runner.tool.duration",
                unit="s",
                description="Duration of tool calls (error.type set on the failed ones).",
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
            ),
            tool_errors=meter.create_counter(
                "agent_runner.tool.errors",
                unit="{error}",
                description="Tool calls that failed (the model read an error result).",
            ),
        )


# Where this context stands in the run. Each scope sets and resets its own variable, so the
# contexts a parallel agent's branches copy never share a mutable object.
_AGENT: ContextVar[BaseAgent | None] = ContextVar("agent_runner_telemetry_agent", default=None)
_MODEL_CALL: ContextVar[_ModelCall | None] = ContextVar(
    "agent_runner_telemetry_model_call", default=None
)
_TOOL_SPAN: ContextVar[Span | None] = ContextVar("agent_runner_telemetry_tool", default=None)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def latest_semconv() -> bool:
    """Whether ``OTEL_SEMCONV_STABILITY_OPT_IN`` asks for the latest experimental GenAI
    conventions."""
    values = os.environ.get(SEMCONV_OPT_IN_ENV, "").split(",")
    return _LATEST in {value.strip() for value in values}


def _version() -> str:
    try:
        return metadata.version("agent-runner")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source tree not installed
        return "0"


def _mark_failed(span: Span, kind: str) -> None:
    span.set_attribute(ERROR_TYPE, kind)
    span.set_status(Status(StatusCode.ERROR, kind))


def _failure(exc: BaseException) -> str | None:
    """``error.type`` of what ended a step, or None when it was no failure (the agent's run
    closed early, which is how a run stops reading an agent)."""
    if isinstance(exc, GeneratorExit):
        return None
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return error_type_of(exc)


def _message_json(message: Message) -> dict[str, Any]:
    """A message in the conventions' ``gen_ai.*.messages`` shape (role and parts)."""
    parts: list[dict[str, Any]] = []
    if message.role == "tool":
        parts.append(
            {"type": "tool_call_response", "id": message.tool_call_id, "response": message.content}
        )
    elif message.content:
        parts.append({"type": "text", "content": message.content})
    for call in message.tool_calls or []:
        parts.append(
            {
                "type": "tool_call",
                "id": call.id,
                "name": call.function.name,
                "arguments": call.function.arguments,
            }
        )
    return {"role": message.role, "parts": parts}


class Telemetry(Plugin):
    """Spans and metrics for every run of a Runner (see the module docstring).

    Args:
        tracer_provider, meter_provider: where spans and metrics go; default: the global
            providers (``opentelemetry.trace.set_tracer_provider``, or what
            ``workers.telemetry`` / ``opentelemetry-instrument`` set up). Without an SDK
            provider everything is a no-op.
        capture_content: record messages, tool arguments and tool results on the spans;
            default: ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` (off).
        provider_name: the GenAI provider of the models (``gen_ai.system`` /
            ``gen_ai.provider.name``); default ``openai`` (the OpenAI-compatible client).
    """

    name = "telemetry"

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        capture_content: bool | None = None,
        provider_name: str = "openai",
    ) -> None:
        self.tracer = trace.get_tracer(
            INSTRUMENTATION_NAME, _version(), tracer_provider=tracer_provider
        )
        meter = metrics.get_meter(INSTRUMENTATION_NAME, _version(), meter_provider=meter_provider)
        self.instruments = _Instruments.of(meter)
        self.capture_content = (
            _env_flag(CAPTURE_CONTENT_ENV) if capture_content is None else capture_content
        )
        #: ``gen_ai.system`` (v1.36.0) or ``gen_ai.provider.name`` (latest experimental).
        self.provider_attribute = "gen_ai.provider.name" if latest_semconv() else "gen_ai.system"
        self.provider_name = provider_name

    # --- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _common(ctx: InvocationContext) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            INVOCATION_ID: ctx.invocation_id,
            APP_NAME: ctx.app_name,
            USER_ID: ctx.user_id,
            "gen_ai.conversation.id": ctx.session.id,
        }
        if ctx.branch is not None:
            attributes[BRANCH] = ctx.branch
        return attributes

    @contextmanager
    def _span(self, name: str, kind: SpanKind, attributes: dict[str, Any]) -> Iterator[Span]:
        """A span made current for the step; its status is set by the caller."""
        with self.tracer.start_as_current_span(
            name,
            kind=kind,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span

    def _json(self, value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    # --- scopes ----------------------------------------------------------------------------

    @asynccontextmanager
    async def run_scope(self, ctx: InvocationContext) -> AsyncIterator[None]:
        attributes = self._common(ctx)
        if ctx.request_id is not None:
            attributes["agent_runner.request_id"] = ctx.request_id
        app = {APP_NAME: ctx.app_name}
        self.instruments.runs_active.add(1, app)
        started = time.perf_counter()
        status = "failed"
        try:
            with self._span(f"run {ctx.app_name}", SpanKind.INTERNAL, attributes) as span:
                context = span.get_span_context()
                if context.is_valid:
                    ctx.trace_id = format(context.trace_id, "032x")
                try:
                    yield
                except BaseException as exc:
                    kind = _failure(exc) or "closed"
                    status = kind
                    _mark_failed(span, kind)
                    raise
                status = ctx.outcome.status
                span.set_attribute(RUN_STATUS, status)
                if status in ("failed", "timeout"):
                    error = ctx.outcome.error
                    _mark_failed(span, error.type if error is not None else status)
        finally:
            self.instruments.runs_active.add(-1, app)
            self.instruments.run_duration.record(
                time.perf_counter() - started, {**app, RUN_STATUS: status}
            )

    @asynccontextmanager
    async def agent_scope(self, ctx: InvocationContext, agent: BaseAgent) -> AsyncIterator[None]:
        attributes = self._common(ctx)
        attributes["gen_ai.operation.name"] = "invoke_agent"
        attributes["gen_ai.agent.name"] = agent.name
        if agent.description:
            attributes["gen_ai.agent.description"] = agent.description
        if agent.model is not None:
            attributes[self.provider_attribute] = self.provider_name
            attributes["gen_ai.request.model"] = ctx.run_config.model or agent.model.name
        with self._span(f"invoke_agent {agent.name}", SpanKind.INTERNAL, attributes) as span:
            token = _AGENT.set(agent)
            try:
                yield
            except BaseException as exc:
                kind = _failure(exc)
                if kind is not None:
                    _mark_failed(span, kind)
                raise
            else:
                error = ctx.outcome.error
                if ctx.outcome.status in ("failed", "timeout"):
                    _mark_failed(span, error.type if error is not None else ctx.outcome.status)
            finally:
                _reset(_AGENT, token)

    @asynccontextmanager
    async def model_scope(
        self, ctx: InvocationContext, request: ModelRequest
    ) -> AsyncIterator[None]:
        agent = _AGENT.get()
        model = request.model or (
            agent.model.name if agent is not None and agent.model is not None else "unknown"
        )
        operation = {
            "gen_ai.operation.name": "chat",
            self.provider_attribute: self.provider_name,
            "gen_ai.request.model": model,
        }
        attributes = {**self._common(ctx), **operation}
        if agent is not None:
            attributes["gen_ai.agent.name"] = agent.name
        generation = request.generation
        for key, value in (
            ("gen_ai.request.temperature", generation.temperature),
            ("gen_ai.request.top_p", generation.top_p),
            ("gen_ai.request.max_tokens", generation.max_tokens),
            ("gen_ai.request.stop_sequences", generation.stop),
        ):
            if value is not None:
                attributes[key] = value
        if request.response_format is not None:
            attributes["gen_ai.output.type"] = "json"
        if self.capture_content:
            attributes["gen_ai.input.messages"] = self._json(
                [_message_json(message) for message in request.messages]
            )
        started = time.perf_counter()
        failure: str | None = None
        with self._span(f"chat {model}", SpanKind.CLIENT, attributes) as span:
            token = _MODEL_CALL.set(_ModelCall(span, operation))
            try:
                yield
            except BaseException as exc:
                failure = _failure(exc)
                if failure is not None:
                    _mark_failed(span, failure)
                raise
            finally:
                _reset(_MODEL_CALL, token)
                measured = operation if failure is None else {**operation, ERROR_TYPE: failure}
                self.instruments.operation_duration.record(time.perf_counter() - started, measured)

    @asynccontextmanager
    async def tool_scope(self, ctx: InvocationContext, call: ToolCall) -> AsyncIterator[None]:
        name = call.function.name
        attributes = self._common(ctx)
        attributes.update(
            {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": name,
                "gen_ai.tool.call.id": call.id,
                "gen_ai.tool.type": "function",
            }
        )
        agent = _AGENT.get()
        if agent is not None:
            attributes["gen_ai.agent.name"] = agent.name
        if self.capture_content:
            attributes["gen_ai.tool.call.arguments"] = call.function.arguments
        measured: dict[str, Any] = {"gen_ai.tool.name": name}
        started = time.perf_counter()
        with self._span(f"execute_tool {name}", SpanKind.INTERNAL, attributes) as span:
            token = _TOOL_SPAN.set(span)
            try:
                yield
            except BaseException as exc:
                failure = _failure(exc)
                if failure is not None:
                    _mark_failed(span, failure)
                    measured[ERROR_TYPE] = failure
                    self.instruments.tool_errors.add(1, measured)
                raise
            finally:
                _reset(_TOOL_SPAN, token)
                self.instruments.tool_duration.record(time.perf_counter() - started, measured)

    # --- hooks: what only the answer tells -------------------------------------------------

    async def after_model(
        self, ctx: InvocationContext, response: ModelResponse
    ) -> ModelResponse | None:
        call = _MODEL_CALL.get()
        if call is None:
            return None
        usage = response.usage
        call.span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
        call.span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
        if response.finish_reason:
            call.span.set_attribute("gen_ai.response.finish_reasons", [response.finish_reason])
        if self.capture_content:
            call.span.set_attribute(
                "gen_ai.output.messages", self._json([_message_json(response.message)])
            )
        for token_type, count in (
            ("input", usage.prompt_tokens),
            ("output", usage.completion_tokens),
        ):
            self.instruments.token_usage.record(
                count, {**call.metric_attributes, "gen_ai.token.type": token_type}
            )
        return None

    async def after_tool(
        self, ctx: InvocationContext, call: ToolCall, args: dict[str, Any], result: str
    ) -> str | None:
        span = _TOOL_SPAN.get()
        if span is not None and self.capture_content:
            span.set_attribute("gen_ai.tool.call.result", result)
        return None


def _reset(variable: ContextVar[Any], token: Any) -> None:
    try:
        variable.reset(token)
    except ValueError:  # exited from another context (a generator finalised elsewhere)
        pass
