"""Trees of agents through real ``celery worker`` processes (issue 15): a transfer mid-run, a
parallel agent whose branches stream on one stream, a loop that escalates, an agent called as
a tool, a paused sub-agent resumed by another worker process, and a worker SIGKILLed in the
middle of a sequential agent.

One worker serves the module (apps from tests/worker_agents.py), on a Redis database of its
own so that it outlives the per-test flushes of DB 0; the two tests that need another worker
process replace it, and the new one serves the tests after them. Each agent's instruction is
"You are {name}.", so the scripted model routes each reply to its agent (``match=``). Events
are read from the stream with plain redis-py.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from runner_core.session import Session
from runner_core.testing import ScriptedModelServer
from session_backends import from_url
from tests.celery_workers import (
    ROOT,
    TEST_RECOVERY_TIMEOUT_S,
    TEST_RESTORE_INTERVAL_S,
    CeleryWorker,
    _forget_producer_pool,
    completions,
    wait_for_completion,
)
from tests.services import RedisServer
from tests.worker_agents import TOOL_COUNTER_KEY, WORKER_PIDS_KEY

pytestmark = [pytest.mark.redis, pytest.mark.celery]

#: This module's Redis database (DB 0 is flushed by other tests' fixtures), and the next one
#: for task results.
TREES_DB = 12
AGENTS = ",".join(
    f"{app}=tests.worker_agents:build_{app}"
    for app in ("desk", "fanout", "refine", "consult", "approvals", "chain")
)


# --- one worker for the module ----------------------------------------------------------------


class Workers:
    """The module's worker process; :meth:`replace` swaps it for a new one."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.current = CeleryWorker(env, concurrency=4).start().wait_ready()
        self._all = [self.current]

    def replace(self) -> CeleryWorker:
        """SIGKILL the current worker (with whatever run it holds) and return a new, ready one.

        The new process starts before the kill, to overlap its start-up; no run is queued
        then, so it can only take runs sent or put back after the kill.
        """
        new = CeleryWorker(self.env, concurrency=4).start()
        self._all.append(new)
        self.current.kill()
        self.current = new.wait_ready()
        return new

    def close(self) -> None:
        for worker in self._all:
            worker.close()


@pytest.fixture(scope="module")
def model_server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as server:
        yield server


@pytest.fixture(scope="module")
def events_url(redis_server: RedisServer) -> str:
    url = redis_server.url_for_db(TREES_DB)
    for db in (TREES_DB, TREES_DB + 1):
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
    return {
        "AGENT_RUNNER_BROKER_URL": events_url,
        "AGENT_RUNNER_REDIS_URL": events_url,
        "AGENT_RUNNER_SESSION_URL": events_url,
        "AGENT_RUNNER_RESULT_BACKEND": redis_server.url_for_db(TREES_DB + 1),
        # A killed worker's run is put back on the queue within seconds.
        "AGENT_RUNNER_RECOVERY_TIMEOUT_S": TEST_RECOVERY_TIMEOUT_S,
        "AGENT_RUNNER_RESTORE_INTERVAL_S": TEST_RESTORE_INTERVAL_S,
        "AGENT_RUNNER_RESTORE_THROTTLE": "1",
        "AGENT_RUNNER_SOFT_SHUTDOWN_S": "0",
        "AGENT_RUNNER_MODEL": "scripted",
        "AGENT_RUNNER_AGENTS": AGENTS,
        "OPENAI_BASE_URL": model_server.url,
    }


@pytest.fixture(scope="module")
def workers(module_env: dict[str, str]) -> Iterator[Workers]:
    env = dict(os.environ)
    env.update(module_env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    pool = Workers(env)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="module")
def producer(module_env: dict[str, str], workers: Workers) -> Iterator[Any]:
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
    """The scripted model, reset for this test (hanging requests of the last one released);
    with the worker and the producer up."""
    model_server.reset()
    return model_server


@pytest.fixture
def session_id() -> str:
    return f"s-{uuid.uuid4().hex[:12]}"


# --- helpers ------------------------------------------------------------------------------


def submit(app_name: str, session_id: str, message: str | None, **options: Any) -> Any:
    """``submit_run.delay``, as any producer calls it."""
    from workers.tasks import submit_run

    return submit_run.delay(app_name, "alice", session_id, message, **options)


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


def hash_of(events_url: str, key: str) -> dict[str, str]:
    client = redis.Redis.from_url(events_url)
    try:
        raw = client.hgetall(key)
    finally:
        client.close()
    return {k.decode(): v.decode() for k, v in raw.items()}


def executions(events_url: str, session_id: str) -> dict[str, int]:
    """How many times each tool label of this test (prefixed with its session ID) ran."""
    counts = hash_of(events_url, TOOL_COUNTER_KEY)
    return {k: int(v) for k, v in counts.items() if k.startswith(session_id)}


def requests_of(model: ScriptedModelServer, agent: str) -> list[dict[str, Any]]:
    """The model requests ``agent`` made (its instruction is in the system message)."""
    marker = f"You are {agent}."
    return [body for body in model.requests if body["messages"][0].get("content") == marker]


def said(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(type, author, text) of each complete event, deltas and the completion left out."""
    out = []
    for event in events:
        if event["type"] in ("message.delta", "run.restarted", "runner.completion"):
            continue
        message = event.get("message") or {}
        text = message.get("content") or event.get("to_agent") or ""
        out.append((event["type"], event["author"], text))
    return out


def assert_delivered_once(events: list[dict[str, Any]]) -> None:
    """Gap-free seq, no seq twice, exactly one completion, and it is last."""
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(len(events))), seqs
    assert len(completions(events)) == 1
    assert events[-1]["type"] == "runner.completion"


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# --- transfers ------------------------------------------------------------------------------


def test_a_transfer_mid_run_hands_the_run_and_the_session_to_the_target(
    model: ScriptedModelServer, events_url: str, session_id: str
) -> None:
    # Given a desk agent whose model hands the question to billing, which answers
    model.add_tool_calls(
        [("call_t", "transfer_to_agent", {"agent_name": "billing"})], match="You are desk."
    )
    model.add_text("Invoice 7 is paid.", match="You are billing.")

    # When a run goes
    first = submit("desk", session_id, "Is invoice 7 paid?")

    # Then the stream shows the transfer as an event of its own, and who wrote what
    events = wait_for_completion(events_url, first.id)
    assert_delivered_once(events)
    assert said(events) == [
        ("message", "user", "Is invoice 7 paid?"),
        ("message", "desk", ""),
        ("tool.result", "desk", "Transferred to billing."),
        ("agent.transfer", "desk", "billing"),
        ("message", "billing", "Invoice 7 is paid."),
    ]
    assert events[-1]["status"] == "completed"
    assert events[-1]["final_text"] == "Invoice 7 is paid."

    # When the session's next run goes
    model.add_text("It was paid on Monday.", match="You are billing.")
    second = submit("desk", session_id, "When?")

    # Then it starts with billing: the desk is not asked again
    events = wait_for_completion(events_url, second.id)
    assert said(events) == [
        ("message", "user", "When?"),
        ("message", "billing", "It was paid on Monday."),
    ]
    assert len(requests_of(model, "desk")) == 1
    assert len(requests_of(model, "billing")) == 2


# --- parallel -------------------------------------------------------------------------------


def test_parallel_branches_stream_concurrently_on_one_gap_free_stream(
    model: ScriptedModelServer, events_url: str, session_id: str
) -> None:
    # Given two branches whose models stream their answers word by word
    left = " ".join(f"west{n}" for n in range(20))
    right = " ".join(f"east{n}" for n in range(20))
    model.add_text(left, chunk_delay=0.05, match="You are left.")
    model.add_text(right, chunk_delay=0.05, match="You are right.")

    # When a run of the parallel agent goes
    result = submit("fanout", session_id, "Look both ways.")

    # Then its one stream is gap-free and ends with one completion
    events = wait_for_completion(events_url, result.id)
    assert_delivered_once(events)
    assert events[-1]["status"] == "completed"
    # And the branches' deltas interleave: both streamed at once
    deltas = [e for e in events if e["type"] == "message.delta"]
    authors = [e["author"] for e in deltas]
    assert authors.index("right") < len(authors) - 1 - authors[::-1].index("left"), authors
    assert authors.index("left") < len(authors) - 1 - authors[::-1].index("right"), authors
    # And every event of a branch carries its branch; each branch's deltas make its answer
    for event in events[1:-1]:
        assert event["branch"] == f"fanout.{event['author']}", event
    for author, text in (("left", left), ("right", right)):
        assert "".join(e["delta"] for e in deltas if e["author"] == author) == text
    answers = {(e["author"], e["message"]["content"]) for e in events if e["type"] == "message"}
    assert answers >= {("left", left), ("right", right)}
    # And the session holds each branch's answer on its branch
    stored = load_session(events_url, "fanout", session_id).events
    assert {(e.author, e.branch) for e in stored if e.type == "message"} == {
        ("user", None),
        ("left", "fanout.left"),
        ("right", "fanout.right"),
    }


# --- loop -----------------------------------------------------------------------------------


def test_a_loop_repeats_until_a_tool_escalates(
    model: ScriptedModelServer, events_url: str, session_id: str
) -> None:
    # Given a writer and a critic in a loop; the critic approves the second draft with a tool
    # that escalates
    approve = {"label": f"{session_id}-approve"}
    model.add_text("Draft one.", match="You are writer.")
    model.add_text("Shorter, please.", match="You are critic.")
    model.add_text("Draft two.", match="You are writer.")
    model.add_tool_calls([("call_ok", "approve", approve)], match="You are critic.")
    model.add_text("Approved.", match="You are critic.")

    # When a run goes
    result = submit("refine", session_id, "Write a haiku.")

    # Then the loop ran two iterations and stopped after the critic's approving turn
    events = wait_for_completion(events_url, result.id)
    assert_delivered_once(events)
    answers = [(author, text) for kind, author, text in said(events) if kind == "message"]
    assert answers == [
        ("user", "Write a haiku."),
        ("writer", "Draft one."),
        ("critic", "Shorter, please."),
        ("writer", "Draft two."),
        ("critic", ""),
        ("critic", "Approved."),
    ]
    assert events[-1]["status"] == "completed"
    assert events[-1]["final_text"] == "Approved."
    assert executions(events_url, session_id) == {f"{session_id}-approve": 1}
    assert len(requests_of(model, "writer")) == 2


# --- agent as a tool ------------------------------------------------------------------------


def test_an_agent_tool_result_is_the_helpers_answer_and_its_events_stay_off_the_stream(
    model: ScriptedModelServer, events_url: str, session_id: str
) -> None:
    # Given a consultant whose model calls the helper agent as a tool
    question = {"request": "What is the capital of Peru?"}
    model.add_tool_calls([("call_h", "helper", question)], match="You are consultant.")
    model.add_text("Lima is the capital of Peru.", match="You are helper.")
    model.add_text("The helper says Lima.", match="You are consultant.")

    # When a run goes
    result = submit("consult", session_id, "Ask the helper about Peru.")

    # Then the tool's result is the helper's answer, and the run completes with the caller's
    events = wait_for_completion(events_url, result.id)
    assert_delivered_once(events)
    assert said(events) == [
        ("message", "user", "Ask the helper about Peru."),
        ("message", "consultant", ""),
        ("tool.result", "consultant", "Lima is the capital of Peru."),
        ("message", "consultant", "The helper says Lima."),
    ]
    assert events[-1]["final_text"] == "The helper says Lima."
    # And none of the helper's events is on the caller's stream, streamed text included
    assert {e["author"] for e in events} == {"user", "consultant", "consult"}
    deltas = "".join(e["delta"] for e in events if e["type"] == "message.delta")
    assert deltas == "The helper says Lima."
    # And the helper saw only its input
    (helper_request,) = requests_of(model, "helper")
    assert [m["content"] for m in helper_request["messages"]] == [
        "You are helper.",
        "What is the capital of Peru?",
    ]


# --- runs that another worker process finishes (these replace the module's worker) --------


def test_a_paused_sub_agent_is_resumed_by_a_run_on_another_worker_process(
    model: ScriptedModelServer, events_url: str, session_id: str, workers: Workers
) -> None:
    # Given a clerk then a cashier, whose refund waits for a person's confirmation
    note = {"label": f"{session_id}-paused"}
    refund = {"label": f"{session_id}-resumed", "amount": 30}
    model.add_text("Order 9 may be refunded.", match="You are clerk.")
    model.add_tool_calls(
        [("call_note", "note_worker", note), ("call_refund", "refund_here", refund)],
        match="You are cashier.",
    )
    model.add_text("Refunded 30.", match="You are cashier.")

    # When a run goes, it pauses in the cashier
    paused = wait_for_completion(events_url, submit("approvals", session_id, "Refund order 9.").id)
    assert paused[-1]["status"] == "paused"
    (pause,) = [e for e in paused if e["type"] == "run.paused"]
    assert pause["author"] == "cashier"
    assert [c["id"] for c in pause["requested_confirmations"]] == ["call_refund"]
    assert executions(events_url, session_id) == {}

    # When its worker process is gone and a second run, on a new one, confirms the refund
    old = workers.current
    new = workers.replace()
    result = submit("approvals", session_id, None, tool_confirmations={"call_refund": True})

    # Then the cashier goes on where it paused: the refund runs once and the cashier answers
    events = wait_for_completion(events_url, result.id)
    assert_delivered_once(events)
    assert said(events) == [
        ("tool.result", "cashier", "refunded 30"),
        ("message", "cashier", "Refunded 30."),
    ]
    assert events[-1]["status"] == "completed"
    assert events[-1]["final_text"] == "Refunded 30."
    assert executions(events_url, session_id) == {f"{session_id}-resumed": 1}
    # And the clerk did not run again
    assert len(requests_of(model, "clerk")) == 1
    # And the pause and the resume ran in two worker processes
    pids = hash_of(events_url, WORKER_PIDS_KEY)
    assert int(pids[f"{session_id}-paused"]) == old.pid
    assert int(pids[f"{session_id}-resumed"]) == new.pid != old.pid


def test_a_worker_killed_mid_sequence_is_recovered_and_the_run_finishes_once(
    model: ScriptedModelServer, events_url: str, session_id: str, workers: Workers
) -> None:
    # Given a sequence of two agents with a tool each; the worker dies when the second one's
    # tool has run and its model call is under way
    first_label, second_label = f"{session_id}-first", f"{session_id}-second"
    model.add_tool_calls([("call_1", "record", {"label": first_label})], match="You are first.")
    model.add_text("First done.", match="You are first.")
    model.add_tool_calls([("call_2", "record", {"label": second_label})], match="You are second.")
    model.add_hang(match="You are second.")  # the answer the killed worker never gets
    model.add_text("Second done.", match="You are second.")
    result = submit("chain", session_id, "Do both steps.")
    wait_for(lambda: model.pending == 1, "the second agent's model call after its tool")
    assert executions(events_url, session_id) == {first_label: 1, second_label: 1}

    # When the worker is SIGKILLed and a new one comes up
    workers.replace()

    # Then the redelivered run completes exactly once, on one gap-free stream
    events = wait_for_completion(events_url, result.id)
    assert_delivered_once(events)
    assert [e["attempt"] for e in events if e["type"] == "run.restarted"] == [2]
    assert events[-1]["status"] == "completed"
    assert events[-1]["final_text"] == "Second done."
    # And it went on with the second agent: each agent's tool ran once, the first agent's
    # model was not called again
    assert executions(events_url, session_id) == {first_label: 1, second_label: 1}
    assert len(requests_of(model, "first")) == 2
    assert len(requests_of(model, "second")) == 3
    # And the session holds each agent's answer once
    stored = load_session(events_url, "chain", session_id).events
    finals = [
        (e.author, e.message.text) for e in stored if e.type == "message" and e.is_final_response()
    ]
    assert finals == [("first", "First done."), ("second", "Second done.")]
    assert len({e.id for e in stored}) == len(stored)
