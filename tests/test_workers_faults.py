"""Faults injected for real: SIGKILLed workers, a run that kills every worker, a run longer
than the recovery timeout, Redis restarted under load."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

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
from tests.services import RedisServer
from tests.worker_agents import TOOL_COUNTER_KEY

pytestmark = [pytest.mark.redis, pytest.mark.celery]


@pytest.fixture
def model_server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as server:
        yield server


def load_session(redis_url: str, app_name: str, user_id: str, session_id: str) -> Session:
    async def load() -> Session | None:
        service = from_url(redis_url)
        try:
            return await service.get_session(app_name, user_id, session_id)
        finally:
            await service.close()

    session = asyncio.run(load())
    assert session is not None
    return session


def tool_executions(redis_url: str) -> dict[str, int]:
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.hgetall(TOOL_COUNTER_KEY)
    finally:
        client.close()
    return {k.decode(): int(v) for k, v in raw.items()}


def wait_for(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def assert_delivered_once(events: list[dict[str, Any]]) -> None:
    """Gap-free seq, no seq twice, exactly one completion, and it is last."""
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(len(events))), seqs
    assert len(completions(events)) == 1
    assert events[-1]["type"] == "runner.completion"


def test_sigkilled_worker_run_is_recovered_and_finishes_once(
    producer: Any, start_worker: StartWorker, model_server: ScriptedModelServer, redis_url: str
) -> None:
    # Given a run that has executed a tool and is waiting on the model when its worker dies
    model_server.add_tool_calls([("call_1", "record", {"label": "before-kill"})])
    model_server.add_hang()  # the answer the killed worker never gets
    model_server.add_text("recovered answer")
    worker = start_worker(OPENAI_BASE_URL=model_server.url)
    from workers.tasks import submit_run

    result = submit_run.delay("testkit", "gus", "s-kill", "record something")
    wait_for(lambda: len(model_server.requests) == 2, "the second model call")
    worker.kill()

    # When another worker comes up
    survivor = start_worker(OPENAI_BASE_URL=model_server.url)

    # Then the run completes exactly once
    events = wait_for_completion(redis_url, result.id)
    assert_delivered_once(events)
    assert events[-1]["status"] == "completed"
    assert events[-1]["final_text"] == "recovered answer"
    # And the tool that had completed before the kill did not run again
    assert tool_executions(redis_url) == {"before-kill": 1}
    # And the session holds each event once, the user message once
    session = load_session(redis_url, "testkit", "gus", "s-kill")
    ids = [e.id for e in session.events]
    assert len(ids) == len(set(ids))
    assert [e.type for e in session.events] == ["message", "message", "tool.result", "message"]
    assert survivor.is_alive()


def test_run_that_kills_every_worker_fails_after_bounded_attempts(
    producer: Any, start_worker: StartWorker, model_server: ScriptedModelServer, redis_url: str
) -> None:
    # Given a run whose tool kills the worker that runs it
    model_server.add_tool_calls([("call_1", "crash_worker", {})])
    from workers.tasks import submit_run

    result = submit_run.delay("testkit", "hal", "s-poison", "crash please")
    # (wait=False: a worker may die on the run before it answers a ping)
    worker: CeleryWorker = start_worker(wait=False, OPENAI_BASE_URL=model_server.url)

    # When workers keep being restarted as it kills them
    deadline = time.monotonic() + 90
    while not completions(read_events(redis_url, result.id)):
        assert time.monotonic() < deadline, "the poison run never ended"
        if not worker.is_alive():
            worker = start_worker(wait=False, OPENAI_BASE_URL=model_server.url)
        time.sleep(0.1)

    # Then it ends failed after three attempts, with one completion
    events = wait_for_completion(redis_url, result.id)
    assert_delivered_once(events)
    assert events[-1]["status"] == "failed"
    assert events[-2]["error"]["type"] == "too_many_attempts"
    assert tool_executions(redis_url) == {"crash_worker": 3}


def test_live_run_longer_than_the_recovery_timeout_is_not_started_twice(
    producer: Any, start_worker: StartWorker, model_server: ScriptedModelServer, redis_url: str
) -> None:
    # Given two workers and a model answer that takes longer than the 2 s recovery timeout
    model_server.add_text("slow but steady", delay=7)
    start_worker(OPENAI_BASE_URL=model_server.url)
    start_worker(OPENAI_BASE_URL=model_server.url)
    from workers.tasks import submit_run

    # When the run goes on past several recovery timeouts
    result = submit_run.delay("assistant", "ivy", "s-long", "take your time")

    # Then it completes once, and the model was asked once: it was never started again
    events = wait_for_completion(redis_url, result.id)
    assert_delivered_once(events)
    assert events[-1]["status"] == "completed"
    assert len(model_server.requests) == 1
    time.sleep(3)  # a stray redelivery would show up as a second request or completion
    assert len(model_server.requests) == 1
    assert len(completions(read_events(redis_url, result.id))) == 1


def test_redis_restart_mid_load_workers_reconnect_and_never_double_complete(
    producer: Any,
    start_worker: StartWorker,
    model_server: ScriptedModelServer,
    redis_server: RedisServer,
    redis_url: str,
) -> None:
    # Given runs waiting on the model in a worker
    model_server.set_default(None)
    for _ in range(4):
        model_server.add_text("answer", delay=2)
    worker = start_worker(OPENAI_BASE_URL=model_server.url)
    from workers.tasks import submit_run

    results = [submit_run.delay("assistant", "jo", f"s-restart-{i}", "hello") for i in range(4)]
    wait_for(lambda: len(model_server.requests) == 4, "all runs to reach the model")

    # When Redis restarts (empty: the test server keeps no data)
    redis_server.stop()
    time.sleep(1)
    redis_server.start()

    # Then no run ever gets two completions. (A run whose worker exits before publishing its
    # completion is lost with an empty restart: production Redis runs with appendonly yes,
    # docs/workers.md "Redis restarts"; this test's Redis keeps no data on purpose.)
    time.sleep(5)
    for result in results:
        events = read_events(redis_url, result.id)
        assert len(completions(events)) <= 1
        if completions(events):
            assert events[-1]["status"] in ("completed", "failed")
    # And the worker that lost Redis while holding runs is still serving (workers/resilience.py;
    # tests/test_redis_restart.py restarts a Redis that keeps its data), so new runs go through
    assert worker.is_alive(), worker.log_tail()
    model_server.add_text("after the restart")
    after = submit_run.delay("assistant", "jo", "s-after", "hello again")
    events = wait_for_completion(redis_url, after.id, timeout=90)
    assert events[-1]["status"] == "completed"
    assert events[-1]["final_text"] == "after the restart"
