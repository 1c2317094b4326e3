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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import AgentRunnerError, InvalidRequestError

if TYPE_CHECKING:
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
]

Hook = Callable[..., Any]


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
