"""Agents: :class:`BaseAgent`, what the Runner runs, and :class:`LLMAgent`, the model/tool loop.

LLMAgent: each iteration sends the session history to the model, emits the streamed text as
``message.delta`` events and the complete turn as a ``message`` event, then runs the turn's
tool calls concurrently and emits one ``tool.result`` per call, in call order. It ends when the
model answers without tool calls, when a tool needs confirmation (``run.paused``), when the
model fails (``error``), after ``max_iterations`` model calls (``error``), or when a callback
or tool calls ``ctx.end_invocation()``. Callbacks, plugins and guardrails:
:mod:`runner_core.plugins`.
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from .context import history_messages, pending_tool_calls, session_summary, summary_message
from .errors import InvalidRequestError, ModelError, ToolError, ToolNotFoundError
from .events import (
    ErrorEvent,
    Event,
    EventError,
    MessageDeltaEvent,
    RunPausedEvent,
    ToolResultEvent,
    Usage,
)
from .invocation import InvocationContext, RunOutcome, ToolDecision
from .messages import Message, ToolCall, coerce_message
from .model import (
    GenerationConfig,
    Model,
    ModelPrice,
    ModelRequest,
    ModelResponse,
    TextDelta,
    complete_response,
)
from .plugins import (
    CallbackError,
    Guardrail,
    GuardrailTripped,
    Hook,
    first_answer,
    hook_list,
    plugin_scopes,
)
from .run_config import RunConfig, coerce_run_config
from .session import validate_identifier
from .tools import FunctionTool, ToolContext, render_tool_result
from .transfer import TRANSFER_TOOL_NAME, TransferTool, transfer_tool

if TYPE_CHECKING:
    from .summarizer import Summarizer

__all__ = ["BaseAgent", "CallResult", "LLMAgent"]

REFUSED = "The user declined this tool call; it was not executed."


class BaseAgent(ABC):
    """What the Runner runs. Subclass it for an agent that is not an :class:`LLMAgent`.

    ``run(ctx)`` is an async generator of events built with ``ctx.event(...)``; it says how the
    run ended by setting ``ctx.outcome`` (default: ``completed``). Whatever it raises ends the
    run with an ``error`` event and a ``failed`` completion. Once ``ctx.ended`` is set (a tool
    or callback called ``end_invocation()``), it stops at its next step. ``resume(ctx)`` runs
    what a paused run left (default: nothing).

    Agents form a tree: ``sub_agents`` become this agent's children (each has one parent,
    ``parent_agent``); names are unique within a tree. An agent may hand the conversation to
    its sub-agents, its parent and its peers (:mod:`runner_core.transfer`); a subclass switches
    each off with the ``allow_transfer_to_*`` attributes below.

    Args:
        name: the agent's name; the author of its events.
        description: what the agent does, for the agents that may hand work to it.
        sub_agents: child agents (for transfers and workflow agents).
        summarizer: the :class:`~runner_core.summarizer.Summarizer` that compresses this app's
            sessions (workers schedule it after runs; in-process, see
            :class:`~runner_core.background_summaries.BackgroundSummaries`); None: no summaries.

    Raises:
        InvalidRequestError: a bad name; a sub-agent that is not an agent, already has a
            parent, or would make a cycle; two agents of the tree with one name.
    """

    #: The agent's model, when it has one (the Runner reads its ``price`` for the cost).
    model: Model | None = None
    #: Which agents this agent may transfer to (:func:`runner_core.transfer.transfer_targets`).
    allow_transfer_to_sub_agents: bool = True
    allow_transfer_to_parent: bool = True
    allow_transfer_to_peers: bool = True

    def __init__(
        self,
        name: str,
        *,
        description: str = "",
        sub_agents: Iterable[BaseAgent] = (),
        summarizer: Summarizer | None = None,
    ) -> None:
        self.name = validate_identifier(name, "agent name")
        if not isinstance(description, str):
            raise InvalidRequestError(f"agent {name!r}: description must be text.")
        self.description = description
        self.summarizer = _checked_summarizer(summarizer)
        self.parent_agent: BaseAgent | None = None
        self.sub_agents: list[BaseAgent] = []
        for sub in sub_agents:
            self.add_sub_agent(sub)

    # --- the tree ------------------------------------------------------------------------

    def add_sub_agent(self, sub: BaseAgent) -> None:
        """Make ``sub`` a child of this agent.

        Raises:
            InvalidRequestError: ``sub`` is not an agent, already has a parent, is this agent
                or one of its ancestors (a cycle), or shares a name with an agent of this tree.
        """
        if not isinstance(sub, BaseAgent):
            raise InvalidRequestError(
                f"agent {self.name!r}: sub_agents must be agents, got {type(sub).__name__}."
            )
        if sub.parent_agent is not None:
            raise InvalidRequestError(
                f"agent {sub.name!r} is already a sub-agent of {sub.parent_agent.name!r}; an "
                f"agent has one parent, so it cannot also be one of {self.name!r}. Build "
                "another agent for the second place."
            )
        ancestor: BaseAgent | None = self
        while ancestor is not None:
            if ancestor is sub:
                raise InvalidRequestError(
                    f"agent {sub.name!r} cannot be a sub-agent of {self.name!r}: it is that "
                    "agent or one of its parents (a cycle)."
                )
            ancestor = ancestor.parent_agent
        taken = {agent.name for agent in self.root_agent.walk()}
        clash = sorted(taken & {agent.name for agent in sub.walk()})
        if clash:
            raise InvalidRequestError(
                f"two agents of one tree are named {clash[0]!r} (adding {sub.name!r} under "
                f"{self.name!r}); agent names must be unique within a tree."
            )
        sub.parent_agent = self
        self.sub_agents.append(sub)

    @property
    def root_agent(self) -> BaseAgent:
        agent = self
        while agent.parent_agent is not None:
            agent = agent.parent_agent
        return agent

    def walk(self) -> Iterator[BaseAgent]:
        """This agent and every agent below it, depth first."""
        yield self
        for sub in self.sub_agents:
            yield from sub.walk()

    def find_agent(self, name: str) -> BaseAgent | None:
        """The agent of this subtree named ``name``, or None."""
        return next((agent for agent in self.walk() if agent.name == name), None)

    @abstractmethod
    def run(self, ctx: InvocationContext) -> AsyncIterator[Event]:
        """The run's events, as an async generator."""

    async def resume(self, ctx: InvocationContext) -> AsyncIterator[Event]:
        """Run what the session left waiting (``resume=True``); default: nothing."""
        return
        yield  # an async generator that yields nothing

    def output_of(self, final_text: str) -> Any:
        """The completion's ``output`` for a final answer already stored (a redelivered run
        that finds its answer in the session); default: None."""
        return None


def _checked_summarizer(summarizer: object) -> Summarizer | None:
    from .summarizer import Summarizer

    if summarizer is not None and not isinstance(summarizer, Summarizer):
        raise InvalidRequestError(
            f"summarizer must be a runner_core.Summarizer, got {type(summarizer).__name__}."
        )
    return summarizer


@dataclass(frozen=True, slots=True)
class CallResult:
    """One model call without the tool loop (:meth:`LLMAgent.call`)."""

    message: Message
    usage: Usage
    cost: float | None

    @property
    def text(self) -> str:
        return self.message.text


@dataclass(frozen=True, slots=True)
class _ToolOutcome:
    """What one tool call leaves for its ``tool.result`` event."""

    content: str
    state_delta: dict[str, Any] = field(default_factory=dict)
    error: EventError | None = None
    #: The model calls the tool made (:meth:`ToolContext.add_usage`).
    usage: Usage | None = None
    #: The agent a ``transfer_to_agent`` call hands the conversation to, when it was made.
    transfer_to: str | None = None
    #: The artifact versions the call saved (:meth:`ToolContext.save_artifact`).
    artifact_delta: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Turn:
    """What one model call left: its response, and whether its text was streamed."""

    response: ModelResponse | None = None
    streamed: bool = False


class LLMAgent(BaseAgent):
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
            the events after its boundary; on a branch of a parallel agent, the branch's
            summary if one is stored, else the whole session's.
        before_model_callback, after_model_callback, before_tool_callback,
            after_tool_callback: a function or a list of them (:mod:`runner_core.plugins`).
        input_guardrails, output_guardrails: checks of the user's input and of the final
            answer (:class:`~runner_core.plugins.Guardrail` or functions).
        stream_guarded_output: with output guardrails, still stream the answer's text (a
            tripped guardrail then withdraws it: its error event has
            ``retracts_streamed_text``). Default False: the answer is not streamed, so nothing
            a guardrail refuses is ever published.
        output_schema: a pydantic model the final answer must be JSON of; the model is asked
            for it (``response_format``) and the completion carries the parsed object
            (``output``). Invalid output ends the run ``failed`` (``invalid_output``).
        summarizer, description, sub_agents: see :class:`BaseAgent`.
        allow_transfer_to_sub_agents, allow_transfer_to_parent, allow_transfer_to_peers:
            which agents the model may hand the conversation to with the built-in
            ``transfer_to_agent`` tool (:mod:`runner_core.transfer`); all True by default.

    Raises:
        InvalidRequestError: a bad name, no model, ``max_iterations < 1``, two tools with one
            name, a tool named ``transfer_to_agent``, a transfer switch that is not a bool, or
            a callback that is not callable.
    """

    model: Model

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
        before_model_callback: Hook | Sequence[Hook] | None = None,
        after_model_callback: Hook | Sequence[Hook] | None = None,
        before_tool_callback: Hook | Sequence[Hook] | None = None,
        after_tool_callback: Hook | Sequence[Hook] | None = None,
        input_guardrails: Iterable[Guardrail | Hook] = (),
        output_guardrails: Iterable[Guardrail | Hook] = (),
        stream_guarded_output: bool = False,
        output_schema: type[BaseModel] | None = None,
        summarizer: Summarizer | None = None,
        description: str = "",
        sub_agents: Iterable[BaseAgent] = (),
        allow_transfer_to_sub_agents: bool = True,
        allow_transfer_to_parent: bool = True,
        allow_transfer_to_peers: bool = True,
    ) -> None:
        super().__init__(
            name, description=description, sub_agents=sub_agents, summarizer=summarizer
        )
        switches = {
            "allow_transfer_to_sub_agents": allow_transfer_to_sub_agents,
            "allow_transfer_to_parent": allow_transfer_to_parent,
            "allow_transfer_to_peers": allow_transfer_to_peers,
        }
        for switch, value in switches.items():
            if not isinstance(value, bool):
                raise InvalidRequestError(f"LLMAgent {name!r}: {switch} must be True or False.")
        self.allow_transfer_to_sub_agents = allow_transfer_to_sub_agents
        self.allow_transfer_to_parent = allow_transfer_to_parent
        self.allow_transfer_to_peers = allow_transfer_to_peers
        if not isinstance(model, Model):
            raise InvalidRequestError(
                f"LLMAgent {name!r} needs a model (an OpenAIModel, or anything with "
                f"generate(request) and close()), got {type(model).__name__}."
            )
        if max_iterations < 1:
            raise InvalidRequestError("max_iterations must be at least 1.")
        if max_history_runs < 0:
            raise InvalidRequestError("max_history_runs must be >= 0 (0 keeps all history).")
        if output_schema is not None and not (
            isinstance(output_schema, type) and issubclass(output_schema, BaseModel)
        ):
            raise InvalidRequestError("output_schema must be a pydantic model class.")
        self.model = model
        self.instruction = instruction
        self.generation = generation or GenerationConfig()
        self.max_iterations = max_iterations
        self.max_history_runs = max_history_runs
        self.add_session_summary = add_session_summary
        self.before_model_callbacks = hook_list(before_model_callback, "before_model_callback")
        self.after_model_callbacks = hook_list(after_model_callback, "after_model_callback")
        self.before_tool_callbacks = hook_list(before_tool_callback, "before_tool_callback")
        self.after_tool_callbacks = hook_list(after_tool_callback, "after_tool_callback")
        self.input_guardrails = [Guardrail.of(g) for g in input_guardrails]
        self.output_guardrails = [Guardrail.of(g) for g in output_guardrails]
        self.stream_guarded_output = stream_guarded_output
        self.output_schema = output_schema
        self.tools: dict[str, FunctionTool] = {}
        for item in tools:
            fn_tool = item if isinstance(item, FunctionTool) else FunctionTool(item)
            if fn_tool.name in self.tools:
                raise InvalidRequestError(
                    f"two tools are named {fn_tool.name!r}; give one another name= ."
                )
            if fn_tool.name == TRANSFER_TOOL_NAME:
                raise InvalidRequestError(
                    f"LLMAgent {name!r}: the tool name {TRANSFER_TOOL_NAME!r} is the built-in "
                    "transfer tool's; give your tool another name= ."
                )
            self.tools[fn_tool.name] = fn_tool
        self._tool_schemas = [t.openai_schema() for t in self.tools.values()]

    # --- context -------------------------------------------------------------------------

    def build_messages(self, ctx: InvocationContext) -> list[Message]:
        messages: list[Message] = []
        if self.instruction:
            messages.append(Message.system(self.instruction))
        summary = session_summary(ctx.session, ctx.branch) if self.add_session_summary else None
        if summary is not None:
            messages.append(summary_message(summary))
        messages.extend(
            history_messages(
                ctx.session.events,
                max_history_runs=self.max_history_runs,
                summary=summary,
                agent_name=self.name,
                branch=ctx.branch,
            )
        )
        return messages

    # --- one call, no loop ------------------------------------------------------------------

    async def call(
        self,
        message: str | Message | Sequence[str | Message],
        *,
        run_config: RunConfig | dict[str, Any] | None = None,
    ) -> CallResult:
        """One model call without tools or a session (seed 003's single call mode): the
        instruction, then ``message`` (or messages); the answer with its usage and cost.

        Raises:
            InvalidRequestError: a bad message or run_config. ModelError: the model failed.
        """
        config = coerce_run_config(run_config)
        items = [message] if isinstance(message, str | Message) else list(message)
        messages = [Message.system(self.instruction)] if self.instruction else []
        messages += [coerce_message(m, field=f"message[{i}]") for i, m in enumerate(items)]
        generation = config.generation_over(self.generation).model_copy(update={"stream": False})
        request = ModelRequest(
            messages=messages,
            generation=generation,
            model=config.model,
            response_format=self._response_format(),
        )
        response = await complete_response(self.model, request)
        price: ModelPrice | None = getattr(self.model, "price", None)
        cost = price.cost(response.usage) if price is not None else None
        return CallResult(message=response.message, usage=response.usage, cost=cost)

    # --- the loop ------------------------------------------------------------------------

    async def resume(self, ctx: InvocationContext) -> AsyncIterator[Event]:
        """Run the tool calls the session left without results (``resume=True``).

        Raises:
            UnknownToolCallError: via the Runner's check of ``tool_confirmations``.
        """
        calls = pending_tool_calls(ctx.session.events, branch=ctx.branch)
        if calls:
            async for event in self._execute_calls(ctx, calls, ctx.tool_confirmations):
                yield event

    async def run(self, ctx: InvocationContext) -> AsyncIterator[Event]:
        """Call the model until it answers without tool calls. Sets ``ctx.outcome``."""
        config = ctx.run_config
        generation = config.generation_over(self.generation)
        stream_text = generation.stream and (
            self.stream_guarded_output or not self.output_guardrails
        )
        await self._check_input(ctx)
        max_iterations = config.max_iterations or self.max_iterations
        for _ in range(max_iterations):
            if ctx.ended:
                return
            transfer = transfer_tool(self)
            request = ModelRequest(
                messages=self.build_messages(ctx),
                tools=self._tool_schemas + ([transfer.openai_schema()] if transfer else []),
                generation=generation,
                model=config.model,
                response_format=self._response_format(),
            )
            turn = _Turn()
            try:
                async for delta in self._model_turn(ctx, request, stream_text, turn):
                    yield delta
            except ModelError as exc:
                error = EventError(type=exc.error_type, message=str(exc), code=exc.code)
                yield ctx.event(ErrorEvent, self.name, error=error)
                ctx.outcome = RunOutcome(status="failed", error=error)
                return
            assert turn.response is not None
            message = turn.response.message
            if not message.tool_calls:
                final = await self._final_answer(ctx, message.content or "", turn.streamed)
                if isinstance(final, ErrorEvent):
                    yield final
                    return
            yield ctx.message_event(self.name, message, usage=turn.response.usage)
            if not message.tool_calls:
                ctx.outcome = RunOutcome(
                    status="completed", final_text=message.content or "", output=final
                )
                return
            if ctx.ended:  # a model hook ended the run: no tool calls are made
                return
            transferred = False
            async for event in self._execute_calls(ctx, message.tool_calls):
                transferred = transferred or event.type == "agent.transfer"
                yield event
            if ctx.outcome.status == "paused" or transferred:  # a transfer ends the turn
                return
        error = EventError(
            type="max_iterations_exceeded",
            message=(
                f"agent {self.name!r} made {max_iterations} model calls without a final "
                "answer; raise max_iterations or check why the model keeps calling tools."
            ),
        )
        yield ctx.event(ErrorEvent, self.name, error=error)
        ctx.outcome = RunOutcome(status="failed", error=error)

    async def _model_turn(
        self, ctx: InvocationContext, request: ModelRequest, stream_text: bool, turn: _Turn
    ) -> AsyncIterator[Event]:
        """One model call between its hooks: yields the text deltas (when streamed), leaves
        the response in ``turn``."""
        async with plugin_scopes(ctx.plugins, "model", ctx, request):
            response = await self._before_model(ctx, request)
            if response is None:
                async for item in self.model.generate(request):
                    if isinstance(item, TextDelta):
                        if item.text and stream_text:
                            turn.streamed = True
                            yield ctx.event(MessageDeltaEvent, self.name, delta=item.text)
                    else:
                        response = item
                if response is None:
                    raise ModelError("the model stream ended without a complete response")
                response = await self._after_model(ctx, response)
            turn.response = response

    # --- hooks ---------------------------------------------------------------------------

    def _hooks(self, ctx: InvocationContext, step: str) -> list[tuple[str, Hook]]:
        """The hooks of ``step``: the Runner's plugins first, then this agent's callbacks."""
        hooks: list[tuple[str, Hook]] = [
            (f"plugin {plugin.name!r} {step}", getattr(plugin, step)) for plugin in ctx.plugins
        ]
        own: list[Hook] = getattr(self, f"{step}_callbacks")
        hooks += [(f"agent {self.name!r} {step}_callback", hook) for hook in own]
        return hooks

    async def _before_model(
        self, ctx: InvocationContext, request: ModelRequest
    ) -> ModelResponse | None:
        answer: ModelResponse | None = await first_answer(
            self._hooks(ctx, "before_model"), ctx, request, returns=ModelResponse
        )
        return answer

    async def _after_model(self, ctx: InvocationContext, response: ModelResponse) -> ModelResponse:
        answer: ModelResponse | None = await first_answer(
            self._hooks(ctx, "after_model"), ctx, response, returns=ModelResponse
        )
        return response if answer is None else answer

    # --- guardrails and structured output ------------------------------------------------

    def _response_format(self) -> dict[str, Any] | None:
        if self.output_schema is None:
            return None
        return {
            "type": "json_schema",
            "json_schema": {
                "name": self.output_schema.__name__,
                "schema": self.output_schema.model_json_schema(),
            },
        }

    async def _check_input(self, ctx: InvocationContext) -> None:
        """Input guardrails, on the run's user message (the newest user message)."""
        if not self.input_guardrails:
            return
        text = next(
            (
                e.message.text
                for e in reversed(ctx.session.events)
                if e.type == "message" and e.message.role == "user"
            ),
            "",
        )
        for guardrail in self.input_guardrails:
            await guardrail.run(ctx, text, "input")

    def output_of(self, final_text: str) -> Any:
        """The parsed structured output of a stored final answer (None without a schema or
        when it does not parse)."""
        if self.output_schema is None:
            return None
        try:
            parsed = self.output_schema.model_validate_json(final_text)
        except ValidationError:
            return None
        return json.loads(parsed.model_dump_json())

    async def _final_answer(self, ctx: InvocationContext, text: str, streamed: bool) -> Any:
        """Output guardrails and the output schema on the final answer: the parsed output
        (None without a schema), or the error event that ends the run (its outcome set)."""
        error: EventError | None = None
        output: Any = None
        try:
            for guardrail in self.output_guardrails:
                await guardrail.run(ctx, text, "output")
        except GuardrailTripped as exc:
            error = EventError(type=exc.error_type, message=str(exc), code=exc.guardrail)
        except CallbackError as exc:  # the guardrail failed: the answer is refused all the same
            error = EventError(type=exc.error_type, message=str(exc))
        if error is None and self.output_schema is not None:
            try:
                output = json.loads(self.output_schema.model_validate_json(text).model_dump_json())
            except ValidationError as exc:
                error = EventError(
                    type="invalid_output",
                    message=(
                        f"the answer is not JSON of {self.output_schema.__name__}: "
                        f"{exc.errors(include_url=False)[:3]}"
                    ),
                )
        if error is None:
            return output
        ctx.outcome = RunOutcome(status="failed", error=error)
        # The answer is not stored: text of it already streamed is withdrawn.
        retracts = True if streamed else None
        return ctx.event(ErrorEvent, self.name, error=error, retracts_streamed_text=retracts)

    # --- tools ---------------------------------------------------------------------------

    async def _execute_calls(
        self,
        ctx: InvocationContext,
        calls: Sequence[ToolCall],
        decisions: Mapping[str, ToolDecision] | None = None,
    ) -> AsyncIterator[Event]:
        """Run approved calls concurrently, emit results in call order, pause for the rest.

        A call the caller answered (``decisions``: the paused calls' answers, only when
        resuming, since models may reuse call IDs in later turns) goes as answered; any other
        call waits when its tool says it needs confirmation, and runs otherwise.

        Raises:
            InvalidRequestError: an answer edits a parameter its tool does not let a person
                edit; checked before any call of the turn runs.
            CallbackError: a tool's ``requires_confirmation`` function raised.
        """
        waiting: list[ToolCall] = []
        # Each call to run with its arguments, or None for a call the person refused.
        jobs: list[tuple[ToolCall, str | dict[str, Any] | None]] = []
        for call in calls:
            fn_tool = self.tools.get(call.function.name)
            decision = decisions.get(call.id) if decisions else None
            if decision is None:
                if fn_tool is not None and await fn_tool.needs_confirmation(
                    call.function.arguments
                ):
                    waiting.append(call)
                else:
                    jobs.append((call, call.function.arguments))
            elif decision is False:
                jobs.append((call, None))
            elif decision is True:
                jobs.append((call, call.function.arguments))
            else:
                if fn_tool is not None:
                    fn_tool.check_edit(call.id, call.function.arguments, decision["arguments"])
                jobs.append((call, decision["arguments"]))
        not_made = _transfers_not_made(jobs, paused=bool(waiting))
        tasks = [
            asyncio.ensure_future(
                _constant(_ToolOutcome(REFUSED))
                if arguments is None
                else _constant(not_made[index])
                if index in not_made
                else self._call_tool(ctx, call, arguments)
            )
            for index, (call, arguments) in enumerate(jobs)
        ]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # one call's hook failed the run: stop the others too
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        for (call, _), outcome in zip(jobs, results, strict=True):
            yield ctx.event(
                ToolResultEvent,
                self.name,
                message=Message.tool(call.id, outcome.content, name=call.function.name),
                state_delta=outcome.state_delta or None,
                error=outcome.error,
                usage=outcome.usage,
                artifact_delta=outcome.artifact_delta or None,
            )
        to_agent = next((outcome.transfer_to for outcome in results if outcome.transfer_to), None)
        if to_agent is not None:
            yield ctx.transfer(self.name, to_agent)
        if waiting:
            editable = {
                call.id: list(self.tools[call.function.name].editable_params)
                for call in waiting
                if self.tools[call.function.name].editable_params
            }
            yield ctx.event(
                RunPausedEvent,
                self.name,
                requested_confirmations=waiting,
                editable_params=editable or None,
            )
            ctx.outcome = RunOutcome(status="paused")

    async def _call_tool(
        self, ctx: InvocationContext, call: ToolCall, arguments: str | dict[str, Any]
    ) -> _ToolOutcome:
        """Run one call; failures become an error result the model can read and correct.

        The ``before_tool`` hooks see the validated arguments (and may change them or answer
        instead of the tool); the ``after_tool`` hooks see the rendered result.
        """
        tool_ctx: ToolContext | None = None
        transfer_to: str | None = None
        try:
            async with plugin_scopes(ctx.plugins, "tool", ctx, call):
                transfer = (
                    transfer_tool(self) if call.function.name == TRANSFER_TOOL_NAME else None
                )
                fn_tool = self.tools.get(call.function.name) or transfer
                if fn_tool is None:
                    available = ", ".join(sorted(self.tools)) or "none"
                    raise ToolNotFoundError(
                        f"there is no tool named {call.function.name!r}; available tools: "
                        f"{available}."
                    )
                args = fn_tool.parse_arguments(arguments)
                tool_ctx = ToolContext(
                    app_name=ctx.app_name,
                    user_id=ctx.user_id,
                    session_id=ctx.session.id,
                    invocation_id=ctx.invocation_id,
                    tool_call_id=call.id,
                    state=ctx.state,
                    runtime_state=ctx.runtime_state,
                    end_invocation=ctx.end_invocation,
                    escalate=ctx.escalate,
                    artifacts=ctx.artifact_scope(),
                )
                answer = await first_answer(self._hooks(ctx, "before_tool"), ctx, call, args)
                if answer is not None:
                    value = answer
                elif isinstance(fn_tool, TransferTool):  # acts on the run: see _execute_calls
                    value = fn_tool.accept(args)
                    transfer_to = args["agent_name"]
                else:
                    value = await fn_tool.call(args, tool_ctx)
                content = render_tool_result(value)
                replaced = await first_answer(
                    self._hooks(ctx, "after_tool"), ctx, call, args, content
                )
                if replaced is not None:
                    content = render_tool_result(replaced)
        except ToolError as exc:
            error = EventError(type=exc.error_type, message=str(exc))
            usage = tool_ctx.usage if tool_ctx is not None else None
            saved = tool_ctx.artifact_delta if tool_ctx is not None else {}
            return _ToolOutcome(f"Error: {exc}", error=error, usage=usage, artifact_delta=saved)
        assert tool_ctx is not None
        return _ToolOutcome(
            content,
            tool_ctx.state.delta,
            usage=tool_ctx.usage,
            transfer_to=transfer_to,
            artifact_delta=tool_ctx.artifact_delta,
        )


async def _constant(value: _ToolOutcome) -> _ToolOutcome:
    return value


def _transfers_not_made(
    jobs: Sequence[tuple[ToolCall, Any]], *, paused: bool
) -> dict[int, _ToolOutcome]:
    """The ``transfer_to_agent`` calls of a turn that are not made, by position, with their
    error results: all of them in a turn that pauses (the paused calls stay with this agent),
    else every one after the first (one transfer per turn)."""
    positions = [i for i, (call, _) in enumerate(jobs) if call.function.name == TRANSFER_TOOL_NAME]
    if paused:
        why = (
            "other calls of this turn wait for a person's confirmation; call it again once "
            "they are answered"
        )
        refused = positions
    else:
        why = "only the first transfer_to_agent call of a turn is made"
        refused = positions[1:]
    message = f"transfer_to_agent was not done: {why}."
    error = EventError(type="tool_invalid_arguments", message=message)
    return {i: _ToolOutcome(f"Error: {message}", error=error) for i in refused}
