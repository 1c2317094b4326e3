"""Exactly once under partitions, with real workers, a real Redis and PostgreSQL, faults injected.

- A worker cut off from Redis (a :class:`~tests.tcp_proxy.TcpProxy` between it and Redis that
  stops forwarding) for longer than the recovery timeout, while its runs stream, then healed.
- A worker paused with SIGSTOP past the recovery timeout, then resumed.

In both, another worker takes the runs over and finishes them; the stale worker's writes,
delivered late, must all be refused. For every run, on the Redis and on the PostgreSQL session
store: exactly one completion, gap-free ``seq``, no event stored twice, no stored tool result
produced twice. And a double failure: the worker that took a paused worker's run over dies
too, after the resumed worker was refused; a third worker finishes the run, because the
refused delivery put its broker message back instead of acknowledging it. And the hijack
case: a run sent with another user's invocation ID, while that run is live and after it
ended, is refused without touching the owner's run.

docs/workers.md ("Ownership and fencing") names these tests for each guarantee.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery.events.state import State

from runner_core.events import decode_event
from runner_core.session import Session
from runner_core.testing import ScriptedModelServer, ScriptedReply
from session_backends import from_url
from tests.celery_workers import (
    CeleryWorker,
    StartWorker,
    completions,
    read_events,
    wait_for_completion,
)
from tests.services import RedisServer
from tests.tcp_proxy import TcpProxy
from tests.worker_agents import TOOL_COUNTER_KEY

pytestmark = [pytest.mark.redis, pytest.mark.celery]

RUNS = 4
#: What the stale worker streams: long enough to still be going when it comes back.
LONG_ANSWER = ScriptedReply.text(" ".join(f"w{n}" for n in range(60)), chunk_delay=0.3)
#: What the worker that takes over gets from the model.
SHORT_ANSWER = ScriptedReply.text("taken over and done", chunks=4)
SETTLE_TIMEOUT_S = 60.0


@pytest.fixture
def model_server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as server:
        yield server


@pytest.fixture(params=["redis", "postgresql"])
def session_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """The session store of both workers: the test Redis, or a fresh PostgreSQL database."""
    if request.param == "redis":
        return redis_url
    postgres_dsn: str = request.getfixturevalue("postgres_dsn")
    return postgres_dsn


def wait_until(condition: Callable[[], Any], what: str, timeout: float = SETTLE_TIMEOUT_S) -> Any:
    """Poll ``condition`` until it is truthy. The timeout only keeps a broken run from hanging
    the suite; nothing asserts on how long it took."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def load_session(url: str, app_name: str, user_id: str, session_id: str) -> Session | None:
    async def load() -> Session | None:
        service = from_url(url)
        try:
            return await service.get_session(app_name, user_id, session_id)
        finally:
            await service.close()

    return asyncio.run(load())


def idle(producer: Any, worker: CeleryWorker) -> bool:
    """The worker runs no task any more (its stale runs have stopped)."""
    replies = producer.control.inspect(destination=[worker.hostname], timeout=1).active()
    return bool(replies) and not any(replies.values())


def submit_streaming_runs(producer: Any, model_server: ScriptedModelServer) -> list[str]:
    """RUNS runs of the ``testkit`` app, each calling the ``record`` tool once and then
    streaming a long answer; returns their invocation IDs once all of them stream."""
    from workers.tasks import submit_run

    model_server.set_default(LONG_ANSWER)
    ids = []
    for n in range(RUNS):
        call = (f"call-{n}", "record", {"label": f"run-{n}"})
        model_server.add_tool_calls([call], match=f"run-{n}")
        ids.append(submit_run.delay("testkit", "una", f"s-part-{n}", f"run-{n} please").id)
    wait_until(lambda: len(model_server.requests) >= 2 * RUNS, "every run to stream its answer")
    model_server.set_default(SHORT_ANSWER)
    return ids


def assert_exactly_once(
    producer: Any, redis_url: str, session_url: str, invocation_ids: list[str]
) -> None:
    """Per run: one completion, last; gap-free seq; each stored event and tool result once;
    the task's result is that completion (the stale delivery did not overwrite it)."""
    tools = redis.Redis.from_url(redis_url)
    try:
        executions = {k.decode(): int(v) for k, v in tools.hgetall(TOOL_COUNTER_KEY).items()}
    finally:
        tools.close()
    for n, invocation_id in enumerate(invocation_ids):
        events = read_events(redis_url, invocation_id)
        assert [e["seq"] for e in events] == list(range(len(events))), invocation_id
        assert len(completions(events)) == 1, invocation_id
        assert events[-1]["type"] == "runner.completion"
        assert events[-1]["status"] == "completed"
        session = load_session(session_url, "testkit", "una", f"s-part-{n}")
        assert session is not None
        ids = [e.id for e in session.events]
        assert len(ids) == len(set(ids)), ids
        # every stored event was published once, with the same seq
        published = {decode_event(json.dumps(e)).id: e["seq"] for e in events}
        assert all(published.get(e.id) == e.seq for e in session.events)
        results = [e for e in session.events if e.type == "tool.result"]
        assert [r.message.tool_call_id for r in results if r.message] == [f"call-{n}"]
        # the stored result is the output of the tool's first and only stored execution
        assert results[0].message is not None
        assert results[0].message.content == f"recorded run-{n} (1)"
        assert executions.get(f"run-{n}", 0) >= 1
        result = producer.AsyncResult(invocation_id)
        assert (result.state, result.result) == ("SUCCESS", events[-1])


def assert_stopped_as_stale(worker: CeleryWorker, invocation_ids: list[str]) -> None:
    """Each of the worker's runs ended as a stale delivery, logged with the reason (so the
    fault really happened: its writes came after the takeover and were refused)."""
    log = worker.log_tail(200_000)
    for invocation_id in invocation_ids:
        assert f"run {invocation_id}: delivery refused (stale delivery)" in log, invocation_id


def test_a_worker_cut_off_from_redis_past_the_recovery_timeout_never_writes_again(
    producer: Any,
    start_worker: StartWorker,
    model_server: ScriptedModelServer,
    redis_server: RedisServer,
    redis_url: str,
    session_url: str,
) -> None:
    # Given a worker that reaches Redis through a proxy, streaming runs
    with TcpProxy(redis_server.host, redis_server.port) as proxy:
        proxied = {
            "AGENT_RUNNER_BROKER_URL": proxy.url(),
            "AGENT_RUNNER_REDIS_URL": proxy.url(),
            "AGENT_RUNNER_RESULT_BACKEND": proxy.url(path="/1"),
            "AGENT_RUNNER_SESSION_URL": proxy.url() if session_url == redis_url else session_url,
        }
        stale = start_worker(OPENAI_BASE_URL=model_server.url, **proxied)
        ids = submit_streaming_runs(producer, model_server)
        start_worker(OPENAI_BASE_URL=model_server.url, AGENT_RUNNER_SESSION_URL=session_url)

        # When the proxy cuts it off for longer than the recovery timeout, so that the other
        # worker takes its runs over and finishes them, and then the network heals
        proxy.cut()
        for invocation_id in ids:
            wait_for_completion(redis_url, invocation_id, timeout=SETTLE_TIMEOUT_S)
        proxy.heal()
        wait_until(lambda: idle(producer, stale), "the cut-off worker to stop its runs")

        # Then every run finished exactly once: what the cut-off worker sent late was refused
        assert_exactly_once(producer, redis_url, session_url, ids)
        assert stale.is_alive()
        assert_stopped_as_stale(stale, ids)


def test_a_worker_paused_past_the_recovery_timeout_never_writes_again(
    producer: Any,
    start_worker: StartWorker,
    model_server: ScriptedModelServer,
    redis_url: str,
    session_url: str,
) -> None:
    # Given a worker streaming runs
    stale = start_worker(OPENAI_BASE_URL=model_server.url, AGENT_RUNNER_SESSION_URL=session_url)
    ids = submit_streaming_runs(producer, model_server)
    start_worker(OPENAI_BASE_URL=model_server.url, AGENT_RUNNER_SESSION_URL=session_url)

    # When it is paused (SIGSTOP) until the other worker has taken over and finished its runs,
    # and then resumed
    os.killpg(stale.pid, signal.SIGSTOP)
    try:
        for invocation_id in ids:
            wait_for_completion(redis_url, invocation_id, timeout=SETTLE_TIMEOUT_S)
    finally:
        os.killpg(stale.pid, signal.SIGCONT)
    wait_until(lambda: idle(producer, stale), "the resumed worker to stop its runs")

    # Then every run finished exactly once: nothing the resumed worker did was written
    assert_exactly_once(producer, redis_url, session_url, ids)
    assert stale.is_alive()
    assert_stopped_as_stale(stale, ids)


# --- a double failure ------------------------------------------------------------------------


def delivery_tag_of(redis_url: str, invocation_id: str) -> str | None:
    """The delivery tag under which kombu's Redis transport keeps the run's message while a
    worker holds it (the ``unacked`` hash: delivery tag -> message)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        held = {str(tag): str(message) for tag, message in client.hgetall("unacked").items()}
    finally:
        client.close()
    return next((tag for tag, message in held.items() if invocation_id in message), None)


def left_in_broker(redis_url: str, invocation_id: str, delivery_tag: str) -> dict[str, int]:
    """What kombu's Redis transport still holds: messages waiting in the ``runs`` queue, and
    the run's message in ``unacked`` and its tag in ``unacked_index`` (the sweep delivers again
    what has been unacknowledged too long there)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return {
            "runs": client.llen("runs"),
            "unacked": sum(invocation_id in str(message) for message in client.hvals("unacked")),
            "unacked_index": int(client.zscore("unacked_index", delivery_tag) is not None),
        }
    finally:
        client.close()


def as_subscribers_read(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """docs/events.md: by ``seq``, the first of a repeated ``seq`` kept. A repeat (a publish
    retried after a lost reply) must be the very same event, never another one."""
    kept: dict[int, dict[str, Any]] = {}
    for event in events:
        first = kept.setdefault(event["seq"], event)
        assert first == event, f"two different events with seq {event['seq']}"
    return [kept[seq] for seq in sorted(kept)]


def rejections(events: list[dict[str, Any]], task_id: str) -> list[tuple[str, bool]]:
    """(worker, requeue) of each ``task-rejected`` event of the task, as Flower receives them."""
    return [
        (event["hostname"], event["requeue"])
        for event in events
        if event["type"] == "task-rejected" and event.get("uuid") == task_id
    ]


def test_a_run_survives_its_paused_worker_and_then_the_death_of_its_new_owner(
    producer: Any,
    start_worker: StartWorker,
    model_server: ScriptedModelServer,
    redis_url: str,
    task_events: list[dict[str, Any]],
) -> None:
    from workers.tasks import submit_run

    # Given a run streaming its answer on worker A after its tool call. A and B have one slot
    # each: while they hold the run they take no message, so a copy put back goes to C.
    model_server.add_tool_calls([("call-0", "record", {"label": "run-0"})])
    model_server.add(LONG_ANSWER)  # A's answer: A is paused while it streams
    model_server.add(LONG_ANSWER)  # B's answer: B is killed while it streams
    model_server.add(SHORT_ANSWER)  # the answer of whoever finishes the run
    stale = start_worker(concurrency=1, OPENAI_BASE_URL=model_server.url)
    run_id = submit_run.delay("testkit", "una", "s-part-0", "run-0 please").id
    wait_until(lambda: len(model_server.requests) == 2, "A to stream its answer")
    tag = delivery_tag_of(redis_url, run_id)
    assert tag is not None
    owner = start_worker(concurrency=1, OPENAI_BASE_URL=model_server.url)

    # When A is paused past the recovery timeout, so that B takes the run over (its copy of
    # the message keeps A's delivery tag), and a third worker C starts
    os.killpg(stale.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: len(model_server.requests) == 3, "B to take the run over")
        assert delivery_tag_of(redis_url, run_id) == tag
        finisher = start_worker(OPENAI_BASE_URL=model_server.url)
    finally:
        os.killpg(stale.pid, signal.SIGCONT)
    # and A, resumed, is refused and answers its message
    wait_until(lambda: rejections(task_events, run_id), "A to answer its message")
    # and then B is killed before it finishes
    assert not completions(read_events(redis_url, run_id))
    owner.kill()

    # Then C finishes the run, once, continuing its seq
    events = as_subscribers_read(wait_for_completion(redis_url, run_id, timeout=SETTLE_TIMEOUT_S))
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert completions(events) == [events[-1]]
    assert (events[-1]["status"], events[-1]["final_text"]) == ("completed", SHORT_ANSWER.content)
    # The task is logged as succeeded just after its completion is published: wait for the line
    succeeded = f"agent_runner.submit_run[{run_id}] succeeded"
    wait_until(lambda: succeeded in finisher.log_tail(200_000), "the finisher to log success")
    result = producer.AsyncResult(run_id)
    assert (result.state, result.result) == ("SUCCESS", events[-1])
    # And the session holds each turn once, as published; the tool ran once
    session = load_session(redis_url, "testkit", "una", "s-part-0")
    assert session is not None
    assert [e.type for e in session.events] == ["message", "message", "tool.result", "message"]
    published = {decode_event(json.dumps(e)).id: e["seq"] for e in events}
    assert all(published.get(e.id) == e.seq for e in session.events)
    tools = redis.Redis.from_url(redis_url)
    try:
        assert tools.hgetall(TOOL_COUNTER_KEY) == {b"run-0": b"1"}
    finally:
        tools.close()
    # And no copy of the message is left: none queued, none waiting to be delivered again
    nothing = {"runs": 0, "unacked": 0, "unacked_index": 0}
    wait_until(lambda: left_in_broker(redis_url, run_id, tag) == nothing, "C's acknowledgement")
    # And A stopped as a stale delivery that put its message back (Flower: rejected, requeued)
    assert stale.is_alive()
    assert_stopped_as_stale(stale, [run_id])
    assert rejections(task_events, run_id) == [(stale.hostname, True)]


# --- hijack ----------------------------------------------------------------------------------


@pytest.fixture
def task_events(producer: Any) -> Iterator[list[dict[str, Any]]]:
    """Every Celery task event sent while the test runs, as Flower receives them."""
    events: list[dict[str, Any]] = []
    ready = threading.Event()
    with producer.connection_for_read() as connection:
        receiver = producer.events.Receiver(connection, handlers={"*": events.append})
        receiver.on_consume_ready = lambda *args, **kwargs: ready.set()
        thread = threading.Thread(target=receiver.capture, kwargs={"wakeup": False}, daemon=True)
        thread.start()
        assert ready.wait(10), "the event receiver did not start"
        try:
            yield events
        finally:
            receiver.should_stop = True
            thread.join(timeout=5)


def flower_view(events: list[dict[str, Any]], task_id: str) -> tuple[str, set[str]]:
    """The task's state as Flower shows it (celery's own event state machine) and the kinds
    of event it got."""
    state = State()
    kinds = set()
    for event in events:
        if event.get("uuid") == task_id:
            kinds.add(event["type"])
            state.event(event)
    return state.tasks[task_id].state, kinds



def refused_in_log(worker: CeleryWorker, invocation_id: str) -> bool:
    return any(
        invocation_id in line and "refused" in line for line in worker.log_tail(60000).splitlines()
    )


def test_a_run_sent_with_a_live_run_s_invocation_id_is_refused(
    producer: Any,
    start_worker: StartWorker,
    model_server: ScriptedModelServer,
    redis_url: str,
    task_events: list[dict[str, Any]],
) -> None:
    from workers.client import cancel
    from workers.tasks import submit_run

    # Given alice's run, live (waiting on the model)
    model_server.add_hang(match="alice asks")
    model_server.add_text("mallory's answer", match="mallory asks")
    worker = start_worker(OPENAI_BASE_URL=model_server.url)
    owner = submit_run.delay("testkit", "alice", "s-alice", "alice asks")
    wait_until(lambda: len(model_server.requests) == 1, "alice's run to reach the model")
    before = wait_until(lambda: read_events(redis_url, owner.id), "alice's first event")

    # When mallory sends a run with alice's invocation ID
    submit_run.apply_async(("testkit", "mallory", "s-mallory", "mallory asks"), task_id=owner.id)

    # Then it is refused (logged with the reason), without writing to alice's run
    wait_until(
        lambda: refused_in_log(worker, owner.id) or completions(read_events(redis_url, owner.id)),
        "mallory's delivery to end",
    )
    assert refused_in_log(worker, owner.id)
    assert read_events(redis_url, owner.id) == before  # nothing of mallory's in alice's stream
    assert len(model_server.requests) == 1  # mallory's run never ran
    assert load_session(redis_url, "testkit", "mallory", "s-mallory") is None
    # And alice's run goes on as hers alone
    cancel(owner.id, redis_url=redis_url)
    events = wait_for_completion(redis_url, owner.id)
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert len(completions(events)) == 1
    assert events[-1]["user_id"] == "alice"  # the completion names the run: still alice's
    # And Flower shows mallory's delivery as rejected, never as a failure of alice's task
    ended = {"task-revoked", "task-succeeded", "task-failed"}  # alice's was cancelled: REVOKED
    wait_until(lambda: ended & flower_view(task_events, owner.id)[1], "alice's task to end")
    state, kinds = flower_view(task_events, owner.id)
    assert "task-rejected" in kinds and "task-failed" not in kinds
    assert state in ("REVOKED", "SUCCESS")


def test_a_run_sent_with_a_finished_run_s_invocation_id_gets_nothing_of_it(
    producer: Any,
    start_worker: StartWorker,
    model_server: ScriptedModelServer,
    redis_url: str,
    task_events: list[dict[str, Any]],
) -> None:
    from workers.tasks import submit_run

    # Given alice's run, finished
    model_server.add_text("alice's secret answer")
    worker = start_worker(OPENAI_BASE_URL=model_server.url)
    owner = submit_run.delay("testkit", "alice", "s-alice", "alice asks")
    assert owner.get(timeout=SETTLE_TIMEOUT_S)["final_text"] == "alice's secret answer"
    before = read_events(redis_url, owner.id)

    # When mallory sends a run with alice's invocation ID
    submit_run.apply_async(("testkit", "mallory", "s-mallory", "mallory asks"), task_id=owner.id)

    # Then it is refused (logged with the reason): alice's stream and task result are untouched
    wait_until(
        lambda: refused_in_log(worker, owner.id)
        or worker.log_tail(60000).count(f"{owner.id}] succeeded") > 1,
        "mallory's delivery to end",
    )
    assert refused_in_log(worker, owner.id)
    assert read_events(redis_url, owner.id) == before
    assert owner.state == "SUCCESS"
    assert owner.get(timeout=5)["user_id"] == "alice"
    assert len(model_server.requests) == 1
    assert load_session(redis_url, "testkit", "mallory", "s-mallory") is None
    # And Flower shows mallory's delivery as rejected while alice's task stays a success
    wait_until(lambda: "task-rejected" in flower_view(task_events, owner.id)[1], "the event")
    state, kinds = flower_view(task_events, owner.id)
    assert state == "SUCCESS" and "task-failed" not in kinds
