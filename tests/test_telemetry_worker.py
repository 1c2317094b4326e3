"""One trace across processes: a producer's span, a real ``celery worker``, the model call to
the scripted model server, exported over OTLP/HTTP to a receiver the test runs
(tests/otlp_receiver.py decodes the protobuf a collector would get).

The producer is a subprocess of its own, set up the way docs/telemetry.md tells a producer to
(``workers.telemetry.setup()``), so its tracer provider and Celery instrumentation never leak
into the other tests of this process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from runner_core.testing import ScriptedModelServer
from tests.celery_workers import CeleryWorker, StartWorker, wait_for_completion
from tests.otlp_receiver import STATUS_ERROR, OtlpReceiver, ReceivedSpan

pytestmark = [pytest.mark.redis, pytest.mark.celery]

PRODUCER = """
import json, sys
from opentelemetry import trace
from workers import telemetry

assert telemetry.setup("test-producer"), "telemetry did not turn on"
from workers.tasks import submit_run

app_name, session_id, message = sys.argv[1:4]
with trace.get_tracer("producer").start_as_current_span("handle request") as span:
    result = submit_run.delay(app_name, "alice", session_id, message)
trace_id = format(span.get_span_context().trace_id, "032x")
telemetry.shutdown()  # exports the producer's spans before exiting
print(json.dumps({"invocation_id": result.id, "trace_id": trace_id}))
"""


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as otlp:
        yield otlp


@pytest.fixture
def model_server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as server:
        yield server


def otel_env(receiver: OtlpReceiver) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        # export soon after each span and each half second of metrics: the test polls for them
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
    }


@pytest.fixture
def worker(
    start_worker: StartWorker, receiver: OtlpReceiver, model_server: ScriptedModelServer
) -> CeleryWorker:
    return start_worker(OPENAI_BASE_URL=model_server.url, **otel_env(receiver))


def produce(
    worker_env: dict[str, str],
    receiver: OtlpReceiver,
    session_id: str,
    message: str,
    app_name: str = "testkit",
) -> dict[str, str]:
    """Submit a run from a producer process under its own span; its invocation and trace IDs."""
    env = {**worker_env, **otel_env(receiver)}
    done = subprocess.run(
        [sys.executable, "-c", PRODUCER, app_name, session_id, message],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def by_name(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, (name, sorted(span.name for span in spans))
    return found[0]


def parent_of(spans: list[ReceivedSpan], span: ReceivedSpan) -> ReceivedSpan:
    parents = [other for other in spans if other.span_id == span.parent_span_id]
    assert parents, f"{span.name}'s parent is not in the trace"
    return parents[0]


def has_spans(trace_id: str, *names: str) -> Any:
    def found(otlp: OtlpReceiver) -> bool:
        return set(names) <= {span.name for span in otlp.spans if span.trace_id == trace_id}

    return found


def test_a_producer_span_is_the_parent_of_the_run_and_its_model_call(
    worker: CeleryWorker,
    worker_env: dict[str, str],
    receiver: OtlpReceiver,
    model_server: ScriptedModelServer,
    redis_url: str,
) -> None:
    # Given a worker and a producer with telemetry on, and a model that answers
    model_server.add_text("Hello from the model.", usage={"prompt_tokens": 9})
    session_id = f"s-{uuid.uuid4().hex[:8]}"

    # When the producer submits a run under its own span
    submitted = produce(worker_env, receiver, session_id, "hi")
    events = wait_for_completion(redis_url, submitted["invocation_id"])
    trace_id = submitted["trace_id"]
    receiver.wait_for(
        "the run's spans",
        has_spans(trace_id, "handle request", "run/agent_runner.submit_run", "chat scripted"),
    )

    # Then the completion names the producer's trace
    completion = events[-1]
    assert completion["type"] == "runner.completion" and completion["status"] == "completed"
    assert completion["trace_id"] == trace_id

    # and the spans form one chain from the producer's span to the model call
    spans = receiver.trace(trace_id)
    chat = by_name(spans, "chat scripted")
    chain = [chat.name]
    span = chat
    while span.parent_span_id:
        span = parent_of(spans, span)
        chain.append(span.name)
    assert chain == [
        "chat scripted",
        "invoke_agent testkit",
        "run testkit",
        "run/agent_runner.submit_run",
        "apply_async/agent_runner.submit_run",
        "handle request",
    ]
    assert by_name(spans, "handle request").service == "test-producer"
    assert chat.service == "agent-runner-worker"
    assert chat.attributes["gen_ai.request.model"] == "scripted"
    assert chat.attributes["gen_ai.usage.input_tokens"] == 9
    assert chat.attributes["gen_ai.conversation.id"] == session_id
    assert chat.attributes["agent_runner.invocation_id"] == submitted["invocation_id"]
    session_wait = by_name(spans, "wait for session")
    assert parent_of(spans, session_wait).name == "run/agent_runner.submit_run"
    assert all(span.status_code != STATUS_ERROR for span in spans)

    # and the worker's metrics reached the receiver too
    receiver.wait_for(
        "the worker's metrics",
        lambda otlp: {
            "gen_ai.client.operation.duration",
            "gen_ai.client.token.usage",
            "agent_runner.run.duration",
            "agent_runner.queue.wait",
            "agent_runner.session.wait",
        }
        <= set(otlp.metrics),
    )
    assert {"agent_runner.task": "agent_runner.submit_run"} in receiver.metrics[
        "agent_runner.queue.wait"
    ]


def test_a_failed_run_has_its_error_on_its_spans(
    worker: CeleryWorker,
    worker_env: dict[str, str],
    receiver: OtlpReceiver,
    model_server: ScriptedModelServer,
    redis_url: str,
) -> None:
    # Given a model that fails
    model_server.add_error(400, "bad request")
    session_id = f"s-{uuid.uuid4().hex[:8]}"

    # When a run is submitted
    submitted = produce(worker_env, receiver, session_id, "hi")
    events = wait_for_completion(redis_url, submitted["invocation_id"])
    trace_id = submitted["trace_id"]
    receiver.wait_for(
        "the failed run's spans",
        has_spans(trace_id, "run/agent_runner.submit_run", "chat scripted", "run testkit"),
    )

    # Then the run failed, and its model call, agent and run spans say why
    assert events[-1]["status"] == "failed"
    assert events[-1]["trace_id"] == trace_id
    spans = receiver.trace(trace_id)
    for name in ("chat scripted", "invoke_agent testkit", "run testkit"):
        span = by_name(spans, name)
        assert span.status_code == STATUS_ERROR, name
        assert span.attributes["error.type"] == "model_http_error", name


def test_a_run_that_cannot_run_has_the_producers_trace_on_its_completion(
    worker: CeleryWorker, worker_env: dict[str, str], receiver: OtlpReceiver, redis_url: str
) -> None:
    # Given a request for an app no worker serves
    submitted = produce(worker_env, receiver, "s-unknown", "hi", app_name="nosuchapp")

    # When the worker refuses it
    events = wait_for_completion(redis_url, submitted["invocation_id"])

    # Then the failure it publishes names the producer's trace
    assert events[-1]["status"] == "failed"
    assert events[-1]["error"]["type"] == "invalid_request"
    assert events[-1]["trace_id"] == submitted["trace_id"]

def test_the_summary_job_a_run_queued_is_in_the_runs_trace(
    worker_env: dict[str, str],
    receiver: OtlpReceiver,
    model_server: ScriptedModelServer,
    redis_url: str,
) -> None:
    # Given a worker on the runs queue and the summary shards, for an app with a summarizer
    shards = ",".join(f"summary.{index}" for index in range(8))
    env = {
        **worker_env,
        **otel_env(receiver),
        "AGENT_RUNNER_AGENTS": "summarized=tests.summary_agents:build_summarized",
        "OPENAI_BASE_URL": model_server.url,
    }
    model_server.add_text("Hello Alice.")
    model_server.set_default("Alice said hi and was greeted.")  # the summary's model call
    worker = CeleryWorker(env, concurrency=2, queues=f"runs,{shards}")
    try:
        worker.start().wait_ready()

        # When a completed run queues its session's summary job
        submitted = produce(worker_env, receiver, "chat-1", "Hi, I am Alice", "summarized")
        wait_for_completion(redis_url, submitted["invocation_id"])
        trace_id = submitted["trace_id"]
        receiver.wait_for(
            "the summary job's span",
            has_spans(trace_id, "run/agent_runner.summarize_session", "run summarized"),
        )
        receiver.wait_for(
            "the summary job's metric",
            lambda otlp: {"agent_runner.summary.status": "stored"}
            in otlp.metrics.get("agent_runner.summary.duration", []),
        )
    finally:
        worker.close()

    # Then the job's span is in the run's trace, below the run's task
    spans = receiver.trace(trace_id)
    job = by_name(spans, "run/agent_runner.summarize_session")
    ancestors = []
    span = job
    while span.parent_span_id:
        span = parent_of(spans, span)
        ancestors.append(span.name)
    assert ancestors[:2] == [
        "apply_async/agent_runner.summarize_session",
        "run/agent_runner.submit_run",
    ]
    assert ancestors[-1] == "handle request"
