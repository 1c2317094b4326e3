"""Runs through the whole distributed path: producer -> Redis broker -> real celery worker
subprocess -> model (scripted HTTP server) -> events in Redis, read with plain redis-py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from runner_core.errors import ConfigurationError, InvalidRequestError, RunFailedError
from runner_core.session import Session
from runner_core.testing import ScriptedModelServer
from session_backends import from_url
from tests.celery_workers import (
    CeleryWorker,
    StartWorker,
    completions,
    read_events,
    wait_for_completion,
)
from workers.settings import Settings, parse_agents

pytestmark = [pytest.mark.redis, pytest.mark.celery]


@pytest.fixture
def model_server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as server:
        yield server


@pytest.fixture
def worker(start_worker: StartWorker, model_server: ScriptedModelServer) -> CeleryWorker:
    return start_worker(OPENAI_BASE_URL=model_server.url)


def load_session(redis_url: str, user_id: str, session_id: str) -> Session:
    async def load() -> Session | None:
        service = from_url(redis_url)
        try:
            return await service.get_session("assistant", user_id, session_id)
        finally:
            await service.close()

    session = asyncio.run(load())
    assert session is not None
    return session


def wait_until_started(redis_url: str, invocation_id: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if read_events(redis_url, invocation_id):
            return
        time.sleep(0.05)
    raise AssertionError(f"run {invocation_id} did not start")


def test_run_with_a_tool_call_end_to_end(
    producer: Any, worker: CeleryWorker, model_server: ScriptedModelServer, redis_url: str
) -> None:
    # Given a model that calls the calculator, then answers
    model_server.add_tool_calls([("call_1", "calculator", {"expression": "2+3"})])
    model_server.add_text("2 + 3 = 5")
    from workers.tasks import submit_run

    # When a producer submits a run
    result = submit_run.delay("assistant", "alice", "s-e2e", "What is 2 + 3?")

    # Then the stream holds every event, gap-free, ending with one completion
    events = wait_for_completion(redis_url, result.id)
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in completions(events)] == ["runner.completion"]
    assert events[-1]["status"] == "completed"
    assert events[-1]["final_text"] == "2 + 3 = 5"
    assert all(e["invocation_id"] == result.id for e in events)
    # And the task's return value is the completion's JSON
    returned = result.get(timeout=30)
    assert returned == events[-1]
    # And the session holds user, assistant tool call, tool result, assistant text
    session = load_session(redis_url, "alice", "s-e2e")
    kinds = [(e.type, getattr(e, "message", None) and e.message.role) for e in session.events]
    assert kinds == [
        ("message", "user"),
        ("message", "assistant"),
        ("tool.result", "tool"),
        ("message", "assistant"),
    ]
    assert session.events[1].message is not None
    assert session.events[1].message.tool_calls[0].function.name == "calculator"
    assert session.events[2].message is not None
    assert session.events[2].message.content == "5"


def test_enqueue_runs_one_session_in_turn(
    producer: Any, worker: CeleryWorker, model_server: ScriptedModelServer, redis_url: str
) -> None:
    # Given a first run whose model answer takes a while
    model_server.add_text("first answer", delay=1.5)
    model_server.add_text("second answer")
    from workers.tasks import submit_run

    first = submit_run.delay("assistant", "bob", "s-enq", "first question")
    wait_until_started(redis_url, first.id)
    # When a second run for the same session is submitted with enqueue (the default)
    second = submit_run.delay("assistant", "bob", "s-enq", "second question")

    # Then both complete, one after the other: no interleaving in the session
    assert wait_for_completion(redis_url, first.id)[-1]["status"] == "completed"
    assert wait_for_completion(redis_url, second.id)[-1]["status"] == "completed"
    owners = [e.invocation_id for e in load_session(redis_url, "bob", "s-enq").events]
    assert owners == [first.id, first.id, second.id, second.id]
    # And the second run saw the first one's answer in its history
    history = model_server.requests[1]["messages"]
    assert any(m.get("content") == "first answer" for m in history)


def test_reject_refuses_a_second_run_with_a_clear_error(
    producer: Any, worker: CeleryWorker, model_server: ScriptedModelServer, redis_url: str
) -> None:
    model_server.add_text("first answer", delay=1.5)
    from workers.tasks import submit_run

    first = submit_run.delay("assistant", "carol", "s-rej", "first question")
    wait_until_started(redis_url, first.id)
    second = submit_run.delay(
        "assistant", "carol", "s-rej", "second question", multitask_strategy="reject"
    )

    refused = wait_for_completion(redis_url, second.id)
    assert [e["type"] for e in refused] == ["error", "runner.completion"]
    assert refused[0]["error"]["type"] == "session_busy"
    assert first.id in refused[0]["error"]["message"]
    assert refused[-1]["status"] == "failed"
    assert wait_for_completion(redis_url, first.id)[-1]["status"] == "completed"
    owners = {e.invocation_id for e in load_session(redis_url, "carol", "s-rej").events}
    assert owners == {first.id}


def test_interrupt_cancels_the_running_run_and_takes_over(
    producer: Any, worker: CeleryWorker, model_server: ScriptedModelServer, redis_url: str
) -> None:
    model_server.add_hang()
    model_server.add_text("second answer")
    from workers.tasks import submit_run

    first = submit_run.delay("assistant", "dave", "s-int", "first question")
    wait_until_started(redis_url, first.id)
    second = submit_run.delay(
        "assistant", "dave", "s-int", "second question", multitask_strategy="interrupt"
    )

    assert wait_for_completion(redis_url, first.id)[-1]["status"] == "cancelled"
    done = wait_for_completion(redis_url, second.id)
    assert done[-1]["status"] == "completed"
    assert done[-1]["final_text"] == "second answer"


def test_cancel_stops_a_run(
    producer: Any, worker: CeleryWorker, model_server: ScriptedModelServer, redis_url: str
) -> None:
    model_server.add_hang()
    from workers.client import cancel
    from workers.tasks import submit_run

    result = submit_run.delay("assistant", "erin", "s-cancel", "never answered")
    wait_until_started(redis_url, result.id)
    cancel(result.id, redis_url=redis_url)

    events = wait_for_completion(redis_url, result.id)
    assert len(completions(events)) == 1
    assert events[-1]["status"] == "cancelled"
    # And the task is REVOKED; .get() raises the run's outcome, completion included
    with pytest.raises(RunFailedError) as raised:
        result.get(timeout=30)
    assert raised.value.status == "cancelled" and raised.value.completion == events[-1]
    assert result.state == "REVOKED"


def test_run_timeout_ends_the_run_with_timeout(
    producer: Any, worker: CeleryWorker, model_server: ScriptedModelServer, redis_url: str
) -> None:
    model_server.add_hang()
    from workers.tasks import submit_run

    result = submit_run.delay("assistant", "fay", "s-timeout", "slow", run_timeout_s=0.5)

    events = wait_for_completion(redis_url, result.id)
    assert events[-1]["status"] == "timeout"
    assert any(e["type"] == "error" and e["error"]["type"] == "timeout" for e in events)


INVALID_REQUESTS = [
    pytest.param(("assistant", "u1"), {}, "missing session_id, message", id="missing-fields"),
    pytest.param(("assistant", 42, "s", "hi"), {}, "user_id", id="wrong-type-user"),
    pytest.param(("assistant", "u1", "s", "hi"), {"resume": "yes"}, "resume", id="wrong-type"),
    pytest.param(
        ("assistant", "u1", "s", "hi"),
        {"multitask_strategy": "queue"},
        "multitask_strategy",
        id="bad-strategy",
    ),
    pytest.param(("assistant", "u1", "s", "x" * 200_001), {}, "limit", id="oversized"),
    pytest.param(("no-such-app", "u1", "s", "hi"), {}, "unknown app_name", id="unknown-app"),
]


def test_invalid_requests_fail_at_once_with_an_error_event(
    producer: Any, worker: CeleryWorker, model_server: ScriptedModelServer, redis_url: str
) -> None:
    results = []
    for case in INVALID_REQUESTS:
        args, kwargs, expected = case.values
        # send_task by name, as any Celery client could: no producer-side validation
        result = producer.send_task("agent_runner.submit_run", args=args, kwargs=kwargs)
        results.append((case.id, result, expected))

    for case_id, result, expected in results:
        events = wait_for_completion(redis_url, result.id)
        assert [e["type"] for e in events] == ["error", "runner.completion"], case_id
        assert events[0]["error"]["type"] == "invalid_request", case_id
        assert expected in events[0]["error"]["message"], case_id
        assert events[-1]["status"] == "failed", case_id
        with pytest.raises(InvalidRequestError):
            result.get(timeout=30)
        assert result.state == "FAILURE"
    # No model call was made and nothing was retried
    assert model_server.requests == []
    time.sleep(0.5)
    assert all(len(read_events(redis_url, r.id)) == 2 for _, r, _ in results)


# --- settings (no worker needed) -----------------------------------------------------------


def test_settings_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.broker_url == "redis://127.0.0.1:6379/0"
    assert settings.redis_url == settings.broker_url
    assert settings.session_url == settings.redis_url
    assert settings.result_backend is None
    assert settings.max_attempts == 3


def test_settings_urls_default_down_the_chain() -> None:
    settings = Settings.from_env({"AGENT_RUNNER_BROKER_URL": "redis://10.0.0.1:6379/2"})
    assert settings.redis_url == "redis://10.0.0.1:6379/2"
    assert settings.session_url == "redis://10.0.0.1:6379/2"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AGENT_RUNNER_BROKER_URL", "amqp://localhost"),
        ("AGENT_RUNNER_REDIS_URL", "http://x"),
        ("AGENT_RUNNER_SESSION_URL", "mongodb://x"),
        ("AGENT_RUNNER_RECOVERY_TIMEOUT_S", "soon"),
        ("AGENT_RUNNER_RECOVERY_TIMEOUT_S", "0"),
        ("AGENT_RUNNER_RUN_TIMEOUT_S", "-5"),
        ("AGENT_RUNNER_MAX_ATTEMPTS", "2.5"),
        ("AGENT_RUNNER_REDIS_MAX_CONNECTIONS", "4"),
        ("AGENT_RUNNER_REDIS_MAX_CONNECTIONS", "lots"),
        ("AGENT_RUNNER_RESTORE_INTERVAL_S", "0"),
        ("AGENT_RUNNER_AGENTS", "support"),
        ("AGENT_RUNNER_AGENTS", "support=not a path"),
        ("AGENT_RUNNER_AGENTS", "a=m:f,a=m:g"),
        ("OPENAI_BASE_URL", "ftp://example"),
    ],
)
def test_settings_errors_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=variable):
        Settings.from_env({variable: value})


def test_settings_never_show_secrets() -> None:
    settings = Settings.from_env(
        {
            "AGENT_RUNNER_BROKER_URL": "redis://:hunter2@10.0.0.1:6379/0",
            "OPENAI_API_KEY": "sk-verysecretkey-123456",
        }
    )
    shown = repr(settings)
    assert "hunter2" not in shown
    assert "verysecretkey" not in shown
    with pytest.raises(ConfigurationError) as excinfo:
        Settings.from_env({"AGENT_RUNNER_BROKER_URL": "amqp://user:hunter2@host"})
    assert "hunter2" not in str(excinfo.value)


def test_run_timeout_can_be_disabled() -> None:
    assert Settings.from_env({"AGENT_RUNNER_RUN_TIMEOUT_S": "none"}).run_timeout_s is None


def test_parse_agents() -> None:
    assert parse_agents("support=myapp.agents:build, triage = pkg.mod:make") == {
        "support": "myapp.agents:build",
        "triage": "pkg.mod:make",
    }


def test_a_worker_with_a_bad_agent_factory_exits_with_the_reason(
    start_worker: StartWorker,
) -> None:
    # Given AGENT_RUNNER_AGENTS naming a module that does not exist
    worker = start_worker(wait=False, AGENT_RUNNER_AGENTS="broken=no_such_module:build")
    # Then the worker stops at start (instead of taking runs it can never finish)
    assert worker.process is not None
    assert worker.process.wait(timeout=60) == 78
    log = worker.log_tail()
    assert "agent-runner worker cannot start" in log
    assert "AGENT_RUNNER_AGENTS entry broken=no_such_module:build" in log
