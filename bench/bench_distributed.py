"""Distributed runs: throughput against bare Celery, and 200 concurrent runs on one process.

``python -m bench.bench_distributed`` starts its own redis-server, a scripted model server and
real ``celery worker`` processes (threads pool), then measures:

1. end-to-end runs per second (``submit_run`` -> worker -> model with zero latency -> events
   and session in Redis -> result) against a bare Celery no-op task round trip, same broker,
   same settings, same pool and concurrency (target: >= 0.5x);
2. the time for 200 runs submitted at once to complete on ONE worker process (threads pool,
   concurrency 250) when every model call takes 1 s (target: within 1.3x of 1 s).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from bench.report import machine, machine_line, write_results
from runner_core.testing import ScriptedModelServer
from tests.celery_workers import CeleryWorker
from tests.services import RedisServer

RUNS = 300
CONCURRENT = 200
LATENCY_S = 1.0


def _env(redis: RedisServer, model_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "AGENT_RUNNER_BROKER_URL": redis.url,
        "AGENT_RUNNER_RESULT_BACKEND": redis.url_for_db(1),
        "AGENT_RUNNER_SOFT_SHUTDOWN_S": "0",
        "AGENT_RUNNER_MODEL": "scripted",
        "OPENAI_BASE_URL": model_url,
        "OPENAI_API_KEY": "sk-bench",
        "PYTHONPATH": os.getcwd(),
    }


def _rate(submit: Any, count: int) -> float:
    started = time.perf_counter()
    results = [submit(i) for i in range(count)]
    for result in results:
        result.get(timeout=300)
    return count / (time.perf_counter() - started)


def main() -> int:
    with (
        RedisServer() as redis,
        ScriptedModelServer() as fast,
        ScriptedModelServer(latency=LATENCY_S) as slow,
    ):
        fast.set_default("ok")
        slow.set_default("ok")
        env = _env(redis, fast.url)
        os.environ.update(
            AGENT_RUNNER_BROKER_URL=redis.url, AGENT_RUNNER_RESULT_BACKEND=redis.url_for_db(1)
        )
        from bench.noop_app import noop
        from workers.tasks import submit_run

        workers = [CeleryWorker(env, concurrency=8).start()]
        baseline = CeleryWorker(env, concurrency=8, queues="bench-noop")
        baseline.env = {**env}
        workers.append(baseline)
        baseline.start = lambda: _start_app(baseline, "bench.noop_app")  # type: ignore[method-assign]
        baseline.start()
        try:
            for worker in workers:
                worker.wait_ready()
            # warm up both paths
            _rate(lambda i: submit_run.delay("assistant", "bench", f"w{i}", "hi"), 20)
            _rate(lambda i: noop.delay(), 20)
            noop_rates, run_rates = [], []
            for round_ in range(2):
                noop_rates.append(_rate(lambda i: noop.delay(), RUNS))
                run_rates.append(
                    _rate(
                        lambda i, r=round_: submit_run.delay(
                            "assistant", "bench", f"r{r}-{i}", "hi"
                        ),
                        RUNS,
                    )
                )
            for worker in workers:
                worker.close()
            one = CeleryWorker({**env, "OPENAI_BASE_URL": slow.url}, concurrency=250).start()
            workers = [one]
            one.wait_ready()
            _rate(lambda i: submit_run.delay("assistant", "bench", f"cw{i}", "hi"), 5)
            started = time.perf_counter()
            results = [
                submit_run.delay("assistant", "bench", f"c{i}", "hi") for i in range(CONCURRENT)
            ]
            statuses = [r.get(timeout=300)["status"] for r in results]
            concurrent_s = time.perf_counter() - started
        finally:
            for worker in workers:
                worker.close()

    noop_rate = max(noop_rates)
    run_rate = max(run_rates)
    data = {
        "machine": machine(),
        "runs": RUNS,
        "noop_tasks_per_s": round(noop_rate, 1),
        "runs_per_s": round(run_rate, 1),
        "ratio": round(run_rate / noop_rate, 3),
        "concurrent_runs": CONCURRENT,
        "model_latency_s": LATENCY_S,
        "concurrent_completion_s": round(concurrent_s, 3),
        "concurrent_ratio": round(concurrent_s / LATENCY_S, 3),
        "concurrent_completed": statuses.count("completed"),
    }
    throughput_row = (
        f"| runs/s, zero-latency model, 1 worker process (threads, -c 8) | {run_rate:.1f} "
        f"| bare Celery no-op round trip {noop_rate:.1f}/s | {run_rate / noop_rate:.2f}x "
        "| >= 0.5x |"
    )
    concurrency_row = (
        f"| {CONCURRENT} concurrent runs on one worker process (threads, -c 250), model "
        f"{LATENCY_S:.0f} s/call | {concurrent_s:.2f} s | {LATENCY_S:.0f} s model call "
        f"| {concurrent_s / LATENCY_S:.2f}x | <= 1.3x |"
    )
    markdown = f"""## Distributed runs (`python -m bench.bench_distributed`)

{machine_line(data["machine"])}

| measure | agent-runner | baseline | ratio | target |
|---|---|---|---|---|
{throughput_row}
{concurrency_row}

Each run loads/creates its session, appends the user and assistant messages to Redis, streams
the model's deltas, publishes every event (pub/sub + stream) and stores the task result; the
no-op task only makes the broker and result-backend round trip. Best of 2 rounds of {RUNS}.
{data["concurrent_completed"]}/{CONCURRENT} concurrent runs completed. The worker, Redis, the
scripted model server and the producer share the same 2 cores, so CPU spent anywhere counts.

Where the time goes (not yet profiled in detail): before its model call a run makes about ten
sequential Redis round trips on the worker's one event loop (completion check, session lease,
attempt counter, last seq, session load/create, user message append, cancel watcher subscribe,
visibility refresh), then one publish per event; all 200 runs' JSON encoding, pydantic
validation and SSE parsing happen on that one loop thread under the GIL, beside 250 Celery
threads. Batching the start-up round trips into one Lua script and publishing deltas in
pipelines are the obvious next steps.
"""
    write_results("distributed", data, markdown)
    print(markdown)
    return 0


def _start_app(worker: CeleryWorker, app: str) -> CeleryWorker:
    import subprocess

    from tests.celery_workers import ROOT

    args = [
        sys.executable, "-m", "celery", "-A", app, "worker", "-Q", worker.queues,
        "-P", worker.pool, "-c", str(worker.concurrency), "-n", worker.hostname,
        "--without-mingle", "--without-gossip", "-l", "WARNING",
    ]  # fmt: skip
    worker.process = subprocess.Popen(
        args, env=worker.env, cwd=ROOT, stdout=worker._log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    return worker


if __name__ == "__main__":
    raise SystemExit(main())
