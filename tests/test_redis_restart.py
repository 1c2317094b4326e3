"""Redis restarts under load, and a local stack that restarts its worker (issue 12, item 4).

Celery/kombu 5.7 stopped a run worker that lost Redis while it held unacknowledged messages
("Unrecoverable error: AttributeError: 'NoneType' object has no attribute 'hostname'"); before
``workers.resilience.Consumer`` at least one of two workers exited on every restart. These tests
restart a Redis that keeps its data (``appendonly yes``, as production must) and nobody restarts
a worker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

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

#: Streamed in one delta per word, a quarter second apart: the runs are mid-answer when Redis
#: goes away and still streaming when it is back.
LONG_ANSWER = " ".join(f"word{i}" for i in range(24))
CHUNK_DELAY_S = 0.25
#: Threads per worker. The runs under way take most of them, and a worker with a thread to
#: spare is waiting on the broker for more (a BRPOP in flight), the state in which losing Redis
#: used to stop it.
CONCURRENCY = 8
RUNS_BEFORE = 12
RUNS_AFTER = 4


@pytest.fixture
def redis_url(aof_redis_server: RedisServer) -> str:
    """Workers, producer and readers all use this test's append-only Redis."""
    return aof_redis_server.url


@pytest.fixture
def model_server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as server:
        yield server


def wait_for(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def events_as_subscribers_keep_them(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """docs/events.md: order by ``seq`` and keep the first of a repeated ``seq``.

    A publish retried after a lost reply may write an event twice; the repeat must be the very
    same event, never another one under the same ``seq``.
    """
    kept: dict[int, dict[str, Any]] = {}
    for event in events:
        first = kept.setdefault(event["seq"], event)
        assert first == event, f"two different events with seq {event['seq']}"
    return [kept[seq] for seq in sorted(kept)]


def session_event_types(redis_url: str, session_id: str) -> list[str]:
    async def load() -> list[str]:
        store = from_url(redis_url)
        try:
            session = await store.get_session("testkit", "kim", session_id)
        finally:
            await store.close()
        assert session is not None, session_id
        ids = [event.id for event in session.events]
        assert len(ids) == len(set(ids)), f"an event stored twice in {session_id}"
        return [event.type for event in session.events]

    return asyncio.run(load())


def tool_executions(redis_url: str) -> dict[str, int]:
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.hgetall(TOOL_COUNTER_KEY)
        return {label.decode(): int(count) for label, count in raw.items()}
    finally:
        client.close()


def streaming(redis_url: str, invocation_id: str) -> bool:
    return any(e["type"] == "message.delta" for e in read_events(redis_url, invocation_id))


def test_redis_restart_with_aof_under_load_loses_no_run_and_runs_none_twice(
    producer: Any,
    start_worker: StartWorker,
    model_server: ScriptedModelServer,
    aof_redis_server: RedisServer,
    redis_url: str,
) -> None:
    # Given two run workers streaming the answers of twelve runs, each after a tool call, and
    # waiting on Redis for more
    labels = [f"before-{i:02d}" for i in range(RUNS_BEFORE)]
    for label in labels:
        model_server.add_tool_calls(
            [(f"call-{label}", "record", {"label": label})], match=f"please record {label}."
        )
        model_server.add_text(LONG_ANSWER, chunk_delay=CHUNK_DELAY_S, match=f"recorded {label} ")
    workers: list[CeleryWorker] = [
        start_worker(wait=False, concurrency=CONCURRENCY, OPENAI_BASE_URL=model_server.url)
        for _ in range(2)
    ]
    for worker in workers:
        worker.wait_ready()
    pids = [worker.pid for worker in workers]
    from workers.tasks import submit_run

    before = {
        label: submit_run.delay("testkit", "kim", f"s-{label}", f"please record {label}.").id
        for label in labels
    }
    wait_for(
        lambda: all(streaming(redis_url, i) for i in before.values()),
        "every run to be streaming its answer",
    )

    # When Redis restarts with its append-only file, down for a second
    aof_redis_server.restart(down_s=1.0)

    # Then every run submitted before completes exactly once, streamed without a gap
    for label, invocation_id in before.items():
        events = wait_for_completion(redis_url, invocation_id, timeout=90)
        kept = events_as_subscribers_keep_them(events)
        assert [e["seq"] for e in kept] == list(range(len(kept))), label
        assert len(completions(kept)) == 1 and kept[-1]["type"] == "runner.completion", label
        assert kept[-1]["status"] == "completed", (label, kept[-2:])
        assert kept[-1]["final_text"] == LONG_ANSWER, label
        # And its session holds each turn once: nothing ran twice
        assert session_event_types(redis_url, f"s-{label}") == [
            "message",
            "message",
            "tool.result",
            "message",
        ], label
    # And every tool ran once, and the model was asked once per step
    assert tool_executions(redis_url) == dict.fromkeys(labels, 1)
    assert len(model_server.requests) == 2 * RUNS_BEFORE
    # And both workers are the processes started before the restart: nobody restarted them
    for worker in workers:
        assert worker.is_alive(), f"a worker exited:\n{worker.log_tail()}"
    assert [worker.pid for worker in workers] == pids

    # And runs submitted after the restart complete
    for i in range(RUNS_AFTER):
        model_server.add_text(f"after {i}", match=f"please answer {i}.")
    after = [
        submit_run.delay("testkit", "kim", f"s-after-{i}", f"please answer {i}.").id
        for i in range(RUNS_AFTER)
    ]
    for i, invocation_id in enumerate(after):
        events = wait_for_completion(redis_url, invocation_id, timeout=60)
        assert events[-1]["status"] == "completed"
        assert events[-1]["final_text"] == f"after {i}"
    assert all(worker.is_alive() for worker in workers)


def test_runs_that_finish_a_turn_while_redis_is_down_complete(
    producer: Any,
    start_worker: StartWorker,
    model_server: ScriptedModelServer,
    aof_redis_server: RedisServer,
    redis_url: str,
    tmp_path: Path,
) -> None:
    # Given runs whose tool is running (it waits for the test's word)
    labels = [f"turn-{i}" for i in range(4)]
    for label in labels:
        model_server.add_tool_calls(
            [(f"call-{label}", "hold", {"label": label})], match=f"please hold {label}."
        )
        model_server.add_text(f"done {label}", match=f"released {label}")
    start_worker(concurrency=4, OPENAI_BASE_URL=model_server.url,
                 AGENT_RUNNER_TEST_HOLD_DIR=str(tmp_path))  # fmt: skip
    from workers.tasks import submit_run

    runs = {
        label: submit_run.delay("testkit", "kim", f"s-{label}", f"please hold {label}.").id
        for label in labels
    }
    wait_for(
        lambda: all((tmp_path / f"{label}.held").exists() for label in labels),
        "every run to be in its tool",
    )

    # When Redis goes away and the tools return meanwhile: each run stores its tool result,
    # asks the model and stores the answer while Redis is down or just back
    aof_redis_server.stop()
    for label in labels:
        (tmp_path / label).touch()
    time.sleep(1.5)
    aof_redis_server.start()

    # Then every run completes, and its session holds each turn once
    for label, invocation_id in runs.items():
        events = wait_for_completion(redis_url, invocation_id, timeout=90)
        kept = events_as_subscribers_keep_them(events)
        assert kept[-1]["status"] == "completed", (label, kept[-2:])
        assert kept[-1]["final_text"] == f"done {label}", label
        assert session_event_types(redis_url, f"s-{label}") == [
            "message",
            "message",
            "tool.result",
            "message",
        ], label


def test_dev_stack_restarts_a_run_worker_that_exits() -> None:
    from workers.localstack import LocalStack

    # Given the local stack of `agent-runner dev` (offline demo model)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AGENT_RUNNER_"))}
    said: list[str] = []
    with LocalStack(env=env, concurrency=2, say=said.append) as stack:
        first_pid = stack.pids["worker"]

        # When its run worker dies
        os.killpg(first_pid, signal.SIGKILL)

        # Then the stack says so and starts another one
        wait_for(lambda: stack.pids["worker"] != first_pid, "a new run worker")
        restart_lines = [line for line in said if "restart" in line]
        assert restart_lines and str(first_pid) in restart_lines[0], said
        # And runs submitted afterwards complete on it
        producer = Celery("dev-stack-producer", broker=stack.redis_url, set_as_current=False)
        producer.conf.update(task_serializer="json", accept_content=["json"])
        try:
            invocation_id = producer.send_task(
                "agent_runner.submit_run",
                args=["assistant", "lee", "", "What is 2 + 3?"],
                queue=stack.queue,
            ).id
        finally:
            producer.close()
        events = wait_for_completion(stack.redis_url, invocation_id, timeout=90)
        assert events[-1]["status"] == "completed"
        assert stack.pids["worker"] != first_pid
