"""Memory injection: a plugin that tells each agent what long-term memory holds for the task.

``Runner(..., memory_service=memory)`` adds a :class:`MemoryInjection` (or put one in
``plugins=`` yourself to set its options). Through the public plugin hooks, for every run of
an agent of the tree (``agent_scope``):

- at the agent's first model call of that run (``before_model``), it searches the agent's
  scope (``agent:{name}``) with the user's request, for skills and for experiences (one pass,
  :meth:`~runner_core.memory.MemoryService.search_each_kind`), and puts
  what it found into the system prompt under seed 003's two sections, ``## Relevant skills``
  and ``## Relevant experiences`` (a system message is added when the agent has no
  instruction). The same text goes into every later model call of that run, since each call
  is built afresh from the session;
- once per such search, it adds a ``memory.injected`` event (``ctx.emit``): the scope, the
  query and the items with their IDs and scores. The trace recorder turns it into the run's
  ``memory_read`` step;
- a ``load_memory`` tool call (:data:`load_memory`, in the agent's ``tools``) is answered here
  (``before_tool``) with a search of the agent's, the user's and the app's scopes.

A memory store that fails does not fail the run: the agent runs without memory and the
failure is logged.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import InvalidRequestError, MemoryBackendError, ToolExecutionError
from .events import InjectedMemory, MemoryInjectedEvent
from .memory import (
    APP_SCOPE,
    MAX_QUERY_CHARS,
    MemoryHit,
    MemoryKind,
    MemoryService,
    agent_scope,
    user_scope,
)
from .memory_items import CONTROL_RE
from .messages import Message
from .plugins import Plugin
from .tools import FunctionTool

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from .agent import BaseAgent
    from .invocation import InvocationContext
    from .messages import ToolCall
    from .model import ModelRequest, ModelResponse

__all__ = [
    "EXPERIENCES_HEADING",
    "LOAD_MEMORY",
    "SKILLS_HEADING",
    "MemoryInjection",
    "load_memory",
    "memory_sections",
]

logger = logging.getLogger(__name__)

LOAD_MEMORY = "load_memory"
SKILLS_HEADING = "## Relevant skills"
EXPERIENCES_HEADING = "## Relevant experiences"
#: The most characters of an item's text a ``memory.injected`` event carries.
EVENT_TEXT_CHARS = 200


async def _load_memory(query: str) -> str:
    raise ToolExecutionError(
        "load_memory needs long-term memory: run the agent with Runner(memory_service=...) "
        "(workers: AGENT_RUNNER_MEMORY_URL)."
    )


#: A tool for an agent's ``tools``: the model searches long-term memory on demand. The
#: :class:`MemoryInjection` plugin answers its calls.
load_memory = FunctionTool(
    _load_memory,
    name=LOAD_MEMORY,
    description=(
        "Search long-term memory (skills, experiences learnt from feedback, facts about the "
        "user) for what is relevant to a query. Returns the best matches, one per line."
    ),
)


def memory_sections(skills: list[MemoryHit], experiences: list[MemoryHit]) -> str:
    """The system prompt's memory sections (seed 003): skills as their own text blocks,
    experiences as a list. Empty when nothing was found."""
    parts = []
    if skills:
        parts.append(SKILLS_HEADING + "\n" + "\n\n".join(h.item.to_prompt_text() for h in skills))
    if experiences:
        lines = "\n".join(f"- {h.item.to_prompt_text()}" for h in experiences)
        parts.append(EXPERIENCES_HEADING + "\n" + lines)
    return "\n\n".join(parts)


def request_text(ctx: InvocationContext) -> str:
    """The run's user request, fit to search with: the newest user message of the session,
    control characters made spaces, cut to the query limit."""
    text = next(
        (
            event.message.text
            for event in reversed(ctx.session.events)
            if event.type == "message" and event.message.role == "user"
        ),
        "",
    )
    return CONTROL_RE.sub(" ", text)[:MAX_QUERY_CHARS].strip()


@dataclass(slots=True)
class _AgentRun:
    """One run of one agent: what was injected into its model calls."""

    agent_name: str
    searched: bool = False
    sections: str = ""


class MemoryInjection(Plugin):
    """Injects long-term memory into agents' system prompts (see the module docstring).

    Args:
        memory_service: where memory lives (not closed by the plugin).
        skills_limit, experiences_limit: the most skills and experiences injected.
        load_memory_limit: the most items a ``load_memory`` call returns.
    """

    name = "memory"

    def __init__(
        self,
        memory_service: MemoryService,
        *,
        skills_limit: int = 3,
        experiences_limit: int = 5,
        load_memory_limit: int = 5,
    ) -> None:
        if not isinstance(memory_service, MemoryService):
            raise InvalidRequestError(
                "memory_service must be a runner_core.memory.MemoryService (e.g. "
                f"InMemoryMemoryService()), got {type(memory_service).__name__}."
            )
        for option, value in (
            ("skills_limit", skills_limit),
            ("experiences_limit", experiences_limit),
            ("load_memory_limit", load_memory_limit),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
                raise InvalidRequestError(f"{option} must be a whole number from 0 to 100.")
        self.memory = memory_service
        self.skills_limit = skills_limit
        self.experiences_limit = experiences_limit
        self.load_memory_limit = load_memory_limit
        #: The agent runs under way, per (invocation, branch), innermost last.
        self._runs: dict[tuple[str, str | None], list[_AgentRun]] = {}

    # --- which agent -----------------------------------------------------------------------

    def agent_scope(
        self, ctx: InvocationContext, agent: BaseAgent
    ) -> AbstractAsyncContextManager[None]:
        return self._agent_run(ctx, agent.name)

    @asynccontextmanager
    async def _agent_run(self, ctx: InvocationContext, agent_name: str) -> AsyncIterator[None]:
        key = (ctx.invocation_id, ctx.branch)
        stack = self._runs.setdefault(key, [])
        stack.append(_AgentRun(agent_name))
        try:
            yield
        finally:
            stack.pop()
            if not stack:
                self._runs.pop(key, None)

    def _current(self, ctx: InvocationContext) -> _AgentRun | None:
        stack = self._runs.get((ctx.invocation_id, ctx.branch))
        return stack[-1] if stack else None

    # --- injection -------------------------------------------------------------------------

    async def before_model(
        self, ctx: InvocationContext, request: ModelRequest
    ) -> ModelResponse | None:
        run = self._current(ctx)
        if run is None:
            return None
        if not run.searched:
            run.searched = True
            run.sections = await self._search(ctx, run.agent_name)
        if run.sections:
            messages = request.messages
            if messages and messages[0].role == "system":
                instruction = messages[0].content or ""
                messages[0] = Message.system(f"{instruction}\n\n{run.sections}".lstrip())
            else:
                messages.insert(0, Message.system(run.sections))
        return None

    async def _search(self, ctx: InvocationContext, agent_name: str) -> str:
        """Search the agent's scope with the request; emit ``memory.injected``; the sections."""
        query = request_text(ctx)
        if not query or not (self.skills_limit or self.experiences_limit):
            return ""
        scope = agent_scope(agent_name)
        try:
            limits: dict[MemoryKind, int] = {
                "skill": self.skills_limit,
                "experience": self.experiences_limit,
            }
            found = await self.memory.search_each_kind(
                ctx.app_name,
                query,
                scopes=scope,
                limits={kind: n for kind, n in limits.items() if n},
            )
            skills, experiences = found.get("skill", []), found.get("experience", [])
        except (MemoryBackendError, InvalidRequestError) as exc:
            logger.warning(
                "run %s: agent %r runs without long-term memory: %s",
                ctx.invocation_id,
                agent_name,
                exc,
            )
            return ""
        items = [
            InjectedMemory(
                id=hit.item.id,
                kind=hit.item.kind,
                score=round(hit.score, 6),
                text=hit.item.to_prompt_text()[:EVENT_TEXT_CHARS],
            )
            for hit in [*skills, *experiences]
        ]
        ctx.emit(
            ctx.event(
                MemoryInjectedEvent,
                agent_name,
                scope=scope,
                query=query[:EVENT_TEXT_CHARS * 2],
                items=items,
            )
        )
        return memory_sections(skills, experiences)

    # --- load_memory -----------------------------------------------------------------------

    async def before_tool(
        self, ctx: InvocationContext, call: ToolCall, args: dict[str, Any]
    ) -> Any | None:
        if call.function.name != LOAD_MEMORY:
            return None
        run = self._current(ctx)
        scopes = [user_scope(ctx.user_id), APP_SCOPE]
        if run is not None:
            scopes.insert(0, agent_scope(run.agent_name))
        query = args.get("query")
        if not isinstance(query, str):
            raise ToolExecutionError("load_memory needs a query: the words to search for.")
        try:
            hits = await self.memory.search(
                ctx.app_name, query, scopes=scopes, limit=self.load_memory_limit
            )
        except InvalidRequestError as exc:
            raise ToolExecutionError(f"bad query for load_memory: {exc}") from exc
        except MemoryBackendError as exc:
            raise ToolExecutionError(f"long-term memory is unavailable: {exc}") from exc
        if not hits:
            return "Nothing in memory matches that query."
        return "\n".join(f"- [{hit.item.kind}] {hit.item.to_prompt_text()}" for hit in hits)
