"""A trace as text: the tree ``agent-runner trace`` prints, with tokens and timings.

Each step is shown under its first parent; its other parents are named after it ("after
tool:2, tool:3"), so the seed-003 graph (a model call follows the previous call and its tool
calls) reads as one indented line of work per turn.
"""

from __future__ import annotations

import json
from typing import Any

from runner_core.traces import Step, Trace

__all__ = ["render_trace"]

_SHOWN = 60


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _ms(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def _payload(step: Step) -> str | None:
    """What the step did, in a few words."""
    if step.kind == "model_call":
        if step.tool_calls:
            names = ", ".join(c["function"]["name"] for c in step.tool_calls if isinstance(c, dict))
            return f"-> calls {names}"
        return None if step.reply is None else f"-> {_short(step.reply)!r}"
    if step.kind == "tool_call":
        return f"{step.tool_name}({_short(step.arguments)}) -> {_short(step.result)!r}"
    if step.kind == "transfer":
        return f"-> {step.to_agent}"
    if step.kind == "conclusion":
        return repr(_short(step.content or ""))
    return None if step.data is None else _short(step.data)


def _describe(step: Step) -> str:
    parts = [step.step_id, step.kind]
    if step.agent:
        parts.append(f"[{step.agent}{'@' + step.branch if step.branch else ''}]")
    if (payload := _payload(step)) is not None:
        parts.append(payload)
    if step.error is not None:
        parts.append(f"ERROR {step.error.type}: {_short(step.error.message)}")
    if step.usage is not None:
        parts.append(f"{step.usage.total_tokens} tokens")
    if step.cost is not None:
        parts.append(f"${step.cost:.6f}")
    if (duration := _ms(step.duration_ms)) != "":
        parts.append(duration)
    return "  ".join(parts)


def render_trace(trace: Trace) -> str:
    """The trace as a tree of lines (no trailing newline)."""
    head = [
        f"trace {trace.invocation_id}  {trace.status}",
        f"  app {trace.app_name}  user {trace.user_id}  session {trace.session_id}"
        + (f"  agent {trace.agent}" if trace.agent else ""),
        f"  {trace.usage.total_tokens} tokens ({trace.usage.prompt_tokens} prompt, "
        f"{trace.usage.completion_tokens} completion, {trace.usage.model_calls} model calls)"
        + (f"  ${trace.cost:.6f}" if trace.cost is not None else "")
        + (f"  {_ms(trace.duration_ms)}" if trace.duration_ms is not None else "")
        + (f"  attempts {trace.attempts}" if trace.attempts > 1 else ""),
    ]
    if trace.task:
        head.append(f"  task: {_short(trace.task)}")
    if trace.otel_trace_id:
        head.append(f"  otel trace: {trace.otel_trace_id}")
    if trace.error is not None:
        head.append(f"  error: {trace.error.type}: {_short(trace.error.message)}")
    known = {step.step_id for step in trace.steps}
    children: dict[str | None, list[Step]] = {}
    for step in trace.steps:
        parents = [p for p in step.parent_ids if p in known]
        children.setdefault(parents[0] if parents else None, []).append(step)
    lines = list(head)
    # Depth first, without recursion: (step, prefix for its line, prefix for its children).
    todo: list[tuple[Step, str, str]] = []

    def push(parent: str | None, indent: str) -> None:
        kids = children.get(parent, [])
        for n, kid in reversed(list(enumerate(kids))):
            last = n == len(kids) - 1
            line, below = ("└─ ", "   ") if last else ("├─ ", "│  ")
            todo.append((kid, indent + line, indent + below))

    push(None, "")
    while todo:
        step, line_prefix, child_prefix = todo.pop()
        others = [p for p in step.parent_ids[1:] if p in known]
        after = f"  (after {', '.join(others)})" if others else ""
        lines.append(line_prefix + _describe(step) + after)
        push(step.step_id, child_prefix)
    if not trace.steps:
        lines.append("(no steps)")
    return "\n".join(lines)
