"""The learning loop through real Celery workers: a run, feedback on one of its steps sent by
task name, and the next run, on another worker, told the experience in its system prompt (as
the model server received it). Memory and traces in the test Redis."""

from __future__ import annotations

from typing import Any

import pytest

from runner_core.memory_injection import EXPERIENCES_HEADING
from runner_core.testing import ScriptedModelServer
from runner_core.wire import ADD_FEEDBACK
from tests.celery_workers import StartWorker, wait_for_completion
from workers import cli
from workers.client import get_trace

pytestmark = [pytest.mark.redis, pytest.mark.celery]

RULE = "Ask for the printer's IP address before suggesting anything."


@pytest.fixture
def model_server() -> Any:
    with ScriptedModelServer() as server:
        yield server


def system_prompt(request: dict[str, Any]) -> str:
    first = request["messages"][0]
    assert first["role"] == "system"
    return str(first["content"])


def test_feedback_on_one_worker_changes_what_the_next_run_is_told_on_another(
    producer: Any,
    start_worker: StartWorker,
    model_server: ScriptedModelServer,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    memory_env = {"OPENAI_BASE_URL": model_server.url, "AGENT_RUNNER_MEMORY_URL": redis_url}
    monkeypatch.setenv("AGENT_RUNNER_TRACE_URL", redis_url)
    monkeypatch.setenv("AGENT_RUNNER_MEMORY_URL", redis_url)
    from workers.tasks import submit_run

    # Given a first worker and a run whose answer was wrong
    first_worker = start_worker(**memory_env)
    model_server.add_text("Buy a new printer.")
    first = submit_run.delay("testkit", "alice", "s-1", "My printer is offline")
    assert wait_for_completion(redis_url, first.id)[-1]["status"] == "completed"
    assert "IP address" not in system_prompt(model_server.requests[0])
    trace = get_trace("testkit", "alice", first.id)
    model_step = next(step for step in trace.steps if step.kind == "model_call")
    first_worker.stop()

    # When the user's correction is sent by task name, as any service would, to a second worker
    second_worker = start_worker(**memory_env)
    sent = producer.send_task(
        ADD_FEEDBACK,
        kwargs={
            "app_name": "testkit",
            "user_id": "alice",
            "invocation_id": first.id,
            "step_id": model_step.step_id,
            "kind": "correction",
            "content": RULE,
        },
        queue="runs",
    )
    stored = sent.get(timeout=60)

    # Then the run's trace has the feedback and the memory write, and the experience is stored
    assert stored["experience"]["rule"] == RULE
    assert stored["experience"]["confidence"] == 0.6
    assert stored["experience"]["scope"] == "agent:testkit"
    after = get_trace("testkit", "alice", first.id)
    kinds = {step.step_id: step.kind for step in after.steps}
    assert kinds[stored["feedback_step_id"]] == "feedback"
    assert kinds[stored["memory_step_id"]] == "memory_write"

    # When the same user asks something similar in a new session, on the second worker
    model_server.add_text("What is the printer's IP address?")
    second = submit_run.delay("testkit", "alice", "s-2", "The printer in room 4 is offline")
    events = wait_for_completion(redis_url, second.id)

    # Then the model was told the rule in the system prompt, and the run says so in an event
    assert events[-1]["status"] == "completed"
    prompt = system_prompt(model_server.requests[-1])
    assert prompt.startswith("test agent\n\n" + EXPERIENCES_HEADING)
    assert RULE in prompt
    injected = [e for e in events if e["type"] == "memory.injected"]
    assert len(injected) == 1
    assert [item["id"] for item in injected[0]["items"]] == [stored["experience"]["id"]]
    # And the second run's trace holds the memory read before its model call
    second_trace = get_trace("testkit", "alice", second.id)
    assert [step.kind for step in second_trace.steps][:2] == ["memory_read", "model_call"]
    assert second_worker.is_alive()

    # And positive feedback from the CLI merges into the same experience, at 0.8
    command = ["feedback", second.id, "conclusion", "positive", RULE.lower()]
    assert cli.main([*command, "--app", "testkit", "--user", "alice"]) == 0
    printed = capsys.readouterr().out
    assert f'"id": "{stored["experience"]["id"]}"' in printed and '"confidence": 0.8' in printed


def test_bad_feedback_fails_the_task_and_the_cli_with_what_is_wrong(
    producer: Any,
    start_worker: StartWorker,
    model_server: ScriptedModelServer,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AGENT_RUNNER_TRACE_URL", redis_url)
    monkeypatch.setenv("AGENT_RUNNER_MEMORY_URL", redis_url)
    start_worker(OPENAI_BASE_URL=model_server.url, AGENT_RUNNER_MEMORY_URL=redis_url)
    from workers.tasks import submit_run

    model_server.add_text("Hi.")
    run = submit_run.delay("testkit", "alice", "s-bad", "hello")
    wait_for_completion(redis_url, run.id)
    before = get_trace("testkit", "alice", run.id)

    def send(**override: Any) -> Any:
        kwargs = {
            "app_name": "testkit",
            "user_id": "alice",
            "invocation_id": run.id,
            "step_id": "conclusion",
            "kind": "positive",
            "content": "good",
            **override,
        }
        return producer.send_task(ADD_FEEDBACK, kwargs=kwargs, queue="runs")

    for override, says in [
        ({"kind": "meh"}, "positive, negative, correction"),
        ({"user_id": "mallory"}, "only its own user"),
        ({"step_id": "model:99"}, "has no step"),
        ({"invocation_id": "no-such-run"}, "no trace"),
        ({"content": ""}, "empty"),
    ]:
        with pytest.raises(Exception, match=says):
            send(**override).get(timeout=60)

    assert get_trace("testkit", "alice", run.id).steps == before.steps
    status = cli.main(
        ["feedback", run.id, "conclusion", "positive", "ok\x07", "--app", "testkit",
         "--user", "alice"]
    )  # fmt: skip
    assert status == 1
    assert "control character" in capsys.readouterr().err
