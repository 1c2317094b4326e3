"""Building the model's context from a session.

The history sent to the model is always a valid chat: every assistant tool call is followed by
one result per call. A session that ends with unanswered calls (a cancelled or crashed run, or a
paused run that the caller moved past without resuming) gets a "not executed" result in the
context it sends; nothing is written to the session for it.

In a tree of agents, an agent sees the whole conversation, but only its own turns as assistant
turns: another agent's text, tool calls and tool results come as a user message of context
attributed to that agent (as ADK does), e.g. ``For context:\n[billing] said: ...``. Its own
tool calls keep their results, so the chat stays valid, and the model does not take another
agent's words (or a transfer it did not make) for its own.

Branches (a parallel agent's sub-agents each run on one, see :mod:`runner_core.workflow`): an
agent on a branch sees the main line (the history up to the fork), its own branch and the
branches forked below it, never a sibling branch's turns (:func:`sees_branch`). The main line
sees every branch, so the agent after a fan-out reads what each branch found; the turns of
concurrent branches are regrouped branch by branch (:func:`branch_view`), so each branch's
tool calls stay next to their results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .events import Event, MessageEvent, ToolResultEvent
from .messages import Message, ToolCall
from .session import Session, Summary

__all__ = [
    "BRANCH_KEY_PREFIX",
    "CONTEXT_PREFIX",
    "NOT_EXECUTED",
    "WaitingTurn",
    "as_seen_by",
    "branch_filter_key",
    "branch_view",
    "history_messages",
    "pending_tool_calls",
    "sanitize_tool_calls",
    "sees_branch",
    "session_summary",
    "summary_message",
    "waiting_tool_calls",
    "waiting_turns",
]

NOT_EXECUTED = "Tool call was not executed: the run that requested it ended before it ran."


#: How another agent's turn starts when shown to an agent (``For context:`` as in ADK).
CONTEXT_PREFIX = "For context:"


def _events_after_summary(events: Sequence[Event], summary: Summary) -> Sequence[Event]:
    for index, event in enumerate(events):
        if event.id == summary.last_event_id:
            return events[index + 1 :]
    # The boundary event was evicted: fall back to time.
    return [e for e in events if e.created_at > summary.last_event_at]


def _last_runs(events: Sequence[Event], runs: int) -> Sequence[Event]:
    invocations = list(dict.fromkeys(e.invocation_id for e in events))  # in order of appearance
    keep = set(invocations[-runs:])
    return [e for e in events if e.invocation_id in keep]


#: The start of a branch summary's filter key (:func:`branch_filter_key`).
BRANCH_KEY_PREFIX = "branch:"


def branch_filter_key(branch: str) -> str:
    """The filter key of the summary an agent on ``branch`` sees: ``"branch:{branch}"``."""
    return BRANCH_KEY_PREFIX + branch


def session_summary(session: Session, branch: str | None) -> Summary | None:
    """The stored summary an agent on ``branch`` is given: its branch's summary
    (:func:`branch_filter_key`) if there is one, else the whole session's (``""``)."""
    if branch is not None:
        summary = session.summaries.get(branch_filter_key(branch))
        if summary is not None:
            return summary
    return session.summaries.get("")


def sees_branch(branch: str | None, event_branch: str | None) -> bool:
    """Whether an agent on ``branch`` sees an event written on ``event_branch``.

    Yes for the main line's events (``None``), its own branch's, its ancestors' (the history
    up to its fork) and its descendants' (forks of its own work); no for a sibling's. An agent
    on the main line sees every branch.
    """
    if branch is None or event_branch is None or event_branch == branch:
        return True
    return branch.startswith(event_branch + ".") or event_branch.startswith(branch + ".")


def branch_view(events: Sequence[Event], branch: str | None) -> list[Event]:
    """The events an agent on ``branch`` sees (:func:`sees_branch`), in session order, except
    that the turns of concurrent branches below it are regrouped: within each stretch of
    branch events, one branch's events after another's, in the order the branches first
    wrote, recursively for forks within a branch."""
    visible = [e for e in events if sees_branch(branch, e.branch)]
    out: list[Event] = []
    lanes: dict[str, list[Event]] = {}

    def close_stretch() -> None:
        for lane, lane_events in lanes.items():
            out.extend(branch_view(lane_events, lane))
        lanes.clear()

    for event in visible:
        lane = _lane_below(branch, event.branch)
        if lane is None:
            close_stretch()
            out.append(event)
        else:
            lanes.setdefault(lane, []).append(event)
    close_stretch()
    return out


def _lane_below(branch: str | None, event_branch: str | None) -> str | None:
    """The branch just below ``branch`` that ``event_branch`` lies on (a fork adds two names,
    ``{parallel agent}.{sub-agent}``); None for an event on ``branch`` or above it."""
    if event_branch is None or event_branch == branch:
        return None
    prefix = "" if branch is None else branch + "."
    if not event_branch.startswith(prefix):
        return None  # an ancestor's event
    names = event_branch[len(prefix) :].split(".")
    return prefix + ".".join(names[:2])


def summary_message(summary: Summary) -> Message:
    return Message.system(
        "Summary of the conversation so far:\n<summary_of_previous_interactions>\n"
        f"{summary.text}\n</summary_of_previous_interactions>"
    )


def history_messages(
    events: Sequence[Event],
    *,
    max_history_runs: int = 0,
    summary: Summary | None = None,
    agent_name: str | None = None,
    branch: str | None = None,
) -> list[Message]:
    """The chat history for the model.

    With ``summary``, only events after its boundary are included (the caller adds the summary
    itself, see :func:`summary_message`). Otherwise ``max_history_runs > 0`` keeps the events
    of the last N invocations. With ``agent_name``, the assistant turns and tool results of
    other agents come as context attributed to them (:func:`as_seen_by`). ``branch``: the
    agent's branch; it sees what :func:`branch_view` gives.
    """
    if summary is not None:
        events = _events_after_summary(events, summary)
    elif max_history_runs > 0:
        events = _last_runs(events, max_history_runs)
    events = branch_view(events, branch)
    messages = [
        as_seen_by(agent_name, e) for e in events if e.type == "message" or e.type == "tool.result"
    ]
    return sanitize_tool_calls(messages)


def as_seen_by(agent_name: str | None, event: MessageEvent | ToolResultEvent) -> Message:
    """The event's message as the agent ``agent_name`` sees it: its own turns, the user's and
    the system's as they are; another agent's turn as a user message of context naming it."""
    message = event.message
    if agent_name is None or event.author == agent_name or message.role in ("user", "system"):
        return message
    lines = [CONTEXT_PREFIX]
    if message.role == "tool":
        tool = f"tool `{message.name}`" if message.name else "a tool"
        lines.append(f"[{event.author}] {tool} returned result: {message.text}")
    else:
        if message.content:
            lines.append(f"[{event.author}] said: {message.content}")
        lines += [
            f"[{event.author}] called tool `{call.function.name}` with parameters: "
            f"{call.function.arguments}"
            for call in message.tool_calls or ()
        ]
    return Message.user("\n".join(lines))


def sanitize_tool_calls(messages: Sequence[Message]) -> list[Message]:
    """Close unanswered tool calls with a "not executed" result and drop orphan results."""
    out: list[Message] = []
    open_calls: dict[str, ToolCall] = {}

    def close_open() -> None:
        for call in open_calls.values():
            out.append(Message.tool(call.id, NOT_EXECUTED, name=call.function.name))
        open_calls.clear()

    for message in messages:
        if message.role == "tool":
            if message.tool_call_id in open_calls:
                del open_calls[message.tool_call_id]
                out.append(message)
            continue  # orphan: its call was cut off (summary boundary, window); drop it
        close_open()
        out.append(message)
        if message.role == "assistant" and message.tool_calls:
            open_calls = {call.id: call for call in message.tool_calls}
    close_open()
    return out


def pending_tool_calls(events: Sequence[Event], *, branch: str | None = None) -> list[ToolCall]:
    """Tool calls of the last assistant tool-call turn that have no result yet.

    Only the newest assistant turn counts, and only if no user message came after it. On a
    ``branch``, only the events that branch sees (:func:`sees_branch`) count.
    """
    waiting = _waiting_turn(events, branch)
    return waiting.calls if waiting is not None else []


@dataclass(frozen=True, slots=True)
class WaitingTurn:
    """An assistant turn whose tool calls wait for results: the event (its ``author`` wrote
    the calls, on its ``branch``) and the calls still without one."""

    event: MessageEvent
    calls: list[ToolCall]


def _waiting_turn(events: Sequence[Event], branch: str | None) -> WaitingTurn | None:
    answered: set[str] = set()
    for event in reversed(events):
        if not sees_branch(branch, event.branch):
            continue
        if event.type == "tool.result":
            if event.message.tool_call_id:
                answered.add(event.message.tool_call_id)
            continue
        if event.type != "message":
            continue
        if event.message.role == "user":
            return None
        elif event.message.role == "assistant":
            calls = [call for call in event.message.tool_calls or [] if call.id not in answered]
            return WaitingTurn(event, calls) if calls else None
    return None


def waiting_turns(events: Sequence[Event], *, branch: str | None = None) -> list[WaitingTurn]:
    """The turns whose calls wait for results on ``branch`` or a branch below it, at most one
    per branch: what a resume answers. A paused parallel agent leaves calls on one branch
    while a sibling's final answer came after them, so each branch is asked on its own."""
    below = [e.branch for e in events if e.branch != branch and sees_branch(branch, e.branch)]
    turns: dict[str, WaitingTurn] = {}
    for each in dict.fromkeys([branch, *below]):
        if each != branch and _lane_below(branch, each) is None:
            continue  # an ancestor's events: not this branch's work
        waiting = _waiting_turn(events, each)
        if waiting is not None:
            turns.setdefault(waiting.event.id, waiting)
    return list(turns.values())


def waiting_tool_calls(events: Sequence[Event], *, branch: str | None = None) -> list[ToolCall]:
    """Every call waiting for its result on ``branch`` or a branch below it
    (:func:`waiting_turns`)."""
    return [call for turn in waiting_turns(events, branch=branch) for call in turn.calls]
