"""The extension contract across processes (issue 14): per-run options, runtime state,
``temp:`` state, structured output, guardrails and custom agents, through a real ``celery
worker`` subprocess and the scripted model server.

One worker serves the whole module (apps from tests/worker_agents.py), on a Redis database of
its own so that it outlives the per-test flushes of DB 0; each test uses sessions of its own and
a reset model script. Events are read from the stream with plain redis-py.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from runner_core import RunConfig
from runner_core.errors import InvalidRequestError, RunFailedError
from runner_core.session import Session
from runner_core.testing import ScriptedModelServer
from session_backends import from_url
from tests.celery_workers import (
    ROOT,
    CeleryWorker,
    _forget_producer_pool,
    read_events,
    wait_for_completion,
)
from tests.services import RedisServer
from tests.worker_agents import SEEN_KEY, TEMP_VALUE

pytestmark = [pytest.mark.redis, pytest.mark.celery]

#: This module's Redis database (DB 0 is flushed by other tests' fixtures), and the next one
#: for task results.
EXTENSIONS_DB = 10
AGENTS = ",".join(
    f"{app}=tests.worker_agents:{factory}"
    for app, factory in [
        ("testkit", "build_testkit"),
        ("extkit", "build_extkit"),
        ("structured", "build_structured"),
        ("guarded", "build_guarded"),
        ("mirror", "build_mirror"),
        ("broken", "build_broken"),
    ]
)
#: Only keeps a broken run from hanging the suite.
RESULT_TIMEOUT_S = 30


# --- one worker for the module ----------------------------------------------------------------


@pytest.fixture(scope="module")
def model_server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as server:
        yield server


@pytest.fixture(scope="module")
def events_url(redis_server: RedisServer) -> str:
    url = redis_server.url_for_db(EXTENSIONS_DB)
    for db in (EXTENSIONS_DB, EXTENSIONS_DB + 1):
        client = redis.Redis.from_url(redis_server.url_for_db(db))
        try:
            client.flushdb()
        finally:
            client.close()
    return url


@pytest.fixture(scope="module")
def module_env(
    events_url: str, redis_server: RedisServer, model_server: ScriptedModelServer
) -> dict[str, str]:
    """The worker's environment, and the producer's settings (``workers.client.submit``)."""
    return {
        "AGENT_RUNNER_BROKER_URL": events_url,
        "AGENT_RUNNER_REDIS_URL": events_url,
        "AGENT_RUNNER_SESSION_URL": events_url,
        "AGENT_RUNNER_RESULT_BACKEND": redis_server.url_for_db(EXTENSIONS_DB + 1),
        "AGENT_RUNNER_SOFT_SHUTDOWN_S": "0",
        "AGENT_RUNNER_MODEL": "scripted",
        "AGENT_RUNNER_AGENTS": AGENTS,
        "OPENAI_BASE_URL": model_server.url,
    }


@pytest.fixture(scope="module")
def worker(module_env: dict[str, str]) -> Iterator[CeleryWorker]:
    env = dict(os.environ)
    env.update(module_env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    process = CeleryWorker(env, concurrency=4)
    try:
        yield process.start().wait_ready()
    finally:
        process.close()


@pytest.fixture(scope="module")
def producer(module_env: dict[str, str], worker: CeleryWorker) -> Iterator[Any]:
    """The project's Celery app in the test process, sending to this module's worker."""
    from workers.app import app

    names = ("broker_url", "result_backend", "task_ignore_result")
    saved = {name: app.conf[name] for name in names}
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AGENT_RUNNER_BROKER_URL", "AGENT_RUNNER_REDIS_URL"):
            patch.setenv(name, module_env[name])
        patch.setenv("AGENT_RUNNER_RESULT_BACKEND", module_env["AGENT_RUNNER_RESULT_BACKEND"])
        app.close()
        app.conf.update(
            broker_url=module_env["AGENT_RUNNER_BROKER_URL"],
            result_backend=module_env["AGENT_RUNNER_RESULT_BACKEND"],
            task_ignore_result=False,
        )
        app._local.__dict__.pop("backend", None)
        _forget_producer_pool(app)
        try:
            yield app
        finally:
            app.close()
            app.conf.update(saved)
            app._local.__dict__.pop("backend", None)
            _forget_producer_pool(app)


@pytest.fixture
def model(model_server: ScriptedModelServer, producer: Any) -> ScriptedModelServer:
    """The scripted model, reset for this test; with the worker and producer up. The env of
    the test process names this module's Redis again (the autouse fixture of conftest.py sets
    the model URL per test)."""
    model_server.reset()
    return model_server


@pytest.fixture
def session_id() -> str:
    return f"s-{uuid.uuid4().hex[:12]}"


# --- helpers ------------------------------------------------------------------------------


def submit(app_name: str, session_id: str, message: str, **options: Any) -> Any:
    """``submit_run.delay``, as any producer calls it."""
    from workers.tasks import submit_run

    return submit_run.delay(app_name, "alice", session_id, message, **options)


def raw_stream(events_url: str, invocation_id: str) -> bytes:
    """Every byte of the run's stream entries, as any Redis client reads them."""
    client = redis.Redis.from_url(events_url)
    try:
        entries = client.xrange(f"agent-runner:stream:{invocation_id}")
    finally:
        client.close()
    return b"\n".join(value for _, fields in entries for value in fields.values())


def load_session(events_url: str, app_name: str, session_id: str) -> Session:
    async def load() -> Session | None:
        service = from_url(events_url)
        try:
            return await service.get_session(app_name, "alice", session_id)
        finally:
            await service.close()

    session = asyncio.run(load())
    assert session is not None
    return session


def stored_text(session: Session) -> str:
    """The session as stored: every event's JSON and the state."""
    return "\n".join([*(e.to_json() for e in session.events), json.dumps(session.state)])


def seen(events_url: str, kind: str, invocation_id: str) -> str | None:
    client = redis.Redis.from_url(events_url)
    try:
        value = client.hget(SEEN_KEY.format(kind=kind), invocation_id)
    finally:
        client.close()
    return None if value is None else value.decode()


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def request_with(model: ScriptedModelServer, text: str) -> dict[str, Any]:
    """The recorded model request whose newest user message is ``text``."""
    for body in model.requests:
        users = [m for m in body["messages"] if m.get("role") == "user"]
        if users and users[-1].get("content") == text:
            return body
    raise AssertionError(f"no model request for {text!r}")


def failed_with(result: Any, error_type: str) -> RunFailedError:
    """The task ended FAILURE; ``.get()`` raises the run's RunFailedError."""
    with pytest.raises(RunFailedError) as raised:
        result.get(timeout=RESULT_TIMEOUT_S)
    assert raised.value.status == "failed"
    assert raised.value.error_type == error_type
    assert result.state == "FAILURE"
    return raised.value


# --- run options --------------------------------------------------------------------------


def test_run_options_reach_the_model_and_turn_streaming_off(
    model: ScriptedModelServer, events_url: str, session_id: str
) -> None:
    # Given a model that answers in several words
    model.set_default("an answer in five words")
    # When one run goes with options and another without
    plain = submit("testkit", f"{session_id}-plain", "plain run")
    tuned = submit(
        "testkit",
        session_id,
        "tuned run",
        run_config={"streaming": False, "model": "other-model", "generation": {"temperature": 0.3}},
    )

    # Then the run without options streams its text and uses the agent's settings
    plain_events = wait_for_completion(events_url, plain.id)
    assert "message.delta" in types(plain_events)
    assert plain_events[-1]["status"] == "completed"
    assert request_with(model, "plain run")["model"] == "scripted"
    assert "temperature" not in request_with(model, "plain run")
    # And the run with options streams nothing, and its model call carries the options
    tuned_events = wait_for_completion(events_url, tuned.id)
    assert types(tuned_events) == ["message", "message", "runner.completion"]
    assert tuned_events[-1]["final_text"] == "an answer in five words"
    body = request_with(model, "tuned run")
    assert body["model"] == "other-model"
    assert body["temperature"] == 0.3
    assert not body.get("stream")
    assert tuned.get(timeout=RESULT_TIMEOUT_S)["status"] == "completed"


def test_max_iterations_of_the_run_is_enforced(
    model: ScriptedModelServer, events_url: str, session_id: str
) -> None:
    # Given a model that keeps calling a tool (the agent allows 10 model calls)
    model.set_default(None)
    for n in range(3):
        model.add_tool_calls([(f"call_{n}", "record", {"label": f"{session_id}-{n}"})])

    # When a run allows itself 2
    result = submit("testkit", session_id, "loop", run_config={"max_iterations": 2})

    # Then it stops after 2 model calls, failed, saying why
    events = wait_for_completion(events_url, result.id)
    assert len(model.requests) == 2
    errors = [e["error"] for e in events if e["type"] == "error"]
    assert [error["type"] for error in errors] == ["max_iterations_exceeded"]
    assert "2 model calls" in errors[0]["message"]
    assert events[-1]["status"] == "failed"
    failed_with(result, "max_iterations_exceeded")


BAD_RUN_CONFIGS = [
    pytest.param({"max_iterations": 0}, "run_config.max_iterations", id="max-iterations"),
    pytest.param({"streaming": "off"}, "run_config.streaming", id="streaming-not-bool"),
    pytest.param({"colour": "blue"}, "run_config.colour", id="unknown-field"),
    pytest.param({"generation": {"temperature": "hot"}}, "run_config.generation", id="gen"),
    pytest.param({"generation": {"stream": True}}, "run_config.streaming", id="gen-stream"),
    pytest.param(["streaming", False], "run_config", id="not-an-object"),
]


def test_a_bad_run_config_fails_the_run_naming_the_field(
    model: ScriptedModelServer, producer: Any, events_url: str, session_id: str
) -> None:
    # Given run options no worker can use, sent as any Celery client sends them
    results = []
    for n, case in enumerate(BAD_RUN_CONFIGS):
        run_config, field = case.values
        result = producer.send_task(
            "agent_runner.submit_run",
            args=["testkit", "alice", f"{session_id}-{n}", "hi"],
            kwargs={"run_config": run_config},
            queue="runs",
        )
        results.append((case.id, result, field))

    # Then each run's stream ends with an invalid_request error naming the field, and failed
    for case_id, result, field in results:
        events = wait_for_completion(events_url, result.id)
        assert types(events) == ["error", "runner.completion"], case_id
        assert events[0]["error"]["type"] == "invalid_request", case_id
        assert field in events[0]["error"]["message"], case_id
        assert events[-1]["status"] == "failed", case_id
        with pytest.raises(InvalidRequestError):
            result.get(timeout=RESULT_TIMEOUT_S)
        assert result.state == "FAILURE", case_id
    # And no model was called
    assert model.requests == []


def test_the_client_refuses_a_bad_run_config_before_sending() -> None:
    from workers.client import submit as client_submit

    with pytest.raises(InvalidRequestError, match=r"run_config\.max_iterations"):
        client_submit("testkit", "alice", "s", "hi", run_config={"max_iterations": 0})
    with pytest.raises(InvalidRequestError, match=r"run_config\.runtime_state .*not JSON"):
        client_submit("testkit", "alice", "s", "hi", run_config={"runtime_state": {"x": {1, 2}}})


def test_the_cli_submits_run_options(
    model: ScriptedModelServer, module_env: dict[str, str], session_id: str
) -> None:
    # Given the model's answer
    model.set_default("an answer in five words")
    env = {**os.environ, **module_env}
    # When agent-runner submit passes --run-config and follows the run
    command = [
        sys.executable, "-m", "workers.cli", "submit", "testkit", "alice", session_id,
        "cli run", "--follow", "--json", "--timeout", "30",
        "--run-config", '{"streaming": false, "model": "cli-model"}',
    ]  # fmt: skip
    done = subprocess.run(
        command,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then the run completes with the options applied
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert "message.delta" not in types(events)
    assert events[-1]["status"] == "completed"
    assert request_with(model, "cli run")["model"] == "cli-model"


# --- runtime state and temp: state --------------------------------------------------------


def test_runtime_state_reaches_tools_and_is_never_published_or_stored(
    model: ScriptedModelServer, events_url: str, session_id: str
) -> None:
    from workers.client import submit as client_submit

    # Given a tool that uses a secret the caller passes for this run only
    secret = f"secret-{uuid.uuid4().hex}"
    model.add_tool_calls([("call_1", "use_secret", {})])
    model.add_text("done with the secret")

    # When the run is submitted with it (a RunConfig through workers.client.submit)
    options = RunConfig(runtime_state={"secret": secret})
    invocation_id = client_submit("extkit", "alice", session_id, "use it", run_config=options)

    # Then the tool read it in the worker
    events = wait_for_completion(events_url, invocation_id)
    assert events[-1]["status"] == "completed"
    assert seen(events_url, "runtime", invocation_id) == secret
    assert "secret used" in [e["message"]["content"] for e in events if e["type"] == "tool.result"]
    # And it is nowhere in the stream, the stored session, or what the model was sent
    raw = raw_stream(events_url, invocation_id)
    assert b"secret used" in raw and secret.encode() not in raw
    stored = stored_text(load_session(events_url, "extkit", session_id))
    assert "secret used" in stored and secret not in stored
    assert secret not in json.dumps(model.requests)


def test_temp_state_lives_for_the_run_only_and_is_never_published_or_stored(
    model: ScriptedModelServer, events_url: str, session_id: str
) -> None:
    # Given a tool that keeps a temp: value and a session note, and a later tool reading it
    model.add_tool_calls([("call_1", "remember", {})])
    model.add_tool_calls([("call_2", "recall", {})])
    model.add_text("remembered and recalled")

    # When the run goes
    first = submit("extkit", session_id, "remember then recall")

    # Then the later tool of the same run saw the temp: value
    events = wait_for_completion(events_url, first.id)
    assert events[-1]["status"] == "completed"
    assert seen(events_url, "temp", first.id) == TEMP_VALUE
    # And the stream carries the session note but no temp: key or value
    deltas = [e.get("state_delta") for e in events if e["type"] == "tool.result"]
    assert deltas[0] == {"kept": "kept for the session"}
    raw = raw_stream(events_url, first.id)
    assert b"kept for the session" in raw
    assert b"temp:" not in raw and TEMP_VALUE.encode() not in raw
    # And the stored session holds the note only
    session = load_session(events_url, "extkit", session_id)
    assert session.state == {"kept": "kept for the session"}
    assert "temp:" not in stored_text(session) and TEMP_VALUE not in stored_text(session)

    # When the next run of the session looks for it
    model.add_tool_calls([("call_3", "recall", {})])
    model.add_text("nothing there")
    second = submit("extkit", session_id, "recall again")
    # Then it is gone: it was the first run's own
    assert wait_for_completion(events_url, second.id)[-1]["status"] == "completed"
    assert seen(events_url, "temp", second.id) == "None"


# --- structured output --------------------------------------------------------------------


def test_structured_output_is_on_the_completion_and_the_task_result(
    model: ScriptedModelServer, events_url: str, session_id: str
) -> None:
    # Given an agent with an output schema and a model that answers JSON of it
    model.add_text('{"label": "refund", "score": 3}', match="classify this")

    # When a run goes
    result = submit("structured", session_id, "classify this")

    # Then the completion on the stream carries the parsed output
    events = wait_for_completion(events_url, result.id)
    assert events[-1]["status"] == "completed"
    assert events[-1]["output"] == {"label": "refund", "score": 3}
    # And so does the task's result
    assert result.get(timeout=RESULT_TIMEOUT_S)["output"] == {"label": "refund", "score": 3}
    # And the model was asked for JSON of the schema
    response_format = request_with(model, "classify this")["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["name"] == "Verdict"


def test_invalid_structured_output_fails_the_run(
    model: ScriptedModelServer, events_url: str, session_id: str
) -> None:
    # Given a model that answers something that is not JSON of the schema
    model.add_text("a refund, I think")

    result = submit("structured", session_id, "classify that")

    # Then the run ends with an invalid_output error, failed, without output
    events = wait_for_completion(events_url, result.id)
    errors = [e["error"] for e in events if e["type"] == "error"]
    assert [error["type"] for error in errors] == ["invalid_output"]
    assert "Verdict" in errors[0]["message"]
    assert events[-1]["status"] == "failed"
    assert events[-1].get("output") is None
    failed_with(result, "invalid_output")


# --- guardrails ---------------------------------------------------------------------------


def test_an_input_guardrail_fails_the_run_before_any_model_call(
    model: ScriptedModelServer, events_url: str, session_id: str
) -> None:
    # When a user message trips the agent's input guardrail
    result = submit("guarded", session_id, "my password is hunter2")

    # Then the stream ends with a typed error naming the guardrail, and failed
    events = wait_for_completion(events_url, result.id)
    assert types(events)[-2:] == ["error", "runner.completion"]
    error = events[-2]["error"]
    assert error["type"] == "input_guardrail_tripped"
    assert error["code"] == "no_passwords"
    assert events[-1]["status"] == "failed"
    # And the task failed with the run's error; the model was never called
    failure = failed_with(result, "input_guardrail_tripped")
    assert failure.completion == events[-1]
    assert model.requests == []


def test_an_output_guardrail_withholds_the_answer(
    model: ScriptedModelServer, events_url: str, session_id: str
) -> None:
    # Given a model whose answer trips the output guardrail
    model.add_text("I WILL NOT HELP")

    result = submit("guarded", session_id, "please help")

    # Then nothing of the answer is published (it was buffered: no deltas) or stored
    events = wait_for_completion(events_url, result.id)
    assert "message.delta" not in types(events)
    raw = raw_stream(events_url, result.id)
    assert b"please help" in raw and b"I WILL NOT" not in raw
    stored = stored_text(load_session(events_url, "guarded", session_id))
    assert "please help" in stored and "I WILL NOT" not in stored
    # And the run ends with the guardrail's error, failed
    assert events[-2]["error"]["type"] == "output_guardrail_tripped"
    assert events[-2]["error"]["code"] == "no_shouting"
    assert events[-1]["status"] == "failed"
    failed_with(result, "output_guardrail_tripped")


# --- custom agents ------------------------------------------------------------------------


def test_a_custom_agent_runs_through_the_worker(
    model: ScriptedModelServer, events_url: str, session_id: str
) -> None:
    # Given an app served by a BaseAgent subclass with no model
    result = submit("mirror", session_id, "stressed")

    # Then its run completes with its answer, stored like any other
    events = wait_for_completion(events_url, result.id)
    assert types(events) == ["message", "message", "runner.completion"]
    assert events[-1]["status"] == "completed"
    assert events[-1]["final_text"] == "desserts"
    assert result.get(timeout=RESULT_TIMEOUT_S)["final_text"] == "desserts"
    session = load_session(events_url, "mirror", session_id)
    assert [e.message.text for e in session.events if e.type == "message"] == [
        "stressed",
        "desserts",
    ]


def test_a_custom_agent_that_raises_ends_failed(
    model: ScriptedModelServer, events_url: str, session_id: str
) -> None:
    # When the custom agent raises
    result = submit("broken", session_id, "anything")

    # Then the run ends (no hang) with an error event and a failed completion
    events = wait_for_completion(events_url, result.id)
    assert types(events)[-2:] == ["error", "runner.completion"]
    assert "the custom agent broke" in events[-2]["error"]["message"]
    assert events[-1]["status"] == "failed"
    failed_with(result, events[-2]["error"]["type"])
    # And the run's events are each published once
    assert [e["seq"] for e in read_events(events_url, result.id)] == list(range(len(events)))
