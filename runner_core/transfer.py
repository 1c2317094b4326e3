"""Transfers: one agent hands the conversation to another of its tree.

Which agents an agent may reach (:func:`transfer_targets`):

- its sub-agents (``allow_transfer_to_sub_agents``),
- its parent (``allow_transfer_to_parent``),
- its peers, the parent's other sub-agents (``allow_transfer_to_peers``),

each on by default and switched off per agent (``LLMAgent(..., allow_transfer_to_parent=False)``,
or the same attribute on a custom :class:`~runner_core.agent.BaseAgent`). The parent and the
peers are reachable only when the parent is an :class:`~runner_core.agent.LLMAgent`: a workflow
or custom agent runs its sub-agents in its own order, so they cannot take the conversation away
from it (as in ADK).

An :class:`~runner_core.agent.LLMAgent` that can reach another agent offers the model a built-in
tool, ``transfer_to_agent(agent_name)`` (:class:`TransferTool`), whose description lists those
agents with their descriptions. A call of it ends the agent's turn with an ``agent.transfer``
event; a call naming an agent it cannot reach is a tool error the model reads and can correct.
A custom agent transfers in code: ``yield ctx.transfer(self.name, "billing")``.

The Runner goes on with the target in the same invocation (at most ``Runner(max_transfers=)``
transfers per run), and the session's next run starts with the agent the last transfer handed
to (:func:`active_agent`).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import InvalidRequestError, ToolArgumentsError
from .events import Event
from .tools import FunctionTool

if TYPE_CHECKING:
    from .agent import BaseAgent

__all__ = [
    "TRANSFER_TOOL_NAME",
    "TransferTool",
    "active_agent",
    "check_agent_tree",
    "transfer_problem",
    "transfer_targets",
    "transfer_tool",
]

logger = logging.getLogger(__name__)

#: The built-in tool's name; no tool of an LLMAgent may take it.
TRANSFER_TOOL_NAME = "transfer_to_agent"

#: The switches, read on every agent (class defaults on BaseAgent).
SWITCHES = ("allow_transfer_to_sub_agents", "allow_transfer_to_parent", "allow_transfer_to_peers")


def transfer_targets(agent: BaseAgent) -> list[BaseAgent]:
    """The agents ``agent`` may transfer to, in this order: its sub-agents, its parent, its
    peers (each as its switches allow; parent and peers only under an LLMAgent parent)."""
    from .agent import LLMAgent  # agent.py imports this module

    targets: list[BaseAgent] = []
    if agent.allow_transfer_to_sub_agents:
        targets += agent.sub_agents
    parent = agent.parent_agent
    if parent is None or not isinstance(parent, LLMAgent):
        return targets
    if agent.allow_transfer_to_parent:
        targets.append(parent)
    if agent.allow_transfer_to_peers:
        targets += [peer for peer in parent.sub_agents if peer is not agent]
    return targets


def transfer_problem(agent: BaseAgent, to_agent: str) -> str | None:
    """Why ``agent`` may not transfer to the agent named ``to_agent``; None when it may.

    The text is written for the model (a tool error it reads) and for the developer (the
    run's error when code asked for the transfer).
    """
    targets = transfer_targets(agent)
    if any(target.name == to_agent for target in targets):
        return None
    reachable = ", ".join(target.name for target in targets) or "none"
    if to_agent == agent.name:
        reason = f"{to_agent!r} is the current agent; answer without a transfer instead"
    elif agent.root_agent.find_agent(to_agent) is None:
        reason = f"there is no agent named {to_agent!r}"
    else:
        reason = (
            f"agent {agent.name!r} may not transfer to {to_agent!r} (only to its sub-agents, "
            "its parent and its peers, as its allow_transfer_to_* settings permit)"
        )
    return f"{reason}. Agents {agent.name!r} can transfer to: {reachable}."


class TransferTool(FunctionTool):
    """The built-in ``transfer_to_agent`` tool of one agent (see :func:`transfer_tool`).

    Its schema lists the agents it can reach (an ``enum`` of names, described in the tool's
    description). The agent calls :meth:`accept` instead of :meth:`call`, and after the
    turn's results emits the ``agent.transfer`` event itself: a transfer acts on the run,
    which plain tools never see. One transfer per turn, and none in a turn that pauses.
    """

    def __init__(self, agent: BaseAgent, targets: Sequence[BaseAgent]) -> None:
        super().__init__(_transfer_to_agent, name=TRANSFER_TOOL_NAME)
        self.agent = agent
        self.targets = tuple((target.name, target.description) for target in targets)
        listing = "\n".join(
            f"- {name}: {description}" if description else f"- {name}"
            for name, description in self.targets
        )
        self.description = (
            "Hand the conversation to another agent that is better suited to answer; it takes "
            "over at once and your turn ends. Call it alone, with no text of your own. Agents "
            f"you can transfer to:\n{listing}"
        )
        self.parameters["properties"]["agent_name"]["enum"] = [name for name, _ in self.targets]

    def accept(self, arguments: dict[str, Any]) -> str:
        """The result of a call (validated ``arguments``) naming an agent this agent may
        reach: ``"Transferred to billing."``.

        Raises:
            ToolArgumentsError: an unknown or unreachable agent; the model reads it and may
                call again.
        """
        to_agent: str = arguments["agent_name"]
        problem = transfer_problem(self.agent, to_agent)
        if problem is not None:
            raise ToolArgumentsError(problem)
        return f"Transferred to {to_agent}."


async def _transfer_to_agent(agent_name: str) -> str:
    """Hand the conversation to another agent.

    Args:
        agent_name: the name of the agent to hand the conversation to.
    """
    raise RuntimeError("transfer_to_agent acts on the run: the agent calls TransferTool.transfer")


#: Per agent, its tool for its current targets (rebuilt when they change).
_TOOLS: weakref.WeakKeyDictionary[BaseAgent, TransferTool] = weakref.WeakKeyDictionary()


def transfer_tool(agent: BaseAgent) -> TransferTool | None:
    """The transfer tool ``agent`` offers its model, or None when it can reach no agent."""
    targets = transfer_targets(agent)
    if not targets:
        return None
    key = tuple((target.name, target.description) for target in targets)
    cached = _TOOLS.get(agent)
    if cached is None or cached.targets != key:
        cached = _TOOLS[agent] = TransferTool(agent, targets)
    return cached


def active_agent(root: BaseAgent, events: Sequence[Event]) -> BaseAgent:
    """The agent a run of this session starts with: the one the session's last
    ``agent.transfer`` handed to, or ``root`` when there is none.

    A transfer to an agent the tree no longer has (the app changed) starts at ``root``, with a
    warning in the log.
    """
    for event in reversed(events):
        if event.type != "agent.transfer":
            continue
        agent = root.find_agent(event.to_agent)
        if agent is None:
            logger.warning(
                "the session's last transfer handed to agent %r, which agent %r's tree no "
                "longer has; starting with %r",
                event.to_agent,
                root.name,
                root.name,
            )
            return root
        return agent
    return root


def check_agent_tree(root: BaseAgent) -> None:
    """Check a tree before a Runner runs it: ``root`` is a root, every sub-agent names its
    parent, names are unique, there is no cycle, and the transfer switches are booleans.

    ``sub_agents=`` and ``add_sub_agent`` already refuse bad trees; this catches trees edited
    by hand (``agent.sub_agents.append(...)``).

    Raises:
        InvalidRequestError: naming the agent and the fix.
    """
    if root.parent_agent is not None:
        raise InvalidRequestError(
            f"agent {root.name!r} is a sub-agent of {root.parent_agent.name!r}; give the "
            f"Runner the root of its tree ({root.root_agent.name!r})."
        )
    seen: dict[str, BaseAgent] = {}
    pending = [root]
    while pending:
        agent = pending.pop()
        if agent.name in seen:
            kind = "a cycle" if seen[agent.name] is agent else "two agents with one name"
            raise InvalidRequestError(
                f"the tree of {root.name!r} has {kind} at {agent.name!r}; build trees with "
                "sub_agents= or add_sub_agent(), which check names and parents."
            )
        seen[agent.name] = agent
        for switch in SWITCHES:
            if not isinstance(getattr(agent, switch), bool):
                raise InvalidRequestError(f"agent {agent.name!r}: {switch} must be True or False.")
        for sub in agent.sub_agents:
            if sub.parent_agent is not agent:
                raise InvalidRequestError(
                    f"agent {sub.name!r} is listed in the sub_agents of {agent.name!r} but its "
                    "parent_agent is not that agent; add sub-agents with sub_agents= or "
                    "add_sub_agent(), not by editing the list."
                )
        pending += agent.sub_agents
