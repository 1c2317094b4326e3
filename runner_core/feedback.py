"""Feedback on a step of a run, turned into experience (seed 003's ``add_feedback``).

:func:`add_feedback` checks everything first, then writes, in this order:

1. a ``feedback`` step in the run's trace, its parent the step the feedback is about
   (``data``: ``target_step_id``, ``kind``, ``content``);
2. for ``positive`` and ``correction`` feedback, an :class:`~runner_core.memory.Experience`
   in the scope of the agent that took the step (``agent:{name}``): the rule is the feedback
   (or what a model distils from it, ``distiller=``), the condition comes from the run's task,
   the evidence points at the step and at the feedback (``{invocation_id}/{step_id}``), the
   source is ``feedback``, the confidence 0.8 (positive) or 0.6 (correction). The same rule
   given again merges into the stored experience (evidence joined, higher confidence kept);
3. a ``memory_write`` step after the feedback step, naming the experience.

``negative`` feedback is recorded (step 1) and teaches nothing by itself: a rule needs to say
what to do, which is what a correction is for.

Only the run's own user gives feedback on it: the identity must match the trace's
(:func:`~runner_core.traces.read_trace`). Bad input (an unknown invocation or step, another
user's run, an unknown kind, empty or oversized content or content with control characters)
raises before anything is written.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from .errors import InvalidRequestError
from .memory import MAX_TEXT_CHARS, Experience, MemoryService, agent_scope, check_item
from .memory_items import CONTROL_RE
from .messages import Message
from .model import GenerationConfig, Model, ModelRequest, complete_response
from .traces import Step, TraceStore, check_step_id, read_trace

__all__ = [
    "DISTIL_INSTRUCTION",
    "FEEDBACK_CONFIDENCE",
    "MAX_FEEDBACK_CHARS",
    "FeedbackKind",
    "FeedbackResult",
    "add_feedback",
]

FeedbackKind = Literal["positive", "negative", "correction"]
FEEDBACK_KINDS: Final[tuple[str, ...]] = get_args(FeedbackKind)
#: The confidence of the experience each kind of feedback makes (seed 003).
FEEDBACK_CONFIDENCE: Final[dict[str, float]] = {"positive": 0.8, "correction": 0.6}
#: The longest feedback, in characters.
MAX_FEEDBACK_CHARS: Final = 4_000
#: The most characters of the run's task an experience's condition quotes.
_TASK_CHARS = 300

DISTIL_INSTRUCTION: Final = (
    "You turn a person's feedback on an AI agent's step into one rule the agent should follow "
    "next time, in the imperative, at most two sentences. Reply with the rule only."
)


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    """What :func:`add_feedback` stored."""

    #: The ``feedback`` step added to the trace.
    feedback_step_id: str
    #: The experience stored (merged into an existing one when its rule was known), if any.
    experience: Experience | None = None
    #: The ``memory_write`` step added after the feedback step, if an experience was stored.
    memory_step_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """As JSON values (what the Celery task returns)."""
        return {
            "feedback_step_id": self.feedback_step_id,
            "experience": None
            if self.experience is None
            else self.experience.model_dump(mode="json"),
            "memory_step_id": self.memory_step_id,
        }


def check_feedback(kind: object, content: object) -> tuple[FeedbackKind, str]:
    """The feedback's kind and content, checked.

    Raises:
        InvalidRequestError: an unknown kind; content that is not text, empty, longer than
            :data:`MAX_FEEDBACK_CHARS` or holding control characters.
    """
    if kind not in FEEDBACK_KINDS:
        raise InvalidRequestError(
            f"feedback kind {kind!r} is not one of {', '.join(FEEDBACK_KINDS)}."
        )
    if not isinstance(content, str):
        raise InvalidRequestError(f"feedback content must be text, got {type(content).__name__}.")
    text = content.strip()
    if not text:
        raise InvalidRequestError("feedback content is empty; say what was right or wrong.")
    if len(text) > MAX_FEEDBACK_CHARS:
        raise InvalidRequestError(
            f"feedback content is {len(text)} characters long; the limit is "
            f"{MAX_FEEDBACK_CHARS}. Keep it to the point."
        )
    bad = CONTROL_RE.search(text)
    if bad is not None:
        raise InvalidRequestError(
            f"feedback content holds the control character {bad.group()!r} at position "
            f"{bad.start()}; remove it (tabs and newlines are fine)."
        )
    return kind, text  # type: ignore[return-value]


def condition_of(task: str | None) -> str:
    """An experience's condition from the run's task (seed 003: "doing a task like ...")."""
    if not task:
        return "in general"
    quoted = " ".join(CONTROL_RE.sub(" ", task).split())
    if len(quoted) > _TASK_CHARS:
        quoted = quoted[:_TASK_CHARS] + "..."
    return f"when handling a request like {quoted!r}"


async def distil_rule(model: Model, task: str | None, step: Step, feedback: str) -> str:
    """The rule a model makes of the feedback on ``step`` of a run for ``task``.

    Raises:
        ModelError: the model failed. InvalidRequestError: it answered with nothing usable.
    """
    what = step.reply or step.content or step.result or step.to_json()
    prompt = (
        f"Task: {task or '(unknown)'}\n"
        f"The agent's step ({step.kind}): {str(what)[:2000]}\n"
        f"Feedback: {feedback}"
    )
    request = ModelRequest(
        messages=[Message.system(DISTIL_INSTRUCTION), Message.user(prompt)],
        generation=GenerationConfig(stream=False),
    )
    response = await complete_response(model, request)
    rule = CONTROL_RE.sub(" ", response.message.content or "").strip()[:MAX_TEXT_CHARS]
    if not rule:
        raise InvalidRequestError("the distilling model gave no rule; nothing was stored.")
    return rule


async def add_feedback(
    traces: TraceStore,
    memory: MemoryService | None,
    app_name: str,
    user_id: str,
    invocation_id: str,
    step_id: str,
    kind: str,
    content: str,
    *,
    distiller: Model | None = None,
) -> FeedbackResult:
    """Record feedback on a step of a run and learn from it (see the module docstring).

    Args:
        traces: the trace store holding the run's trace.
        memory: where the experience goes; None records the feedback step only.
        app_name, user_id: who gives the feedback: the run's own app and user.
        invocation_id, step_id: the run and its step the feedback is about.
        kind: ``positive``, ``negative`` or ``correction``.
        content: what the person said.
        distiller: a model that turns the feedback into the rule (else the rule is the
            feedback as given).

    Returns:
        What was stored (:class:`FeedbackResult`).

    Raises:
        InvalidRequestError: a malformed ID, an unknown kind, bad content, or a step the trace
            does not have; nothing was written.
        TraceNotFoundError: no trace of this invocation.
        InvocationOwnedError: the run is another user's (or another app's).
        ModelError: the distilling model failed; nothing was written.
        SessionBackendError, MemoryBackendError: a store failed.
    """
    feedback_kind, text = check_feedback(kind, content)
    check_step_id(step_id)
    trace = await read_trace(traces, app_name, user_id, invocation_id)
    target = trace.step(step_id)
    if target is None:
        known = ", ".join(step.step_id for step in trace.steps) or "none"
        raise InvalidRequestError(
            f"run {invocation_id} has no step {step_id!r}; its steps are: {known}. "
            "`agent-runner trace` shows them."
        )
    agent_name = target.agent or trace.agent
    learn = memory is not None and feedback_kind in FEEDBACK_CONFIDENCE and agent_name is not None
    suffix = uuid.uuid4().hex[:12]
    feedback_step = Step(
        step_id=f"feedback:{suffix}",
        kind="feedback",
        parent_ids=[step_id],
        agent=target.agent,
        branch=target.branch,
        data={"target_step_id": step_id, "kind": feedback_kind, "content": text},
    )
    experience: Experience | None = None
    if learn:
        assert agent_name is not None
        rule = text
        if distiller is not None:
            rule = await distil_rule(distiller, trace.task, target, text)
        experience = Experience(
            app_name=app_name,
            scope=agent_scope(agent_name),
            condition=condition_of(trace.task),
            rule=rule,
            evidence=[f"{invocation_id}/{step_id}", f"{invocation_id}/{feedback_step.step_id}"],
            source="feedback",
            confidence=FEEDBACK_CONFIDENCE[feedback_kind],
        )
        check_item(experience)  # before any write
    await traces.add_step(invocation_id, feedback_step)
    if experience is None or memory is None:
        return FeedbackResult(feedback_step.step_id)
    stored = await memory.add(experience)
    assert isinstance(stored, Experience)
    memory_step = Step(
        step_id=f"memory_write:{suffix}",
        kind="memory_write",
        parent_ids=[feedback_step.step_id],
        agent=agent_name,
        data={
            "experience_id": stored.id,
            "scope": stored.scope,
            "condition": stored.condition,
            "rule": stored.rule,
            "confidence": stored.confidence,
        },
    )
    await traces.add_step(invocation_id, memory_step)
    return FeedbackResult(feedback_step.step_id, stored, memory_step.step_id)
