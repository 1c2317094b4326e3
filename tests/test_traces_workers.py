"""Execution traces through real Celery workers: written as the run goes, read back from
another process, complete and without duplicate steps after a SIGKILL and redelivery."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from runner_core.errors import InvalidRequestError, InvocationOwnedError, TraceNotFoundError
from runner_core.testing import ScriptedModelServer
from runner_core.traces import Trace
from tests.celery_workers import StartWorker, wait_for_completion
from tests.test_workers_faults import assert_delivered_once, model_server, tool_executions
from workers import cli
from workers.client import get_trace

pytestmark = [pytest.mark.redis, pytest.mark.celery]

__all__ = ["model_server"]  # the fixture, shared with the fault tests


def wait_for(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def shape(trace: Trace) -> list[tuple[str, str, list[str]]]:
    """Each step as (ID, kind, parent IDs), with each step ID replaced by its place."""
    place = {step.step_id: f"#{n}" for n, step in enumerate(trace.steps)}
    return [
        (place[step.step_id], step.kind, [place.get(p, p) for p in step.parent_ids])
        for step in trace.steps
    ]


def test_a_distributed_run_with_tools_leaves_a_trace_any_process_reads(
    producer: Any,
    start_worker: StartWorker,
    model_server: ScriptedModelServer,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a worker (traces on by default, beside the Redis sessions) and a run with tools
    model_server.add_tool_calls(
        [("call_1", "record", {"label": "first"}), ("call_2", "record", {"label": "second"})]
    )
    model_server.add_text("both recorded")
    start_worker(OPENAI_BASE_URL=model_server.url)
    from workers.tasks import submit_run

    result = submit_run.delay("testkit", "tess", "s-trace", "record two things")
    events = wait_for_completion(redis_url, result.id)
    completion = events[-1]
    assert completion["status"] == "completed"

    # When the producer's process reads the trace
    monkeypatch.setenv("AGENT_RUNNER_TRACE_URL", redis_url)
    trace = get_trace("testkit", "tess", result.id)

    # Then it holds the run's graph, seed 003's parent rules
    assert trace.status == "completed" and trace.task == "record two things"
    assert trace.agent == "testkit" and trace.session_id == "s-trace"
    assert shape(trace) == [
        ("#0", "model_call", []),
        ("#1", "tool_call", ["#0"]),
        ("#2", "tool_call", ["#0"]),
        ("#3", "model_call", ["#0", "#1", "#2"]),
        ("#4", "conclusion", ["#3"]),
    ]
    first, tool_1, tool_2, last, conclusion = trace.steps
    assert first.tool_calls is not None and len(first.tool_calls) == 2
    assert first.messages is not None and first.messages[-1]["content"] == "record two things"
    assert (tool_1.tool_name, tool_1.arguments) == ("record", {"label": "first"})
    assert tool_1.result == "recorded first (1)" and tool_2.arguments == {"label": "second"}
    assert last.reply == "both recorded" and conclusion.content == "both recorded"
    assert all(s.started_at is not None and s.ended_at is not None for s in trace.steps)
    # And its totals are the completion's
    assert trace.usage.model_dump() == completion["usage"]
    assert trace.usage.total_tokens == sum(s.usage.total_tokens for s in trace.steps if s.usage)
    assert trace.ended_at is not None and trace.duration_ms is not None

    # And it is JSON for any language
    assert Trace.model_validate_json(trace.to_json()) == trace

    # And only its own user reads it
    with pytest.raises(InvocationOwnedError, match="only its own user"):
        get_trace("testkit", "mallory", result.id)
    with pytest.raises(TraceNotFoundError, match="no trace of invocation"):
        get_trace("testkit", "tess", "no-such-run")
    with pytest.raises(InvalidRequestError, match="invocation_id"):
        get_trace("testkit", "tess", "not a valid id!")

    # And the CLI prints it as a tree with tokens and timings
    assert cli.main(["trace", result.id, "--app", "testkit", "--user", "tess"]) == 0
    printed = capsys.readouterr().out
    assert f"trace {result.id}  completed" in printed
    assert "└─ " in printed
    assert """record({"label": "second"}) -> 'recorded second (1)'""" in printed
    assert f"{trace.usage.total_tokens} tokens" in printed and " ms" in printed
    assert cli.main(["trace", result.id, "--app", "testkit", "--user", "mallory"]) == 1
    assert "only its own user" in capsys.readouterr().err


def test_traces_can_be_switched_off(
    producer: Any,
    start_worker: StartWorker,
    model_server: ScriptedModelServer,
    redis_url: str,
) -> None:
    model_server.add_text("untraced")
    start_worker(OPENAI_BASE_URL=model_server.url, AGENT_RUNNER_TRACES="off")
    from workers.tasks import submit_run

    result = submit_run.delay("testkit", "tess", "s-off", "hello")
    assert wait_for_completion(redis_url, result.id)[-1]["status"] == "completed"

    with pytest.raises(TraceNotFoundError):
        get_trace("testkit", "tess", result.id, trace_url=redis_url)


def test_a_sigkilled_workers_run_leaves_a_complete_trace_without_duplicates(
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

    # The steps so far are stored while the run is still going
    def steps_so_far() -> Trace:
        return get_trace("testkit", "gus", result.id, trace_url=redis_url)

    wait_for(lambda: len(steps_so_far().steps) == 2, "the first two steps")
    during = steps_so_far()
    assert during.status == "running"
    assert [s.kind for s in during.steps] == ["model_call", "tool_call"]
    worker.kill()

    # When another worker picks the run up
    start_worker(OPENAI_BASE_URL=model_server.url)
    events = wait_for_completion(redis_url, result.id)
    assert_delivered_once(events)
    assert events[-1]["status"] == "completed"
    assert tool_executions(redis_url) == {"before-kill": 1}

    # Then its trace is complete, each step once, the graph whole across both attempts
    trace = get_trace("testkit", "gus", result.id, trace_url=redis_url)
    ids = [s.step_id for s in trace.steps]
    assert len(ids) == len(set(ids))
    assert trace.status == "completed" and trace.attempts == 2
    assert shape(trace) == [
        ("#0", "model_call", []),
        ("#1", "tool_call", ["#0"]),
        ("#2", "model_call", ["#0", "#1"]),
        ("#3", "conclusion", ["#2"]),
    ]
    assert trace.steps[:2] == during.steps  # the first attempt's steps, as written then
    assert trace.steps[2].reply == "recovered answer"
    assert trace.usage.model_dump() == events[-1]["usage"]


def test_a_worker_paused_past_the_recovery_timeout_never_writes_to_the_trace_again(
    producer: Any, start_worker: StartWorker, model_server: ScriptedModelServer, redis_url: str
) -> None:
    from tests.test_fencing_faults import idle, submit_streaming_runs, wait_until

    # Given a worker streaming runs (each called a tool, then streams a long answer)
    stale = start_worker(OPENAI_BASE_URL=model_server.url)
    ids = submit_streaming_runs(producer, model_server)
    start_worker(OPENAI_BASE_URL=model_server.url)

    # When it is paused until another worker has taken the runs over and finished them
    os.killpg(stale.pid, signal.SIGSTOP)
    try:
        for invocation_id in ids:
            wait_for_completion(redis_url, invocation_id, timeout=90)
        finished = {i: get_trace("testkit", "una", i, trace_url=redis_url) for i in ids}
    finally:
        os.killpg(stale.pid, signal.SIGCONT)
    # ... and then resumed: its runs find themselves fenced off and stop
    wait_until(lambda: idle(producer, stale), "the resumed worker to stop its runs")

    # Then each trace is the new owner's, whole, and the resumed worker wrote nothing to it
    for invocation_id in ids:
        trace = get_trace("testkit", "una", invocation_id, trace_url=redis_url)
        assert trace == finished[invocation_id]
        assert trace.status == "completed" and trace.attempts >= 2  # it was taken over
        assert [s.kind for s in trace.steps] == [
            "model_call", "tool_call", "model_call", "conclusion"
        ]
        assert trace.steps[2].parent_ids == [trace.steps[0].step_id, trace.steps[1].step_id]
        assert trace.steps[-1].content == "taken over and done"
