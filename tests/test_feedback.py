"""Feedback in process: add_feedback on a step of a traced run records a feedback step, learns
an experience (positive 0.8, correction 0.6) with evidence and a memory_write step, and the
agent's next run on a similar request is told it. Bad input writes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from runner_core import LLMAgent, Runner
from runner_core.errors import InvalidRequestError, InvocationOwnedError, TraceNotFoundError
from runner_core.feedback import MAX_FEEDBACK_CHARS, add_feedback
from runner_core.memory import Experience, agent_scope
from runner_core.memory_injection import EXPERIENCES_HEADING
from runner_core.memory_store import InMemoryMemoryService
from runner_core.memory_traces import InMemoryTraceStore
from runner_core.testing import FakeModel
from runner_core.tracing import TraceRecorder

APP = "helpdesk"


class Setup:
    def __init__(self) -> None:
        self.model = FakeModel()
        self.traces = InMemoryTraceStore()
        self.memory = InMemoryMemoryService()
        agent = LLMAgent("triage", model=self.model, instruction="You triage tickets.")
        self.runner = Runner(
            APP,
            agent,
            memory_service=self.memory,
            plugins=[TraceRecorder(self.traces, agent=agent)],
        )

    async def run(self, text: str, answer: str, user: str = "alice") -> str:
        self.model.add_text(answer)
        completion = await self.runner.run(user, None, text).completion()
        assert completion.status == "completed"
        return completion.invocation_id

    async def step_of(self, invocation_id: str, kind: str) -> str:
        trace = await self.traces.get(invocation_id)
        assert trace is not None
        return next(step.step_id for step in trace.steps if step.kind == kind)


@pytest.fixture
def setup() -> Setup:
    return Setup()


async def test_a_correction_becomes_an_experience_the_next_run_is_told(setup: Setup) -> None:
    # Given a run whose answer was wrong
    first = await setup.run("My printer is offline", "Buy a new printer.")
    step = await setup.step_of(first, "model_call")

    # When the user corrects it
    result = await add_feedback(
        setup.traces, setup.memory, APP, "alice", first, step, "correction",
        "Ask for the printer's IP address before suggesting anything.",
    )  # fmt: skip

    # Then the trace holds the feedback step after the model step, and a memory write after it
    trace = await setup.traces.get(first)
    assert trace is not None
    feedback = trace.step(result.feedback_step_id)
    assert feedback is not None and feedback.kind == "feedback"
    assert feedback.parent_ids == [step]
    assert feedback.data == {
        "target_step_id": step,
        "kind": "correction",
        "content": "Ask for the printer's IP address before suggesting anything.",
    }
    write = trace.step(result.memory_step_id or "")
    assert write is not None and write.kind == "memory_write"
    assert write.parent_ids == [result.feedback_step_id]
    # And the experience is the agent's, from the task, pointing at the step and the feedback
    experience = result.experience
    assert experience is not None
    assert experience.scope == agent_scope("triage")
    assert experience.confidence == 0.6 and experience.source == "feedback"
    assert experience.condition == "when handling a request like 'My printer is offline'"
    assert experience.evidence == [f"{first}/{step}", f"{first}/{result.feedback_step_id}"]
    assert write.data["experience_id"] == experience.id

    # When the user asks something similar again
    await setup.run("The office printer went offline", "What is its IP address?")

    # Then the agent's system prompt holds the rule
    prompt = setup.model.requests[-1]["messages"][0]["content"]
    assert EXPERIENCES_HEADING in prompt
    assert "Ask for the printer's IP address before suggesting anything." in prompt


async def test_positive_feedback_is_worth_more_and_the_same_rule_merges(setup: Setup) -> None:
    first = await setup.run("Reset my password", "Use the self-service page.")
    step = await setup.step_of(first, "conclusion")
    one = await add_feedback(
        setup.traces, setup.memory, APP, "alice", first, step, "correction",
        "Point to the self-service page",
    )  # fmt: skip
    two = await add_feedback(
        setup.traces, setup.memory, APP, "alice", first, step, "positive",
        "point to the self-service page.",
    )  # fmt: skip
    assert one.experience is not None and two.experience is not None
    assert one.experience.id == two.experience.id
    [stored] = await setup.memory.items(APP, agent_scope("triage"))
    assert isinstance(stored, Experience)
    assert stored.confidence == 0.8
    assert f"{first}/{two.feedback_step_id}" in stored.evidence
    assert len(stored.evidence) == 3  # the step once, each feedback once


async def test_negative_feedback_is_recorded_and_teaches_nothing(setup: Setup) -> None:
    first = await setup.run("Hello", "Hi.")
    step = await setup.step_of(first, "model_call")
    result = await add_feedback(
        setup.traces, setup.memory, APP, "alice", first, step, "negative", "Too short."
    )
    assert result.experience is None and result.memory_step_id is None
    trace = await setup.traces.get(first)
    assert trace is not None and trace.step(result.feedback_step_id) is not None
    assert await setup.memory.items(APP, agent_scope("triage")) == []


async def test_a_model_can_distil_the_rule(setup: Setup) -> None:
    first = await setup.run("My printer is offline", "Buy a new printer.")
    step = await setup.step_of(first, "model_call")
    distiller = FakeModel()
    distiller.add_text("Ask for the printer's IP address first.")
    result = await add_feedback(
        setup.traces, setup.memory, APP, "alice", first, step, "correction",
        "no!! you should have asked me for the IP", distiller=distiller,
    )  # fmt: skip
    assert result.experience is not None
    assert result.experience.rule == "Ask for the printer's IP address first."
    sent = distiller.requests[0]["messages"][1]["content"]
    assert "My printer is offline" in sent and "no!! you should have asked" in sent


def _bad_inputs(first: str, step: str) -> list[tuple[dict[str, Any], type[Exception], str]]:
    return [
        ({"invocation_id": "0123456789abcdef0123456789abcdef"}, TraceNotFoundError, "no trace"),
        ({"invocation_id": "bad id!"}, InvalidRequestError, "invocation_id"),
        ({"step_id": "model:999"}, InvalidRequestError, "has no step"),
        ({"step_id": "has space"}, InvalidRequestError, "step_id"),
        ({"user_id": "mallory"}, InvocationOwnedError, "only its own user"),
        ({"kind": "neutral"}, InvalidRequestError, "positive, negative, correction"),
        ({"content": "   "}, InvalidRequestError, "empty"),
        ({"content": "x" * (MAX_FEEDBACK_CHARS + 1)}, InvalidRequestError, "limit"),
        ({"content": "fine\x1b[2J"}, InvalidRequestError, "control character"),
    ]


async def test_bad_feedback_is_refused_and_writes_nothing(setup: Setup) -> None:
    first = await setup.run("My printer is offline", "Buy a new printer.")
    step = await setup.step_of(first, "model_call")
    before = await setup.traces.get(first)
    assert before is not None
    for override, error, says in _bad_inputs(first, step):
        arguments: dict[str, Any] = {
            "app_name": APP,
            "user_id": "alice",
            "invocation_id": first,
            "step_id": step,
            "kind": "correction",
            "content": "Ask for the IP address.",
            **override,
        }
        with pytest.raises(error, match=says):
            await add_feedback(setup.traces, setup.memory, **arguments)
    after = await setup.traces.get(first)
    assert after is not None and after.steps == before.steps
    assert await setup.memory.items(APP, agent_scope("triage")) == []
