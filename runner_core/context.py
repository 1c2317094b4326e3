"""Building the model's context from a session.

The history sent to the model is always a valid chat: every assistant tool call is followed by
one result per call. A session that ends with unanswered calls (a cancelled or crashed run, or a
paused run that the caller moved past without resuming) gets a "not executed" result in the
context it sends; nothing is written to the session for it.
"""

from __future__ import annotations

from collections.abc import Sequence

from .events import Event
from .messages import Message, ToolCall
from .session import Summary

__all__ = [
    "NOT_EXECUTED",
    "history_messages",
    "pending_tool_calls",
    "sanitize_tool_calls",
    "summary_message",
]

NOT_EXECUTED = "Tool call was not executed: the run that requested it ended before it ran."


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
) -> list[Message]:
    """The chat history for the model.

    With ``summary``, only events after its boundary are included (the caller adds the summary
    itself, see :func:`summary_message`). Otherwise ``max_history_runs > 0`` keeps the events
    of the last N invocations.
    """
    if summary is not None:
        events = _events_after_summary(events, summary)
    elif max_history_runs > 0:
        events = _last_runs(events, max_history_runs)
    messages = [e.message for e in events if e.type == "message" or e.type == "tool.result"]
    return sanitize_tool_calls(messages)


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


def pending_tool_calls(events: Sequence[Event]) -> list[ToolCall]:
    """Tool calls of the last assistant tool-call turn that have no result yet.

    Only the newest assistant turn counts, and only if no user message came after it.
    """
    answered: set[str] = set()
    for event in reversed(events):
        if event.type == "tool.result":
            if event.message.tool_call_id:
                answered.add(event.message.tool_call_id)
            continue
        if event.type != "message":
            continue
        if event.message.role == "user":
            return []
        elif event.message.role == "assistant":
            calls = event.message.tool_calls or []
            return [call for call in calls if call.id not in answered]
    return []
