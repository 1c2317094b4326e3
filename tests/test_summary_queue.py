"""The summary queue: routing, the per-session lease, time limits, broker-down fallback, and
many jobs through two real summary workers sharing their shards, one of them SIGKILLed.

Jobs record ``start``/``stored``/``end`` in a Redis list (``AGENT_RUNNER_SUMMARY_TRACE_KEY``,
a test-only hook), from which the tests check that no two jobs of one session overlapped and
that the stored boundary only moved forward.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
import redis

from runner_core.events import Event
from runner_core.messages import Message
from runner_core.testing import ScriptedModelServer
from session_backends import from_url
from tests.celery_workers import CeleryWorker
from tests.event_factory import make_event
from tests.services import free_port

T = TypeVar("T")
APP, USER = "summarized", "alice"
TRACE_KEY = "test:summary-trace"
SHARDS = 8
ALL_SHARDS = ",".join(f"summary.{i}" for i in range(SHARDS))


@pytest.fixture
def server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as srv:
        yield srv


@pytest.fixture
def env(worker_env: dict[str, str], server: ScriptedModelServer) -> dict[str, str]:
    return {
        **worker_env,
        "AGENT_RUNNER_AGENTS": "summarized=tests.summary_agents:build_summarized",
        "OPENAI_BASE_URL": server.url,
        "AGENT_RUNNER_SUMMARY_TRACE_KEY": TRACE_KEY,
        "AGENT_RUNNER_SUMMARY_LEASE_S": "1.5",
        "AGENT_RUNNER_SUMMARY_SHARDS": str(SHARDS),
    }


@pytest.fixture
def runtime(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A worker runtime in the test process (its own loop thread), as a run worker has."""
    from workers.runtime import WorkerRuntime
    from workers.settings import Settings

    for name in (
        "OPENAI_BASE_URL",
        "AGENT_RUNNER_SUMMARY_TRACE_KEY",
        "AGENT_RUNNER_SUMMARY_LEASE_S",
    ):
        monkeypatch.setenv(name, env[name])
    rt = WorkerRuntime(Settings.from_env(env)).start()
    yield rt
    rt.stop()


def on(rt: Any, coro: Coroutine[Any, Any, T]) -> T:
    result: T = rt.run(coro, timeout=60)
    return result


async def add_turns(service: Any, session_id: str, turns: int, *, start: int = 0) -> int:
    session = await service.get_session(APP, USER, session_id)
    if session is None:
        session = await service.create_session(APP, USER, session_id)
    for i in range(start, start + turns):
        turn = ((Message.user(f"q{i}"), "user"), (Message.assistant(f"a{i}"), APP))
        for seq, (message, author) in enumerate(turn):
            await service.append_event(
                session,
                make_event(
                    invocation_id=f"inv{i}",
                    seq=seq,
                    type="message",
                    author=author,
                    app_name=APP,
                    user_id=USER,
                    session_id=session_id,
                    message=message,
                ),
            )
    return int(session.event_count)


def trace(redis_url: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(redis_url)
    try:
        return [json.loads(item) for item in client.lrange(TRACE_KEY, 0, -1)]
    finally:
        client.close()


def completed(session_id: str) -> Event:
    return make_event(
        invocation_id="inv-done",
        type="runner.completion",
        author="agent-runner",
        app_name=APP,
        user_id=USER,
        session_id=session_id,
        status="completed",
    )


# --- routing --------------------------------------------------------------------------------


def test_the_shard_of_a_session_is_stable_across_processes() -> None:
    from workers.summary_routing import SummaryRouter, summary_queue

    keys = [("app", "u1", "s1"), ("app", "u2", "s1"), ("other", "u1", "chat-42")]
    mine = [summary_queue(*key, SHARDS) for key in keys]
    code = (
        "from workers.summary_routing import summary_queue\n"
        f"print([summary_queue(*k, {SHARDS}) for k in {keys!r}])"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert out.stdout.strip() == repr(mine)
    router = SummaryRouter(SHARDS)
    routed = router("agent_runner.summarize_session", keys[0], {"force": True}, {})
    assert routed == {"queue": mine[0], "routing_key": mine[0]}
    by_keyword = router(
        "agent_runner.summarize_session",
        (),
        dict(zip(("app_name", "user_id", "session_id"), keys[0], strict=True)),
        {},
    )
    assert by_keyword == routed
    assert router("agent_runner.submit_run", keys[0], {}, {}) is None


def test_a_bad_shard_count_is_refused_naming_the_variable() -> None:
    from runner_core.errors import ConfigurationError
    from workers.summary_routing import SummarySettings

    for bad in ("0", "2.5", "many"):
        with pytest.raises(ConfigurationError, match="AGENT_RUNNER_SUMMARY_SHARDS"):
            SummarySettings.from_env({"AGENT_RUNNER_SUMMARY_SHARDS": bad})


def test_after_a_run_the_job_goes_to_the_sessions_shard_queue(
    runtime: Any, producer: Any, server: ScriptedModelServer, redis_url: str
) -> None:
    from workers.summaries import maybe_enqueue_after_run
    from workers.summary_routing import summary_queue

    on(runtime, add_turns(runtime.sessions, "s1", 1))
    client = redis.Redis.from_url(redis_url)
    try:
        job_id = maybe_enqueue_after_run(runtime, completed("s1"))
        assert job_id is not None
        queue = summary_queue(APP, USER, "s1", SHARDS)
        queued = [json.loads(raw)["headers"]["id"] for raw in client.lrange(queue, 0, -1)]
        assert queued == [job_id]
        # A run that did not complete queues nothing.
        failed = completed("s1").model_copy(update={"status": "failed"})
        assert maybe_enqueue_after_run(runtime, failed) is None
        assert client.llen(queue) == 1
    finally:
        client.close()
    assert server.requests == []  # nothing ran: no worker consumes the queue


# --- one job, in a worker runtime -----------------------------------------------------------


def test_a_job_stores_a_summary_and_a_duplicate_finds_the_work_done(
    runtime: Any, server: ScriptedModelServer
) -> None:
    from workers.summaries import run_summary_job

    total = on(runtime, add_turns(runtime.sessions, "s1", 2))
    server.add_text("summary one")
    first = on(runtime, run_summary_job(runtime, APP, USER, "s1"))
    duplicate = on(runtime, run_summary_job(runtime, APP, USER, "s1", force=True))
    assert (first.status, first.event_count) == ("stored", total)
    assert duplicate.status == "not_due"
    assert len(server.requests) == 1
    stored = on(runtime, runtime.sessions.get_summary(APP, USER, "s1"))
    assert stored is not None and stored.text == "summary one"


async def add_fanout(service: Any, session_id: str) -> None:
    """A question, then two parallel branches answering it (``fanout.left``/``fanout.right``)."""
    session = await service.get_session(APP, USER, session_id)
    if session is None:
        session = await service.create_session(APP, USER, session_id)
    events = [
        ("user", None, Message.user("question")),
        ("left", "fanout.left", Message.assistant("LEFT-ANSWER")),
        ("right", "fanout.right", Message.assistant("RIGHT-ANSWER")),
    ]
    for seq, (author, branch, message) in enumerate(events):
        fields: dict[str, Any] = {"branch": branch} if branch else {}
        await service.append_event(
            session,
            make_event(
                invocation_id="inv-fan",
                seq=seq,
                type="message",
                author=author,
                app_name=APP,
                user_id=USER,
                session_id=session_id,
                message=message,
                **fields,
            ),
        )


@pytest.mark.parametrize("per_branch", [True, False])
def test_a_job_summarises_each_branch_when_per_branch_is_on(
    runtime: Any, server: ScriptedModelServer, per_branch: bool
) -> None:
    from dataclasses import replace

    from runner_core.context import branch_filter_key
    from workers.summaries import run_summary_job

    # Given a session after a fan-out to two branches
    on(runtime, add_fanout(runtime.sessions, "s1"))
    for name in ("whole", "first branch", "second branch"):
        server.add_text(f"{name} summary")
    settings = replace(runtime.summary_settings, per_branch=per_branch)

    # When one job runs
    outcome = on(runtime, run_summary_job(runtime, APP, USER, "s1", settings=settings))

    # Then the whole session is summarised, and each branch too when per-branch is on
    assert outcome.status == "stored"
    left_key, right_key = branch_filter_key("fanout.left"), branch_filter_key("fanout.right")
    left = on(runtime, runtime.sessions.get_summary(APP, USER, "s1", filter_key=left_key))
    right = on(runtime, runtime.sessions.get_summary(APP, USER, "s1", filter_key=right_key))
    if not per_branch:
        assert outcome.branches == {} and left is None and right is None
        assert len(server.requests) == 1
        return
    assert outcome.branches == {left_key: "stored", right_key: "stored"}
    assert outcome.as_dict()["branches"] == outcome.branches
    assert left is not None and right is not None
    # And each branch's prompt held the main line and that branch only, never its sibling
    prompts = [json.dumps(request["messages"]) for request in server.requests[1:]]
    assert len(prompts) == 2
    for prompt in prompts:
        assert "question" in prompt
        assert ("LEFT-ANSWER" in prompt) != ("RIGHT-ANSWER" in prompt)
    # And a second job finds every key done
    again = on(runtime, run_summary_job(runtime, APP, USER, "s1", settings=settings))
    assert again.status == "not_due" and set(again.branches.values()) == {"not_due"}


def test_the_per_branch_setting_is_read_and_checked() -> None:
    from runner_core.errors import ConfigurationError
    from workers.summary_routing import SummarySettings

    assert SummarySettings.from_env({}).per_branch is False
    assert SummarySettings.from_env({"AGENT_RUNNER_SUMMARY_PER_BRANCH": "true"}).per_branch
    with pytest.raises(ConfigurationError, match="AGENT_RUNNER_SUMMARY_PER_BRANCH"):
        SummarySettings.from_env({"AGENT_RUNNER_SUMMARY_PER_BRANCH": "maybe"})


def test_a_job_never_runs_while_another_holds_the_session(
    runtime: Any, server: ScriptedModelServer
) -> None:
    from runner_core.session import SessionKey
    from workers.summaries import SummaryLeases, run_summary_job

    on(runtime, add_turns(runtime.sessions, "s1", 1))
    leases = SummaryLeases(runtime.redis, prefix="agent-runner", lease_s=30)
    key = SessionKey(APP, USER, "s1")
    token = on(runtime, leases.acquire(key))
    assert token is not None
    assert on(runtime, run_summary_job(runtime, APP, USER, "s1")).status == "busy"
    # Only the holder's token releases the lease.
    assert not on(runtime, leases.release(key, "not-the-token"))
    assert on(runtime, run_summary_job(runtime, APP, USER, "s1")).status == "busy"
    assert on(runtime, leases.release(key, token))
    server.add_text("now")
    assert on(runtime, run_summary_job(runtime, APP, USER, "s1")).status == "stored"


def test_a_job_past_its_time_limit_is_cancelled_and_stores_nothing(
    runtime: Any, server: ScriptedModelServer
) -> None:
    from workers.summaries import run_summary_job
    from workers.summary_routing import SummarySettings

    on(runtime, add_turns(runtime.sessions, "s1", 1))
    server.add_hang()
    settings = SummarySettings(timeout_s=0.5, lease_s=5)
    outcome = on(runtime, run_summary_job(runtime, APP, USER, "s1", settings=settings))
    assert outcome.status == "timeout"
    assert on(runtime, runtime.sessions.get_summary(APP, USER, "s1")) is None
    # The lease was released: the next job runs at once.
    server.reset()
    server.add_text("second try")
    assert on(runtime, run_summary_job(runtime, APP, USER, "s1")).status == "stored"


def test_a_model_failure_keeps_the_previous_summary(
    runtime: Any, server: ScriptedModelServer
) -> None:
    from workers.summaries import run_summary_job

    on(runtime, add_turns(runtime.sessions, "s1", 1))
    server.add_text("kept")
    assert on(runtime, run_summary_job(runtime, APP, USER, "s1")).status == "stored"
    on(runtime, add_turns(runtime.sessions, "s1", 1, start=1))
    server.add_error(500, "boom")
    assert on(runtime, run_summary_job(runtime, APP, USER, "s1")).status == "model_error"
    stored = on(runtime, runtime.sessions.get_summary(APP, USER, "s1"))
    assert stored is not None and (stored.text, stored.event_count) == ("kept", 2)


def test_with_the_broker_down_the_job_runs_inline(
    runtime: Any, producer: Any, server: ScriptedModelServer
) -> None:
    from workers.summaries import maybe_enqueue_after_run

    total = on(runtime, add_turns(runtime.sessions, "s1", 1))
    broker_url = producer.conf.broker_url

    def use_broker(url: str) -> None:
        producer.close()
        producer.amqp._producer_pool = None  # close() keeps pooled producers of the old URL
        producer.conf.broker_url = url

    use_broker(f"redis://127.0.0.1:{free_port()}/0")  # nobody listens there
    try:
        server.add_text("made inline")
        assert maybe_enqueue_after_run(runtime, completed("s1")) is None
    finally:
        use_broker(broker_url)
    stored = on(runtime, runtime.sessions.get_summary(APP, USER, "s1"))
    assert stored is not None and (stored.text, stored.event_count) == ("made inline", total)


# --- end to end: a run, then its summary ------------------------------------------------------


def test_a_completed_run_gets_its_session_summarised_by_a_summary_worker(
    env: dict[str, str], producer: Any, server: ScriptedModelServer, redis_url: str
) -> None:
    from tests.celery_workers import wait_for_completion
    from workers.tasks import submit_run

    server.add_text("Hello Alice.")
    server.set_default("Alice said hi and was greeted.")
    run_worker = CeleryWorker(env, concurrency=2, queues="runs")
    summary_worker = CeleryWorker(env, concurrency=1, queues=ALL_SHARDS)
    service = from_url(redis_url)
    loop = asyncio.new_event_loop()
    try:
        for worker in (run_worker, summary_worker):
            worker.start()
        for worker in (run_worker, summary_worker):
            worker.wait_ready()
        invocation = submit_run.delay(APP, USER, "chat-1", "Hi, I am Alice").id
        events = wait_for_completion(redis_url, invocation)
        assert events[-1]["status"] == "completed"
        _wait_for(
            lambda: loop.run_until_complete(service.get_summary(APP, USER, "chat-1")) is not None,
            "the summary",
        )
        summary = loop.run_until_complete(service.get_summary(APP, USER, "chat-1"))
    finally:
        for worker in (run_worker, summary_worker):
            worker.close()
        loop.run_until_complete(service.close())
        loop.close()
    assert summary is not None and summary.text == "Alice said hi and was greeted."
    assert summary.event_count == 2  # the user message and the answer
    assert "Hi, I am Alice" in server.requests[-1]["messages"][-1]["content"]


# --- many jobs, two workers sharing every shard, one killed --------------------------------


def _intervals(
    records: list[dict[str, Any]], killed_pid: int, killed_at: float
) -> dict[str, list[tuple[float, float, str]]]:
    """Per session, each lease holding as (start, end, attempt); a holding that never ended
    lasts until its worker was killed (or is still going)."""
    ends = {r["attempt"]: r["t"] for r in records if r["phase"] == "end"}
    by_session: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for record in records:
        if record["phase"] != "start":
            continue
        end = ends.get(record["attempt"])
        if end is None:
            end = killed_at if record["pid"] == killed_pid else math.inf
        by_session[record["session"]].append((record["t"], end, record["attempt"]))
    return by_session


def test_jobs_for_one_session_never_overlap_and_summaries_only_move_forward(
    env: dict[str, str], producer: Any, server: ScriptedModelServer, redis_url: str
) -> None:
    from workers.summaries import enqueue_summary

    sessions = [f"s{i}" for i in range(6)]
    rounds = 4
    server.latency = 0.25  # slow enough that jobs would overlap if nothing stopped them
    server.set_default("a summary")
    service = from_url(redis_url)
    loop = asyncio.new_event_loop()
    workers = [CeleryWorker(env, concurrency=1, queues=ALL_SHARDS) for _ in range(2)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.wait_ready()
        victim, survivor = workers
        killed_at = 0.0
        totals: dict[str, int] = {}
        for round_ in range(rounds):
            for session_id in sessions:
                totals[session_id] = loop.run_until_complete(
                    add_turns(service, session_id, 1, start=round_)
                )
                enqueue_summary(APP, USER, session_id)
                enqueue_summary(APP, USER, session_id)  # a duplicate
            if round_ == 1:
                killed_at = _kill_mid_job(victim, redis_url)
            _wait_for(lambda: _all_covered(loop, service, totals), f"round {round_}")
        # Then jobs arriving after every session's summary covers all events find the work done.
        done_before = _count(trace(redis_url), "not_due")
        for session_id in sessions:
            enqueue_summary(APP, USER, session_id, force=True)
        _wait_for(
            lambda: _count(trace(redis_url), "not_due") >= done_before + len(sessions),
            "no-op jobs",
        )
        records = trace(redis_url)
        assert survivor.is_alive()
    finally:
        for worker in workers:
            worker.close()
        loop.run_until_complete(service.close())
        loop.close()

    assert_no_overlap(records, victim.pid, killed_at)
    assert_forward_only(records, {f"{APP}/{USER}/{sid}": total for sid, total in totals.items()})


def assert_no_overlap(records: list[dict[str, Any]], killed_pid: int, killed_at: float) -> None:
    """No two jobs of one session held it at once (a killed job lasts until it was killed)."""
    intervals = _intervals(records, killed_pid, killed_at)
    assert any(end == killed_at for spans in intervals.values() for _, end, _ in spans), (
        "the killed worker was not in the middle of a job"
    )
    for session, spans in intervals.items():
        spans.sort()
        for (_, end, first), (start, _, second) in itertools.pairwise(spans):
            assert start >= end, f"{session}: {second} started before {first} ended"


def assert_forward_only(records: list[dict[str, Any]], totals: dict[str, int]) -> None:
    """Each store moved the boundary forward, and the last one covers every event."""
    stored: dict[str, list[int]] = defaultdict(list)
    for record in records:
        if record["phase"] == "stored":
            stored[record["session"]].append(record["event_count"])
    for session, total in totals.items():
        counts = stored[session]
        assert counts == sorted(set(counts)), f"{session}: stored boundaries {counts}"
        assert counts[-1] == total


def _kill_mid_job(worker: CeleryWorker, redis_url: str) -> float:
    """Wait until ``worker`` is inside a job (started, not ended), SIGKILL it, return when."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        records = [r for r in trace(redis_url) if r["pid"] == worker.pid]
        open_jobs = {r["attempt"] for r in records if r["phase"] == "start"} - {
            r["attempt"] for r in records if r["phase"] == "end"
        }
        if open_jobs:
            worker.kill()
            return time.time()
        time.sleep(0.01)
    raise AssertionError("the worker to kill never started a job")


def _all_covered(loop: asyncio.AbstractEventLoop, service: Any, totals: dict[str, int]) -> bool:
    for session_id, total in totals.items():
        summary = loop.run_until_complete(service.get_summary(APP, USER, session_id))
        if summary is None or summary.event_count < total:
            return False
    return True


def _count(records: list[dict[str, Any]], status: str) -> int:
    return sum(1 for r in records if r["phase"] == "end" and r.get("status") == status)


def _wait_for(condition: Any, what: str, timeout: float = 60.0) -> None:
    # The deadline only keeps a broken queue from hanging the suite; nothing asserts on timing.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} at {datetime.now(UTC).isoformat()}")
