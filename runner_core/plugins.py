"""Callbacks, plugins and guardrails: where policy plugs into a run.

Hooks, in the order they run for each step (ADK's order): the Runner's plugins first, in the
order given, then the agent's own callbacks. The first hook that returns something other than
None short-circuits the rest, and its value is used:

- ``before_model(ctx, request)``: change ``request`` in place, or return a
  :class:`~runner_core.model.ModelResponse` to answer instead of the model.
- ``after_model(ctx, response)``: return a ``ModelResponse`` to replace the model's.
- ``before_tool(ctx, call, args)``: change ``args`` (a dict) in place, or return a result to
  skip the call (anything a tool may return).
- ``after_tool(ctx, call, args, result)``: return a result (text) to replace the tool's.

Plugins also have ``before_run(ctx)``, ``after_run(ctx, outcome)`` and ``on_event(ctx, event)``
(return an event to replace it before it is stored and handed out).

Scopes: a plugin may wrap each step in an async context manager, for what must start before a
step and end after it whatever happens (a tracing span, a timer): ``run_scope(ctx)``,
``agent_scope(ctx, agent)``, ``model_scope(ctx, request)``, ``tool_scope(ctx, call)`` return
one, or None. Entered in plugin order and exited in reverse, each is exited exactly once,
with the exception that ended the step (a ``ModelError``, a ``ToolError`` the model then reads,
a cancellation, ``GeneratorExit`` when the agent's run was closed early), and never swallows
it. Code inside a scope runs in the context it entered (``contextvars``), so a tracing span it
makes current is the parent of what the step does. When a run's scopes exit,
``ctx.outcome`` says how the run ended (``cancelled`` and ``timeout`` included).

Hooks may be plain or ``async`` functions. An exception inside any hook, or a returned value of
the wrong type, ends the run with an ``error`` event (``type`` ``callback_error``, naming the
hook) and a ``failed`` completion.

Guardrails check the user's input before the first model call (``input_guardrails``) and the
final answer before it is stored (``output_guardrails``): a guardrail returns None to let it
pass, or the reason (text) it trips. A tripped guardrail ends the run with an ``error`` event of
type ``input_guardrail_tripped`` / ``output_guardrail_tripped`` (``code``: the guardrail's name)
and a ``failed`` completion.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import AgentRunnerError, InvalidRequestError

if TYPE_CHECKING:
    from .agent import BaseAgent
    from .events import Event
    from .invocation import InvocationContext, RunOutcome
    from .messages import ToolCall
    from .model import ModelRequest, ModelResponse

__all__ = [
    "CallbackError",
    "Guardrail",
    "GuardrailTripped",
    "Plugin",
    "call_hook",
    "first_answer",
    "hook_list",
    "plugin_scopes",
]

Hook = Callable[..., Any]
#: What a scope hook returns: an async context manager around the step, or None.
Scope = AbstractAsyncContextManager[Any] | None


class CallbackError(AgentRunnerError):
    """A callback, plugin hook or guardrail raised; the run ends ``failed``."""

    error_type = "callback_error"


class GuardrailTripped(AgentRunnerError):
    """A guardrail refused the input or the answer; the run ends ``failed``.

    Attributes:
        guardrail: the guardrail's name (the error event's ``code``).
        stage: ``input`` or ``output``.
    """

    def __init__(self, guardrail: str, stage: str, reason: str) -> None:
        super().__init__(f"{stage} guardrail {guardrail!r} tripped: {reason}")
        self.guardrail = guardrail
        self.stage = stage
        self.error_type = f"{stage}_guardrail_tripped"


class Plugin:
    """Runner-wide hooks (``Runner(..., plugins=[...])``); override the ones you need.

    Every hook defaults to doing nothing (returning None). See the module docstring for what a
    returned value does.
    """

    #: Names the plugin in errors.
    name: str = "plugin"

    async def before_run(self, ctx: InvocationContext) -> None:
        return None

    async def after_run(self, ctx: InvocationContext, outcome: RunOutcome) -> None:
        return None

    async def on_event(self, ctx: InvocationContext, event: Event) -> Event | None:
        return None

    async def after_event(self, ctx: InvocationContext, event: Event) -> None:
        """Observe an event once it has its ``seq`` and is stored (``message.delta``:
        numbered), just before it is handed out; the ``runner.completion`` too, as the last
        call of the run. For recorders (execution traces); the return value is ignored.

        Not called for the events a redelivered run hands out again, nor for markers
        (``run.restarted``). The event is handed out even when the hook raises; an exception
        then fails the run like any hook's, except on the completion, where it is logged
        (the run has ended) and the completion is handed out as it is.
        """
        return None

    async def after_session_deleted(self, app_name: str, user_id: str, session_id: str) -> None:
        """A session was deleted with :meth:`Runner.delete_session`: delete what the plugin
        keeps for it (a trace recorder: the session's traces). An exception propagates to the
        caller once every plugin was called; the session is gone already."""
        return None

    async def before_model(
        self, ctx: InvocationContext, request: ModelRequest
    ) -> ModelResponse | None:
        return None

    async def after_model(
        self, ctx: InvocationContext, response: ModelResponse
    ) -> ModelResponse | None:
        return None

    async def before_tool(
        self, ctx: InvocationContext, call: ToolCall, args: dict[str, Any]
    ) -> Any | None:
        return None

    async def after_tool(
        self, ctx: InvocationContext, call: ToolCall, args: dict[str, Any], result: str
    ) -> str | None:
        return None

    # Scopes (see the module docstring): an async context manager around the step, or None.

    def run_scope(self, ctx: InvocationContext) -> Scope:
        """Around the run, from before the ``before_run`` hooks to the completion."""
        return None

    def agent_scope(self, ctx: InvocationContext, agent: BaseAgent) -> Scope:
        """Around one run of an agent of the tree (the root's, a sub-agent's, a transfer's
        target's; on a parallel agent's branch, in the branch's task)."""
        return None

    def model_scope(self, ctx: InvocationContext, request: ModelRequest) -> Scope:
        """Around one model call, its ``before_model``/``after_model`` hooks included."""
        return None

    def tool_scope(self, ctx: InvocationContext, call: ToolCall) -> Scope:
        """Around one tool call: argument parsing, ``before_tool`` hooks, the tool,
        ``after_tool`` hooks. A failed call exits with its ``ToolError``."""
        return None


@dataclass(frozen=True, slots=True)
class Guardrail:
    """A named check: ``check(ctx, text)`` returns None to pass, or why it trips."""

    name: str
    check: Hook

    @classmethod
    def of(cls, item: Guardrail | Hook) -> Guardrail:
        if isinstance(item, Guardrail):
            return item
        if not callable(item):
            raise InvalidRequestError(
                f"a guardrail must be a Guardrail or a function (ctx, text) -> reason | None, "
                f"got {type(item).__name__}."
            )
        return cls(getattr(item, "__name__", type(item).__name__), item)

    async def run(self, ctx: InvocationContext, text: str, stage: str) -> None:
        """Raises :class:`GuardrailTripped` when the check returns a reason."""
        reason = await call_hook(f"{stage} guardrail {self.name!r}", self.check, ctx, text)
        if reason is not None:
            raise GuardrailTripped(self.name, stage, str(reason))


def hook_list(value: Hook | Sequence[Hook] | None, what: str) -> list[Hook]:
    """One callable, a list of them, or None, as a list; anything else is refused."""
    if value is None:
        return []
    items: Iterable[Any] = [value] if callable(value) else value
    hooks = list(items)
    for hook in hooks:
        if not callable(hook):
            raise InvalidRequestError(
                f"{what} must be a function or a list of functions, got {type(hook).__name__}."
            )
    return hooks


async def call_hook(where: str, hook: Hook, *args: Any) -> Any:
    """Call a plain or async hook.

    Raises:
        CallbackError: the hook raised (naming ``where``); the run ends ``failed``.
    """
    try:
        value = hook(*args)
        if inspect.isawaitable(value):
            value = await value
    except AgentRunnerError:
        raise
    except Exception as exc:
        raise CallbackError(f"{where} raised {type(exc).__name__}: {exc}") from exc
    return value


async def first_answer(
    hooks: Sequence[tuple[str, Hook]], *args: Any, returns: type | None = None
) -> Any:
    """Run ``(name, hook)`` pairs in order; the first value other than None, else None.

    Raises:
        CallbackError: a hook raised, or returned something that is not a ``returns``.
    """
    for where, hook in hooks:
        value = await call_hook(where, hook, *args)
        if value is None:
            continue
        if returns is not None and not isinstance(value, returns):
            raise CallbackError(
                f"{where} returned {type(value).__name__}; return None or a {returns.__name__}."
            )
        return value
    return None


_NO_SCOPES: AbstractAsyncContextManager[None] = nullcontext()


def plugin_scopes(
    plugins: Sequence[Plugin], step: str, *args: Any
) -> AbstractAsyncContextManager[None]:
    """The plugins' ``{step}_scope(*args)`` around a step: entered in order, exited in reverse,
    each exactly once with the exception that ended the step, which goes on (a scope cannot
    swallow it).

    Raises:
        CallbackError: a scope hook raised, or returned something that is not an async
            context manager (or None).
    """
    if not plugins:  # the common case costs no generator
        return _NO_SCOPES
    return _plugin_scopes(plugins, step, *args)


@asynccontextmanager
async def _plugin_scopes(plugins: Sequence[Plugin], step: str, *args: Any) -> AsyncIterator[None]:
    entered: list[tuple[str, AbstractAsyncContextManager[Any]]] = []
    try:
        for plugin in plugins:
            where = f"plugin {plugin.name!r} {step}_scope"
            scope = await call_hook(where, getattr(plugin, f"{step}_scope"), *args)
            if scope is None:
                continue
            if not isinstance(scope, AbstractAsyncContextManager):
                raise CallbackError(
                    f"{where} returned {type(scope).__name__}; return None or an async "
                    "context manager."
                )
            await call_hook(where, scope.__aenter__)
            entered.append((where, scope))
        yield
    except BaseException as exc:
        await _exit_scopes(entered, exc)
        raise
    else:
        error = await _exit_scopes(entered, None)
        if error is not None:
            raise error


async def _exit_scopes(
    entered: list[tuple[str, AbstractAsyncContextManager[Any]]], exc: BaseException | None
) -> CallbackError | None:
    """Exit ``entered`` in reverse with ``exc``; the first scope that failed on the way out
    (every scope is exited all the same)."""
    first: CallbackError | None = None
    exc_type = type(exc) if exc is not None else None
    traceback = exc.__traceback__ if exc is not None else None
    for where, scope in reversed(entered):
        try:
            await call_hook(where, scope.__aexit__, exc_type, exc, traceback)
        except CallbackError as error:
            first = first or error
        except AgentRunnerError as error:
            first = first or CallbackError(f"{where} raised {type(error).__name__}: {error}")
    return first
