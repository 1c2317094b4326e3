"""Agent as a tool: one agent calls another like a function, and the callee has its own history.

::

    researcher = LLMAgent(
        "researcher", model=model, description="Finds facts about a topic.", tools=[search]
    )
    writer = LLMAgent("writer", model=model, tools=[AgentTool(researcher)])

The calling model sees a tool named after the agent, described by the agent's ``description``,
with one ``request`` string. Each call runs the agent to the end on its own, as issue 15's
history rule has it: *an agent called as a tool sees only its input*.

- **History.** The agent runs on a fresh in-memory session that holds only ``request``, as a
  user message. It never sees the caller's conversation, and its own turns never enter the
  caller's session.
- **Events.** Its events are neither published on the caller's stream nor stored in the
  caller's session (its text is not streamed either): the caller's stream shows the call's one
  ``tool.result``.
- **State.** It starts with a copy of the caller's session state (without ``temp:`` keys). The
  state it writes comes back as the tool's state writes, so the caller's ``tool.result``
  carries it in ``state_delta`` (a failed call writes nothing, as for any tool).
- **Options.** It gets the run's ``runtime_state``, read-only. Nothing else of the caller's
  ``run_config`` applies: its model, generation settings and ``max_iterations`` are its own.
- **Result.** The tool result is its final answer's text, or its structured ``output`` (an
  agent with an ``output_schema``) as JSON text.
- **Failures.** A run that does not complete (a model error, a tripped guardrail, invalid
  structured output, ``max_iterations`` reached, one of its tools asking for a person's
  confirmation) becomes an error result (``tool_execution_error``) that says how it ended. The
  calling model reads that error, and the caller's run goes on.
- **Artifacts.** With the caller's artifact store, the agent's tools save into a session of the
  call's own; once its run completes, the latest version of each artifact it saved there is
  saved into the caller's session through the caller's context (so the caller's ``tool.result``
  records it in ``artifact_delta``, and the caller's fence guards it), and the call's own
  session's artifacts are deleted. ``user:`` artifacts are the user's, shared as they are.
- **Usage.** The run's usage is the ``usage`` of the ``tool.result`` event and counts in the
  caller's totals, for a failed run too. The caller's completion prices its whole usage
  (``cost``) at the calling agent's model price.
- **Hooks.** An ``AgentTool`` is a :class:`~runner_core.tools.FunctionTool`: the caller's
  ``before_tool``/``after_tool`` callbacks and plugins see the call like any other, and
  ``requires_confirmation`` works as for any tool. The wrapped agent's own callbacks and
  guardrails run; the caller's Runner plugins do not run inside it (it is a run of its own).
- **Trees.** The tool runs the agent as the root of a run of its own: it may have sub-agents
  (its transfers stay among them), but it may not be a sub-agent itself, since a tool's run
  has no place for its parent and peers. Build another agent for the tool instead.
- **Redelivery.** A call whose result was not stored before its worker died runs the agent
  again from the start. Its run's invocation ID comes from the call's ``idempotency_key``, so
  the repeat has the same invocation ID.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import Any

from .agent import BaseAgent
from .artifacts import ArtifactService
from .errors import InvalidRequestError, ToolError, ToolExecutionError
from .events import RunCompletionEvent, Usage, state_delta_of
from .memory_sessions import InMemorySessionService
from .run_config import RunConfig
from .runner import Runner
from .session import TEMP_PREFIX, USER_PREFIX
from .tools import _NAME_RE, Confirmation, FunctionTool, ToolContext

__all__ = ["AgentTool"]


class AgentTool(FunctionTool):
    """An agent that another agent calls as a tool (see the module docstring for the rules).

    Args:
        agent: the agent to run: an :class:`~runner_core.agent.LLMAgent` or any
            :class:`~runner_core.agent.BaseAgent`.
        name: the tool's name (default: the agent's name).
        description: what the calling model reads about the tool (default: the agent's
            description).
        requires_confirmation, editable_params: as for
            :class:`~runner_core.tools.FunctionTool`; the only parameter is ``request``.

    Raises:
        InvalidRequestError: ``agent`` is not an agent or is a sub-agent of another, or the
            tool's name (the agent's, by default) is not 1-64 letters, digits, ``_`` or ``-``.
    """

    def __init__(
        self,
        agent: BaseAgent,
        *,
        name: str | None = None,
        description: str | None = None,
        requires_confirmation: Confirmation = False,
        editable_params: Iterable[str] | None = None,
    ) -> None:
        if not isinstance(agent, BaseAgent):
            raise InvalidRequestError(
                f"AgentTool needs an agent (an LLMAgent or a BaseAgent), got "
                f"{type(agent).__name__}."
            )
        if agent.parent_agent is not None:
            raise InvalidRequestError(
                f"agent {agent.name!r} is a sub-agent of {agent.parent_agent.name!r}, so it "
                "cannot also run as a tool (a tool runs its agent as the root of a run of its "
                "own); build another agent for the tool."
            )
        if name is None and not _NAME_RE.fullmatch(agent.name):
            raise InvalidRequestError(
                f"agent {agent.name!r} cannot name a tool (tool names are 1-64 letters, "
                "digits, '_' or '-'); pass AgentTool(agent, name=...)."
            )
        self.agent = agent
        tool_name = name or agent.name
        if description is None:
            description = agent.description or (
                f"Ask the agent {tool_name!r}. It sees only the request, so put in it "
                "everything it needs."
            )
        super().__init__(
            self._ask,
            name=tool_name,
            description=description,
            requires_confirmation=requires_confirmation,
            editable_params=editable_params,
        )

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        """Run the agent on ``arguments["request"]``; its answer (or structured output as
        JSON text).

        Raises:
            ToolExecutionError: its run did not complete (the message says how it ended), or
                running it raised.
        """
        try:
            return await self._ask(**arguments, context=context)
        except ToolError:
            raise
        except Exception as exc:
            raise ToolExecutionError(
                f"tool {self.name!r} could not run agent {self.agent.name!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    async def _ask(self, request: str, context: ToolContext) -> str:
        """Run the agent on the request alone.

        Args:
            request: what to ask the agent. It sees nothing else of this conversation, so
                include everything it needs to know.
        """
        initial_state = {
            key: value for key, value in context.state.items() if not key.startswith(TEMP_PREFIX)
        }
        run_config = RunConfig(streaming=False, runtime_state=dict(context.runtime_state))
        invocation_id = uuid.uuid5(uuid.NAMESPACE_URL, context.idempotency_key).hex
        state_writes: dict[str, Any] = {}
        service = InMemorySessionService()
        artifacts = context.artifacts.service if context.artifacts is not None else None
        session_id: str | None = None
        try:
            session = await service.create_session(
                context.app_name, context.user_id, state=initial_state
            )
            session_id = session.id
            runner = Runner(
                context.app_name, self.agent, session_service=service, artifact_service=artifacts
            )
            stream = runner.run(
                context.user_id,
                session.id,
                request,
                invocation_id=invocation_id,
                run_config=run_config,
            )
            async with stream:  # leaving early (the caller cancelled) stops the run first
                async for event in stream:
                    state_writes.update(state_delta_of(event))
                completion = await stream.completion()
            if artifacts is not None and completion.status == "completed":
                await _adopt_artifacts(artifacts, context, session.id)
        finally:
            await service.close()
            if artifacts is not None and session_id is not None:
                await artifacts.delete_session_artifacts(
                    context.app_name, context.user_id, session_id
                )
        if completion.usage != Usage():
            context.add_usage(completion.usage)
        if completion.status != "completed":
            raise ToolExecutionError(self._failure(completion))
        for key, value in state_writes.items():
            context.state[key] = value
        if completion.output is not None:
            return json.dumps(completion.output)
        return completion.final_text or ""

    def _failure(self, completion: RunCompletionEvent) -> str:
        """What the calling model reads when the agent's run did not complete."""
        agent = self.agent.name
        if completion.status == "paused":
            return (
                f"agent {agent!r} stopped to ask a person to confirm a tool call, which an "
                "agent called as a tool cannot do; it did not answer. (Developers: set "
                "requires_confirmation on the AgentTool instead of on the agent's tools.)"
            )
        error = completion.error
        if error is None:
            return f"agent {agent!r} ended {completion.status} without an answer."
        return f"agent {agent!r} failed ({error.type}): {error.message}"

    def __repr__(self) -> str:
        return f"AgentTool(agent={self.agent.name!r}, name={self.name!r})"


async def _adopt_artifacts(store: ArtifactService, context: ToolContext, session_id: str) -> None:
    """Save the latest version of each artifact the agent saved in its own session into the
    caller's session, through the caller's context."""
    for name in await store.list_artifact_names(context.app_name, context.user_id, session_id):
        if name.startswith(USER_PREFIX):
            continue  # the user's already: shared as it is
        artifact = await store.load_artifact(context.app_name, context.user_id, session_id, name)
        if artifact is not None:
            await context.save_artifact(name, artifact.data, content_type=artifact.content_type)
