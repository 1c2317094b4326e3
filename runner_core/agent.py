"""LLMAgent: the model/tool loop.

Each iteration sends the session history to the model, emits the streamed text as
``message.delta`` events and the complete turn as a ``message`` event, then runs the turn's
tool calls concurrently and emits one ``tool.result`` per call, in call order. It ends when the
model answers without tool calls, when a tool needs confirmation (``run.paused``), when the
model fails (``error``), or after ``max_iterations`` model calls (``error``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

from .context import history_messages, pending_tool_calls, summary_message
from .errors import InvalidRequestError, ModelError, ToolError, ToolNotFoundError
from .events import (
    ErrorEvent,
    Event,
    EventError,
    MessageDeltaEvent,
    RunPausedEvent,
    ToolResultEvent,
)
from .invocation import InvocationContext, RunOutcome
from .messages import Message, ToolCall
from .model import GenerationConfig, Model, ModelRequest, ModelResponse, TextDelta
from .session import validate_identifier
from .tools import FunctionTool, ToolContext, render_tool_result

__all__ = ["LLMAgent"]

REFUSED = "The user declined this tool call; it was not executed."


class LLMAgent:
    """An agent that answers with a model and calls tools.

    Args:
        name: the agent's name; the author of its events.
        model: any :class:`~runner_core.model.Model` (usually an ``OpenAIModel``).
        instruction: the system message.
        tools: :class:`FunctionTool` objects or plain functions (wrapped with ``FunctionTool``).
        generation: sampling and streaming options for every model call.
        max_iterations: the most model calls one run may make.
        max_history_runs: send only the last N runs of history (0 = all). Ignored when a
            session summary is used.
        add_session_summary: put the session's summary in as a system message followed by
            the events after its boundary.

    Raises:
        InvalidRequestError: a bad name, ``max_iterations < 1``, or two tools with one name.
    """

    def __init__(
        self,
        name: str,
        *,
        model: Model,
        instruction: str = "",
        tools: Iterable[FunctionTool | Callable[..., Any]] = (),
        generation: GenerationConfig | None = None,
        max_iterations: int = 10,
        max_history_runs: int = 0,
        add_session_summary: bool = False,
    ) -> None:
        self.name = validate_identifier(name, "agent name")
        if max_iterations < 1:
            raise InvalidRequestError("max_iterations must be at least 1.")
        if max_history_runs < 0:
            raise InvalidRequestError("max_history_runs must be >= 0 (0 keeps all history).")
        self.model = model
        self.instruction = instruction
        self.generation = generation or GenerationConfig()
        self.max_iterations = max_iterations
        self.max_history_runs = max_history_runs
        self.add_session_summary = add_session_summary
        self.tools: dict[str, FunctionTool] = {}
        for item in tools:
            fn_tool = item if isinstance(item, FunctionTool) else FunctionTool(item)
            if fn_tool.name in self.tools:
                raise InvalidRequestError(
                    f"two tools are named {fn_tool.name!r}; give one another name= ."
                )
            self.tools[fn_tool.name] = fn_tool
        self._tool_schemas = [t.openai_schema() for t in self.tools.values()]

    # --- context -------------------------------------------------------------------------

    def build_messages(self, ctx: InvocationContext) -> list[Message]:
        messages: list[Message] = []
        if self.instruction:
            messages.append(Message.system(self.instruction))
        summary = ctx.session.summaries.get("") if self.add_session_summary else None
        if summary is not None:
            messages.append(summary_message(summary))
        messages.extend(
            history_messages(
                ctx.session.events, max_history_runs=self.max_history_runs, summary=summary
            )
        )
        return messages

    # --- the loop ------------------------------------------------------------------------

    async def resume(self, ctx: InvocationContext) -> AsyncIterator[Event]:
        """Run the tool calls the session left without results (``resume=True``).

        Raises:
            UnknownToolCallError: via the Runner's check of ``tool_confirmations``.
        """
        calls = pending_tool_calls(ctx.session.events)
        if calls:
            async for event in self._execute_calls(ctx, calls):
                yield event

    async def run(self, ctx: InvocationContext) -> AsyncIterator[Event]:
        """Call the model until it answers without tool calls. Sets ``ctx.outcome``."""
        for _ in range(self.max_iterations):
            request = ModelRequest(
                messages=self.build_messages(ctx),
                tools=self._tool_schemas,
                generation=self.generation,
            )
            response: ModelResponse | None = None
            try:
                async for item in self.model.generate(request):
                    if isinstance(item, TextDelta):
                        if item.text:
                            yield ctx.event(MessageDeltaEvent, self.name, delta=item.text)
                    else:
                        response = item
                if response is None:
                    raise ModelError("the model stream ended without a complete response")
            except ModelError as exc:
                error = EventError(type=exc.error_type, message=str(exc), code=exc.code)
                yield ctx.event(ErrorEvent, self.name, error=error)
                ctx.outcome = RunOutcome(status="failed", error=error)
                return
            message = response.message
            yield ctx.message_event(self.name, message, usage=response.usage)
            if not message.tool_calls:
                ctx.outcome = RunOutcome(status="completed", final_text=message.content or "")
                return
            async for event in self._execute_calls(ctx, message.tool_calls):
                yield event
            if ctx.outcome.status == "paused":
                return
        error = EventError(
            type="max_iterations_exceeded",
            message=(
                f"agent {self.name!r} made {self.max_iterations} model calls without a final "
                "answer; raise max_iterations or check why the model keeps calling tools."
            ),
        )
        yield ctx.event(ErrorEvent, self.name, error=error)
        ctx.outcome = RunOutcome(status="failed", error=error)

    async def _execute_calls(
        self, ctx: InvocationContext, calls: Sequence[ToolCall]
    ) -> AsyncIterator[Event]:
        """Run approved calls concurrently, emit results in call order, pause for the rest."""
        waiting: list[ToolCall] = []
        jobs: list[tuple[ToolCall, Any]] = []
        for call in calls:
            fn_tool = self.tools.get(call.function.name)
            if fn_tool is None or not fn_tool.requires_confirmation:
                jobs.append((call, self._call_tool(ctx, call, call.function.arguments)))
                continue
            decision = ctx.tool_confirmations.get(call.id)
            if decision is None:
                waiting.append(call)
            elif decision is False:
                jobs.append((call, _constant((REFUSED, {}, None))))
            elif decision is True:
                jobs.append((call, self._call_tool(ctx, call, call.function.arguments)))
            else:
                jobs.append((call, self._call_tool(ctx, call, decision["arguments"])))
        results = await asyncio.gather(*(job for _, job in jobs))
        for (call, _), (content, delta, error) in zip(jobs, results, strict=True):
            yield ctx.event(
                ToolResultEvent,
                self.name,
                message=Message.tool(call.id, content, name=call.function.name),
                state_delta=delta or None,
                error=error,
            )
        if waiting:
            yield ctx.event(RunPausedEvent, self.name, requested_confirmations=waiting)
            ctx.outcome = RunOutcome(status="paused")

    async def _call_tool(
        self, ctx: InvocationContext, call: ToolCall, arguments: str | dict[str, Any]
    ) -> tuple[str, dict[str, Any], EventError | None]:
        """Run one call; failures become an error result the model can read and correct."""
        try:
            fn_tool = self.tools.get(call.function.name)
            if fn_tool is None:
                available = ", ".join(sorted(self.tools)) or "none"
                raise ToolNotFoundError(
                    f"there is no tool named {call.function.name!r}; available tools: {available}."
                )
            args = fn_tool.parse_arguments(arguments)
            tool_ctx = ToolContext(
                app_name=ctx.app_name,
                user_id=ctx.user_id,
                session_id=ctx.session.id,
                invocation_id=ctx.invocation_id,
                tool_call_id=call.id,
                state=ctx.state,
            )
            value = await fn_tool.call(args, tool_ctx)
            return render_tool_result(value), tool_ctx.state.delta, None
        except ToolError as exc:
            return f"Error: {exc}", {}, EventError(type=exc.error_type, message=str(exc))


async def _constant(value: tuple[str, dict[str, Any], EventError | None]) -> Any:
    return value
