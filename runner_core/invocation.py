"""The invocation context: what an agent knows about the run it is executing.

A custom agent (:class:`~runner_core.agent.BaseAgent`) gets one in ``run(ctx)``: the session
and its state, the run's options (``run_config``) and the caller's ``runtime_state``, the
plugins, and ``end_invocation()``. It builds its events with :meth:`InvocationContext.event`
and says how the run ended by setting ``ctx.outcome``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from .artifacts import NO_ARTIFACT_SERVICE, ArtifactScope, ArtifactService
from .errors import InvalidRequestError
from .events import AgentTransferEvent, EventBase, EventError, MessageEvent, RunStatus
from .messages import Message
from .run_config import RunConfig
from .session import TEMP_PREFIX, Session

if TYPE_CHECKING:
    from .plugins import Plugin

__all__ = ["InvocationContext", "RunOutcome", "ToolDecision"]

E = TypeVar("E", bound=EventBase)
#: Event types :meth:`InvocationContext.emit` refuses: the Runner's and the workers' own.
_NOT_EMITTED = frozenset(
    {"message.delta", "run.paused", "run.queued", "run.restarted", "runner.completion"}
)

#: A caller's answer to a paused tool call: approve, refuse, or approve with edited arguments.
ToolDecision = bool | dict[str, Any]


@dataclass(slots=True)
class RunOutcome:
    """How the agent ended the run; the Runner turns it into the completion event."""

    status: RunStatus = "completed"
    final_text: str | None = None
    error: EventError | None = None
    #: The parsed structured output (an agent with an ``output_schema``), as JSON values.
    output: Any = None


@dataclass(slots=True)
class InvocationContext:
    app_name: str
    user_id: str
    session: Session
    invocation_id: str
    request_id: str | None = None
    tool_confirmations: dict[str, ToolDecision] = field(default_factory=dict)
    #: ``temp:`` state of this invocation only; never stored or published.
    temp_state: dict[str, Any] = field(default_factory=dict)
    outcome: RunOutcome = field(default_factory=RunOutcome)
    #: This run's options (``Runner.run(..., run_config=...)``).
    run_config: RunConfig = field(default_factory=RunConfig)
    #: The Runner's plugins, run before the agent's own callbacks.
    plugins: list[Plugin] = field(default_factory=list)
    #: Set by :meth:`end_invocation`: the agent stops at its next step.
    ended: bool = False
    #: The branch of the agent tree this context runs on (a parallel agent's sub-agents each
    #: get their own: ``"fanout.researcher"``); None on the main line. Stamped on events.
    branch: str | None = None
    #: Set by :meth:`escalate`: a loop agent stops repeating its sub-agents.
    escalated: bool = False
    #: The agent a transfer asked for (set with the ``agent.transfer`` event); the Runner
    #: goes on with it.
    transfer_to: str | None = None
    #: How many runs each agent started, per (segment, agent, branch): where a redelivered
    #: or resumed invocation stands (:mod:`runner_core.progress`). Shared by the contexts of
    #: a parallel agent's branches.
    runs_started: dict[tuple[int, str, str | None], int] = field(default_factory=dict, repr=False)
    #: Events hooks and tools added with :meth:`emit`, not recorded yet. Shared by the
    #: contexts of a parallel agent's branches.
    emitted: list[EventBase] = field(default_factory=list, repr=False)
    #: Where the run's artifacts live (``Runner(artifact_service=)``); None: no artifacts.
    artifact_service: ArtifactService | None = field(default=None, repr=False)
    #: The run's fencing token (a worker's lease), carried by the artifact writes it makes.
    fence: int | None = None
    #: The distributed trace this run belongs to (32 hex digits), set by a tracing plugin
    #: (:class:`runner_core.telemetry.Telemetry`); the completion carries it as ``trace_id``.
    trace_id: str | None = None

    def artifact_scope(self) -> ArtifactScope | None:
        """A new view of the session's artifacts with an empty delta (one per step, e.g. per
        tool call), or None when the run has no artifact store."""
        if self.artifact_service is None:
            return None
        return ArtifactScope(
            self.artifact_service,
            app_name=self.app_name,
            user_id=self.user_id,
            session_id=self.session.id,
            fence=self.fence,
        )

    @property
    def artifacts(self) -> ArtifactScope:
        """The session's artifacts, for a custom agent or a callback: ``await
        ctx.artifacts.save(name, data)`` returns the version; put ``{name: version}`` in the
        ``artifact_delta`` of the event the step yields.

        Raises:
            InvalidRequestError: the run has no artifact store.
        """
        scope = self.artifact_scope()
        if scope is None:
            raise InvalidRequestError(NO_ARTIFACT_SERVICE)
        return scope

    @property
    def runtime_state(self) -> Mapping[str, Any]:
        """What the caller passed for this run (``run_config.runtime_state``), read-only;
        never stored or published."""
        return MappingProxyType(self.run_config.runtime_state)

    def escalate(self) -> None:
        """Ask the enclosing loop agent to stop repeating (a tool or callback may call it)."""
        self.escalated = True

    def end_invocation(self) -> None:
        """End the run after the current step (a callback or tool may call it): no more model
        or tool calls; the run completes with ``ctx.outcome`` as it stands."""
        self.ended = True

    def event(self, cls: type[E], author: str, **fields: Any) -> E:
        """A new event of this invocation, on this context's branch; the Runner numbers it
        (``seq``) on emission."""
        if self.branch is not None:
            fields.setdefault("branch", self.branch)
        return cls(invocation_id=self.invocation_id, author=author, **fields)

    def emit(self, event: EventBase) -> None:
        """Add an event to the run from a hook, callback or tool (built with :meth:`event`):
        the Runner records it (numbers, stores and hands it out, through the plugins'
        ``on_event``) before the agent's next event, or when the agent's run ends. Events
        still waiting when the run fails are dropped.

        Raises:
            InvalidRequestError: it is not an event of this invocation, or of a type only the
                Runner and workers write (``message.delta``, ``run.*``, ``runner.completion``).
        """
        if not isinstance(event, EventBase) or event.invocation_id != self.invocation_id:
            raise InvalidRequestError(
                "ctx.emit takes an event of this invocation; build it with ctx.event(...)."
            )
        if event.type in _NOT_EMITTED:
            raise InvalidRequestError(
                f"ctx.emit cannot add a {event.type!r} event; only the Runner writes those."
            )
        self.emitted.append(event)

    def message_event(self, author: str, message: Message, **fields: Any) -> MessageEvent:
        return self.event(MessageEvent, author, message=message, **fields)

    def transfer(self, author: str, to_agent: str) -> AgentTransferEvent:
        """The ``agent.transfer`` event handing the conversation from ``author`` to
        ``to_agent``; sets :attr:`transfer_to`. A custom agent yields it and ends its run; the
        Runner checks that ``author`` may reach ``to_agent`` (else the run fails) and goes on
        with ``to_agent`` (:mod:`runner_core.transfer`)."""
        self.transfer_to = to_agent
        return self.event(AgentTransferEvent, author, to_agent=to_agent)

    @property
    def state(self) -> dict[str, Any]:
        """Session state as this invocation sees it, ``temp:`` keys included."""
        if not self.temp_state:
            return self.session.state
        merged = dict(self.session.state)
        merged.update(self.temp_state)
        return merged

    def note_temp_state(self, delta: dict[str, Any]) -> None:
        for key, value in delta.items():
            if key.startswith(TEMP_PREFIX):
                self.temp_state[key] = value
