"""Which agent serves which app: the built-in ``assistant`` plus ``AGENT_RUNNER_AGENTS``.

``AGENT_RUNNER_AGENTS=support=myapp.agents:build_support,triage=myapp.triage:build`` maps app
names to factories: functions taking no arguments and returning an
:class:`~runner_core.agent.LLMAgent` or any :class:`~runner_core.agent.BaseAgent`. Factories are
imported when the worker starts (a bad path stops it with an error naming the variable) and
called once per worker process, on the worker's event loop, the first time their app is asked
for.

The built-in app ``assistant`` is a small tree of agents (docs/agents.md): the ``assistant``
LLM agent with a ``calculator`` tool, and its sub-agent ``clock`` with a ``current_time`` tool.
A question about the time is handed to ``clock`` (an ``agent.transfer``), which keeps the
session until a question it cannot answer sends it back. Both use one model:
``OpenAIModel(AGENT_RUNNER_MODEL)`` when ``OPENAI_API_KEY`` or ``OPENAI_BASE_URL`` is set, else
the offline :class:`workers.demo_model.DemoModel`, which makes the same transfers.
"""

from __future__ import annotations

import ast
import importlib
import logging
import math
import operator
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from runner_core.agent import BaseAgent, LLMAgent
from runner_core.errors import ConfigurationError, InvalidRequestError, ToolExecutionError
from runner_core.model import Model
from runner_core.openai_model import OpenAIModel
from runner_core.tools import tool

from .settings import Settings

__all__ = [
    "BUILTIN_APP",
    "CLOCK_AGENT",
    "AgentRegistry",
    "build_assistant",
    "calculator",
    "current_time",
]

logger = logging.getLogger(__name__)

BUILTIN_APP = "assistant"
#: The built-in app's sub-agent for the date and time.
CLOCK_AGENT = "clock"
AgentFactory = Callable[[], BaseAgent]

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def _evaluate(node: ast.AST) -> float | int:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value  # type: ignore[return-value]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 100:
            raise ToolExecutionError("exponent too large (the limit is 100).")
        return _BINARY[type(node.op)](left, right)  # type: ignore[no-any-return]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))  # type: ignore[no-any-return]
    raise ToolExecutionError(
        "only numbers, + - * / // % ** and parentheses are allowed in the expression."
    )


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly and return the result.

    Args:
        expression: numbers with + - * / // % ** and parentheses, e.g. "(2 + 3) * 4".
    """
    if len(expression) > 500:
        raise ToolExecutionError("expression too long (the limit is 500 characters).")
    try:
        tree = ast.parse(expression.replace("^", "**"), mode="eval")
        value = _evaluate(tree)
    except SyntaxError as exc:
        raise ToolExecutionError(f"not an arithmetic expression: {exc.msg}.") from None
    except ZeroDivisionError:
        raise ToolExecutionError("division by zero.") from None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    return str(value)


@tool
def current_time(timezone: str = "UTC") -> str:
    """The current date and time, ISO 8601.

    Args:
        timezone: an IANA time zone name such as "Europe/Paris"; default UTC.
    """
    try:
        zone = ZoneInfo(timezone) if timezone != "UTC" else UTC
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolExecutionError(
            f"unknown time zone {timezone!r}; use an IANA name like 'Europe/Paris'."
        ) from None
    return datetime.now(zone).isoformat(timespec="seconds")


def _model(settings: Settings) -> Model:
    if settings.uses_openai:
        return OpenAIModel(
            settings.model, base_url=settings.openai_base_url, api_key=settings.openai_api_key
        )
    from .demo_model import DemoModel

    logger.warning(
        "no OPENAI_API_KEY or OPENAI_BASE_URL: the 'assistant' app uses the offline demo model"
    )
    return DemoModel()


def build_assistant(settings: Settings | None = None) -> LLMAgent:
    """The built-in ``assistant`` app: the ``assistant`` agent (calculator tool) with its
    sub-agent ``clock`` (current-time tool), both on one model."""
    settings = settings or Settings.from_env()
    model = _model(settings)
    clock = LLMAgent(
        CLOCK_AGENT,
        model=model,
        description="Tells the current date and time, in any time zone.",
        instruction=(
            "You tell the current date and time: use the current_time tool, then answer "
            "briefly. For anything else, transfer back to the assistant agent."
        ),
        tools=[current_time],
    )
    return LLMAgent(
        BUILTIN_APP,
        model=model,
        description="Answers general questions and does arithmetic with a calculator.",
        instruction=(
            "You are a helpful assistant. Use the calculator tool for any arithmetic. For "
            "questions about the date or time, transfer to the clock agent. Answer briefly."
        ),
        tools=[calculator],
        sub_agents=[clock],
    )


def _import_factory(app_name: str, target: str) -> AgentFactory:
    module_name, _, attribute = target.partition(":")
    where = f"AGENT_RUNNER_AGENTS entry {app_name}={target}"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"{where}: cannot import {module_name!r} ({exc}).") from exc
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ConfigurationError(f"{where}: {module_name} has no callable {attribute!r}.")
    return factory  # type: ignore[no-any-return]


class AgentRegistry:
    """App name -> agent, for one worker process.

    Args:
        settings: the worker settings (``agents`` and the model settings).

    Raises:
        ConfigurationError: a factory in ``AGENT_RUNNER_AGENTS`` cannot be imported.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._factories: dict[str, AgentFactory] = {BUILTIN_APP: lambda: build_assistant(settings)}
        for app_name, target in settings.agents.items():
            self._factories[app_name] = _import_factory(app_name, target)
        self._agents: dict[str, BaseAgent] = {}

    @property
    def app_names(self) -> list[str]:
        return sorted(self._factories)

    def get(self, app_name: str) -> BaseAgent:
        """The agent for ``app_name``, built on first use.

        Raises:
            InvalidRequestError: no agent is configured for ``app_name``.
            ConfigurationError: the factory failed or did not return an agent.
        """
        agent = self._agents.get(app_name)
        if agent is not None:
            return agent
        factory = self._factories.get(app_name)
        if factory is None:
            raise InvalidRequestError(
                f"unknown app_name {app_name!r}; this worker serves {', '.join(self.app_names)}. "
                "Add name=module:function to AGENT_RUNNER_AGENTS on the workers."
            )
        try:
            agent = factory()
        except Exception as exc:
            raise ConfigurationError(
                f"the agent factory for app {app_name!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(agent, BaseAgent):
            raise ConfigurationError(
                f"the agent factory for app {app_name!r} returned {type(agent).__name__}, "
                "not an agent (an LLMAgent or a subclass of runner_core.BaseAgent)."
            )
        self._agents[app_name] = agent
        return agent

    async def close(self) -> None:
        """Close the models of the agents built here (every agent of each tree; a model
        shared by several agents is closed once)."""
        models = {
            id(agent.model): agent.model
            for root in self._agents.values()
            for agent in root.walk()
            if agent.model is not None
        }
        for model in models.values():
            await model.close()
        self._agents.clear()
