"""Distributed runs against the floor of Celery itself, scale-out, CPU and memory per run.

``python -m bench distributed`` starts its own redis-server, a scripted model server (in a
process of its own, so its CPU is counted apart) and real ``celery worker`` processes (threads
pool), then measures:

1. end-to-end runs per second (``submit_run`` -> worker -> model with zero latency -> events
   and session in Redis -> result) against the floor of any Celery agent runtime: a bare Celery
   task making the same streamed model call with the raw ``openai`` client, same broker, same
   settings, same pool and concurrency (``-c 8``; target: >= 0.8x). Two more paths are
   measured as context (no target): the same call made with ``AsyncOpenAI`` on one asyncio
   loop thread per process, handed over from the task thread as a run worker does (what a
   runtime with an asyncio agent loop pays before doing anything), and a bare no-op task;
2. scale-out: the same bursts with 1 and 2 worker processes per path (``-c 8`` each, the same
   producer), and the CPU each component spends per run: worker process(es), redis-server, the
   model server and the producer (utime + stime from ``/proc/<pid>/stat`` before and after
   each burst);
3. the same paths with a fixed number of runs in flight (1, 8, 32, 128): the producer
   submits a new task as soon as one finishes, against workers with ``-c 128``, so throughput
   versus concurrency shows where each path saturates on this machine;
4. the time for 200 runs submitted at once to complete on ONE worker process (threads pool,
   concurrency 250) when every model call takes 1 s, against 200 bare Celery tasks sleeping
   1 s on the same worker settings (target: <= 1.5x), and against 200 bare tasks making the
   1 s call with the raw client (context, no target);
5. memory per run in flight: the worker's RSS with 1,000 runs waiting on a slow model at once
   (one worker process, threads ``-c 1000``), against 1,000 bare Celery tasks sleeping as long.

    python -m bench distributed [--quick] [--no-write]
    python -m bench.bench_distributed [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC
from multiprocessing.connection import Connection
from typing import Any

import redis
from celery import Celery

from bench.report import (
    default_output,
    machine,
    machine_line,
    mode_note,
    publish,
    rounded,
    summarize,
)
from runner_core.testing import ScriptedModelServer
from tests.celery_workers import ROOT, CeleryWorker
from tests.services import RedisServer
from workers.celery_config import load_celeryconfig
from workers.requests import SUBMIT_RUN

NAME = "distributed"
LATENCY_S = 1.0
RUN_TASK = SUBMIT_RUN
NOOP_TASK = "bench.noop"
SLEEP_TASK = "bench.sleep"
READY_STATES = {"SUCCESS", "FAILURE", "REVOKED"}
#: Targets from the issue, as ratios against the floors measured in the same run.
THROUGHPUT_TARGET = 0.8  # runs/s >= 0.8x the raw-client floor
CONCURRENT_TARGET = 1.5  # 200 concurrent 1 s runs <= 1.5x 200 bare tasks sleeping 1 s
#: The components whose CPU is counted per run, in report order.
COMPONENTS = ("worker", "redis-server", "model server", "producer")
PATHS = ("runs", "model_call", "async_model_call", "noop")
PATH_LABELS = {
    "runs": "agent-runner run",
    "model_call": "bare task, raw-client model call",
    "async_model_call": "bare task, AsyncOpenAI call on one loop thread",
    "noop": "bare no-op task",
}


@dataclass(frozen=True)
class Sizes:
    runs: int  # per throughput round (burst of this many, -c 8 per worker process)
    rounds: int  # throughput rounds, and sweep rounds
    concurrent: int  # runs submitted at once with the 1 s model
    levels: tuple[int, ...]  # runs in flight for the sweep
    sweep_min: int  # tasks per sweep point: max(sweep_min, 4 x in flight)
    processes: tuple[int, ...] = (1, 2)  # worker processes per path, scale-out
    held: int = 1000  # runs (and bare tasks) in flight at once for the memory measure
    hold_s: float = 30.0  # how long each bare task sleeps
    gate_timeout_s: float = 300.0  # the longest a run's model call is held


FULL = Sizes(runs=300, rounds=2, concurrent=200, levels=(1, 8, 32, 128), sweep_min=200)
QUICK = Sizes(
    runs=100, rounds=1, concurrent=200, levels=(1, 8, 32, 128), sweep_min=48, hold_s=25.0,
    gate_timeout_s=150.0,
)


def _env(redis_server: RedisServer, model_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "AGENT_RUNNER_BROKER_URL": redis_server.url,
        "AGENT_RUNNER_RESULT_BACKEND": redis_server.url_for_db(1),
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


def _start_app(worker: CeleryWorker, app: str) -> CeleryWorker:
    """Start ``worker`` on another Celery app (the bare baselines)."""
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


def _noop_worker(env: dict[str, str], concurrency: int) -> CeleryWorker:
    worker = CeleryWorker(env, concurrency=concurrency, queues="bench-noop")
    return _start_app(worker, "bench.noop_app")


def _model_call_worker(env: dict[str, str], concurrency: int) -> CeleryWorker:
    """Bare Celery tasks that make the run's model call with the raw client, or just sleep."""
    worker = CeleryWorker(env, concurrency=concurrency, queues="bench-model-call")
    return _start_app(worker, "bench.model_call_app")


def _path_worker(path: str, env: dict[str, str], concurrency: int) -> CeleryWorker:
    if path == "runs":
        return CeleryWorker(env, concurrency=concurrency).start()
    if path == "model_call":
        return _model_call_worker(env, concurrency)
    if path == "async_model_call":
        worker = CeleryWorker(env, concurrency=concurrency, queues="bench-async-model-call")
        return _start_app(worker, "bench.model_call_app")
    return _noop_worker(env, concurrency)


# --- CPU and memory of processes, from /proc -------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        stat = fh.read()
    fields = stat[stat.rindex(")") + 2 :].split()  # from field 3 (state) on
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # fields 14 and 15


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` (resident now) and ``VmHWM`` (resident at most so far) of ``pid``, in KiB."""
    found = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    return found


class CpuMeter:
    """CPU seconds spent by each component's processes between :meth:`start` and :meth:`stop`."""

    def __init__(self, components: dict[str, list[int]]) -> None:
        self.components = components
        self._before: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {
            name: sum(cpu_seconds(pid) for pid in pids) for name, pids in self.components.items()
        }

    def start(self) -> None:
        self._before = self._now()

    def stop(self) -> dict[str, float]:
        after = self._now()
        return {name: after[name] - self._before[name] for name in self.components}


# --- the model server in a process of its own ------------------------------------------------


def _serve_model(latency: float, conn: Connection) -> None:
    """Child process: a scripted model server answering "ok" until the parent says stop."""
    with ScriptedModelServer(latency=latency) as server:
        server.set_default("ok")
        conn.send(server.url)
        try:
            conn.recv()
        except EOFError:  # the parent went away
            pass


@contextmanager
def model_server_process(latency: float = 0.0) -> Iterator[tuple[str, int]]:
    """``(url, pid)`` of a scripted model server in its own process, so its CPU is its own."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve_model, args=(latency, child), daemon=True)
    process.start()
    try:
        if not parent.poll(60):
            raise RuntimeError("the model server process did not start within 60 s")
        url = parent.recv()
        assert process.pid is not None
        yield str(url), process.pid
    finally:
        try:
            parent.send(None)
        except OSError:
            pass
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join(10)


# --- 1. and 2. throughput and CPU per run, 1 and 2 worker processes per path, -c 8 -----------


def _submitter(path: str) -> Callable[[int, str], Any]:
    from bench.model_call_app import async_model_call, model_call
    from bench.noop_app import noop
    from workers.tasks import submit_run

    if path == "runs":
        return lambda i, tag: submit_run.delay("assistant", "bench", f"{tag}-{i}", "hi")
    if path == "model_call":
        return lambda i, tag: model_call.delay("hi")
    if path == "async_model_call":
        return lambda i, tag: async_model_call.delay("hi")
    return lambda i, tag: noop.delay()


def measure_paths(
    env: dict[str, str], redis_pid: int, model_pid: int, sizes: Sizes, processes: int
) -> dict[str, Any]:
    """Runs/s and CPU per run of each path, with ``processes`` worker processes per path.

    Each round sends a burst of ``sizes.runs`` tasks to each path in turn (all at once, then
    waits for every result); the CPU of that path's worker processes, redis-server, the model
    server and this process (the producer) is read before and after each burst.
    """
    workers = {path: [_path_worker(path, env, 8) for _ in range(processes)] for path in PATHS}
    rates: dict[str, list[float]] = {path: [] for path in PATHS}
    cpu: dict[str, dict[str, float]] = {path: dict.fromkeys(COMPONENTS, 0.0) for path in PATHS}
    try:
        for group in workers.values():
            for worker in group:
                worker.wait_ready()
        for path in PATHS:  # warm up every path and every worker thread
            submit = _submitter(path)
            _rate(lambda i, s=submit: s(i, f"w{processes}"), 20 * processes)
        for round_ in range(sizes.rounds):
            for path in PATHS:
                submit = _submitter(path)
                meter = CpuMeter(
                    {
                        "worker": [w.pid for w in workers[path]],
                        "redis-server": [redis_pid],
                        "model server": [model_pid],
                        "producer": [os.getpid()],
                    }
                )
                meter.start()
                tag = f"p{processes}r{round_}"
                rates[path].append(_rate(lambda i, s=submit, t=tag: s(i, t), sizes.runs))
                for component, seconds in meter.stop().items():
                    cpu[path][component] += seconds
    finally:
        for group in workers.values():
            for worker in group:
                worker.close()
    tasks = sizes.runs * sizes.rounds
    return {
        "processes": processes,
        "rates": {path: rounded(r, 2) for path, r in rates.items()},
        "per_s": {path: round(max(r), 1) for path, r in rates.items()},
        "cpu_ms_per_task": {
            path: {c: round(s * 1000 / tasks, 3) for c, s in per.items()}
            for path, per in cpu.items()
        },
    }


# --- 3. concurrency sweep, closed loop ---------------------------------------------------------


class ClosedLoop:
    """Keep ``in_flight`` tasks outstanding; detect completions with one MGET per poll.

    The producer app has no result backend, so Celery adds no per-task subscription on this
    side; both paths pay the same polling cost, and the workers store results as usual.
    """

    def __init__(self, result_url: str) -> None:
        self.app = Celery("bench-producer")
        self.app.config_from_object(load_celeryconfig())  # the same broker settings as the workers'
        self.app.conf.result_backend = None
        self.results = redis.Redis.from_url(result_url)

    def close(self) -> None:
        self.results.close()
        self.app.close()

    def measure(
        self, send: Callable[[Celery, int], str], in_flight: int, total: int
    ) -> dict[str, Any]:
        """Return steady-state tasks/s and per-task latencies (ms) of one sweep point.

        Steady state: completions after the first ``in_flight`` and before the last
        ``in_flight`` (ramp-up and drain left out).
        """
        pending: dict[str, float] = {}  # result key -> submit time
        done_at: list[float] = []
        latencies: list[float] = []
        submitted = 0
        while len(done_at) < total:
            while len(pending) < in_flight and submitted < total:
                task_id = send(self.app, submitted)
                pending[f"celery-task-meta-{task_id}"] = time.perf_counter()
                submitted += 1
            keys = list(pending)
            values = self.results.mget(keys)
            now = time.perf_counter()
            for key, value in zip(keys, values, strict=True):
                if value is not None and json.loads(value)["status"] in READY_STATES:
                    latencies.append((now - pending.pop(key)) * 1000)
                    done_at.append(now)
            time.sleep(0.0005)
        first, last = in_flight - 1, total - in_flight - 1
        window = done_at[last] - done_at[first]
        rate = (last - first) / window if window > 0 else float("nan")
        return {"in_flight": in_flight, "total": total, "per_s": rate, "latency_ms": latencies}


def _send_run(app: Celery, i: int, prefix: str = "sweep") -> str:
    session = f"{prefix}-{time.monotonic_ns()}-{i}"
    task = app.send_task(RUN_TASK, args=("assistant", "bench", session, "hi"), queue="runs")
    return str(task.id)


def measure_sweep(
    env: dict[str, str], redis_server: RedisServer, sizes: Sizes
) -> dict[str, Any]:
    top = max(sizes.levels)
    workers = [CeleryWorker(env, concurrency=top).start(), _noop_worker(env, top)]
    loop = ClosedLoop(redis_server.url_for_db(1))

    def send_noop(app: Celery, i: int) -> str:
        return str(app.send_task(NOOP_TASK, queue="bench-noop").id)

    paths = {"runs": _send_run, "noop": send_noop}
    points: dict[str, list[dict[str, Any]]] = {"runs": [], "noop": []}
    try:
        for worker in workers:
            worker.wait_ready()
        for send in paths.values():  # warm up: the first tasks of each worker thread
            loop.measure(send, min(top, 32), 2 * min(top, 32) + 8)
        for level in sizes.levels:
            total = max(sizes.sweep_min, 4 * level)
            for _ in range(sizes.rounds):
                for path in ("noop", "runs"):
                    point = loop.measure(paths[path], level, total)
                    points[path].append(point)
    finally:
        loop.close()
        for worker in workers:
            worker.close()
    return {"worker_concurrency": top, "points": points}


def sweep_table(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """Per in-flight level: median runs/s of each path over rounds, latency, ratio."""
    rows = []
    levels = sorted({p["in_flight"] for p in sweep["points"]["runs"]})
    for level in levels:
        row: dict[str, Any] = {"in_flight": level}
        for path in ("runs", "noop"):
            points = [p for p in sweep["points"][path] if p["in_flight"] == level]
            rates = [p["per_s"] for p in points]
            row[f"{path}_per_s"] = statistics.median(rates)
            row[f"{path}_per_s_min"], row[f"{path}_per_s_max"] = min(rates), max(rates)
            row[f"{path}_latency_ms"] = summarize([x for p in points for x in p["latency_ms"]])
        row["ratio"] = row["runs_per_s"] / row["noop_per_s"]
        rows.append(row)
    return rows


# --- 4. 200 concurrent runs, 1 s model ---------------------------------------------------------


def measure_concurrent(env: dict[str, str], sizes: Sizes) -> dict[str, Any]:
    from workers.tasks import submit_run

    one = CeleryWorker(env, concurrency=250).start()
    try:
        one.wait_ready()
        _rate(lambda i: submit_run.delay("assistant", "bench", f"cw{i}", "hi"), 5)
        started, started_wall = time.perf_counter(), time.time()
        results = [
            submit_run.delay("assistant", "bench", f"c{i}", "hi") for i in range(sizes.concurrent)
        ]
        statuses = [r.get(timeout=300)["status"] for r in results]
        elapsed = time.perf_counter() - started
        finished = []
        for r in results:  # the worker's own completion stamp (same machine, same clock)
            done = r.date_done
            if done is not None:
                done = done if done.tzinfo else done.replace(tzinfo=UTC)
                finished.append(done.timestamp() - started_wall)
    finally:
        one.close()
    return {
        "seconds": elapsed,
        "statuses": statuses,
        "completion_s": rounded(sorted(finished), 4),
        "floors": _concurrent_floors(env, sizes),
    }


def _concurrent_floors(env: dict[str, str], sizes: Sizes) -> dict[str, float]:
    """The same burst as bare Celery tasks on one worker (-c 250): each sleeping the model's
    latency, and each making the 1 s model call with the raw ``openai`` client."""
    from bench.model_call_app import model_call, sleep

    floors: dict[str, float] = {}
    worker = _model_call_worker(env, 250)
    try:
        worker.wait_ready()
        for name, submit in (
            ("sleep_s", lambda i: sleep.delay(LATENCY_S)),
            ("model_call_s", lambda i: model_call.delay("hi")),
        ):
            _rate(submit, 5)
            floors[name] = sizes.concurrent / _rate(submit, sizes.concurrent)
    finally:
        worker.close()
    return floors


# --- 5. memory per run in flight ----------------------------------------------------------------


class GatedModelServer(ScriptedModelServer):
    """A scripted model server whose calls wait at a gate while it is closed, so a benchmark can
    hold every call of a burst at once, then let them all answer.

    The server records each request, then reads ``latency`` once for it in the request's
    handler thread; here that read waits until the gate opens (at most ``gate_timeout_s``) and
    adds no latency. Open by default.
    """

    def __init__(self, gate_timeout_s: float) -> None:
        self._gate = threading.Event()
        self._gate.set()
        self.gate_timeout_s = gate_timeout_s
        self._held_lock = threading.Lock()
        #: Calls waiting at the gate now.
        self.held = 0
        super().__init__()

    @property  # type: ignore[override]
    def latency(self) -> float:
        with self._held_lock:
            self.held += 1
        try:
            self._gate.wait(self.gate_timeout_s)
        finally:
            with self._held_lock:
                self.held -= 1
        return 0.0

    @latency.setter
    def latency(self, value: float) -> None:
        pass  # set by ScriptedModelServer.__init__; the gate is the latency here

    def close_gate(self) -> None:
        self._gate.clear()

    def open_gate(self) -> None:
        self._gate.set()

    def stop(self) -> None:
        self.open_gate()
        super().stop()


#: The gate opens once this many seconds pass without a new model call (runs that failed
#: before calling the model would otherwise keep it closed until its timeout).
GATE_STALL_S = 10.0
#: ... and at the latest this long after the first call arrived: well below the worker's model
#: timeout (``OpenAIModel``'s 600 s), so no held call times out and comes again as a retry.
GATE_MAX_S = 50.0


def _hold(
    worker: CeleryWorker,
    loop: ClosedLoop,
    send: Callable[[Celery, int], str],
    count: int,
    gate: GatedModelServer | None = None,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Send ``count`` tasks at once to ``worker``; sample its RSS until all have finished.

    In flight = tasks in state STARTED (``task_track_started``): taken by a worker thread and
    not finished. Polled every 0.25 s with one MGET, with the worker's RSS beside it; a task is
    done when its state is ready. With a ``gate`` (closed here), the model calls wait until all
    ``count`` have reached the model server (or none arrived for ``GATE_STALL_S``), then it
    opens and they all answer.
    """
    idle = memory_kib(worker.pid)["VmRSS"]
    calls_before = len(gate.requests) if gate is not None else 0  # the warm-up's
    if gate is not None:
        gate.close_gate()
    started = time.perf_counter()
    keys = [f"celery-task-meta-{send(loop.app, i)}" for i in range(count)]
    submitted_s = time.perf_counter() - started
    states: dict[str, str] = {}
    outcomes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    samples: list[tuple[float, int, int, int]] = []  # (s, in flight, model calls, RSS KiB)
    held: dict[str, Any] = {}
    last_calls, last_call_at, first_call_at = 0, time.perf_counter(), 0.0
    most_held = 0
    deadline = started + timeout_s
    try:
        while sum(outcomes.values()) < count and time.perf_counter() < deadline:
            pending = [k for k in keys if states.get(k) not in READY_STATES]
            for key, value in zip(pending, loop.results.mget(pending), strict=True):
                if value is None:
                    continue
                meta = json.loads(value)
                states[key] = meta["status"]
                if meta["status"] in READY_STATES:
                    result = meta.get("result")
                    status = result.get("status") if isinstance(result, dict) else None
                    outcomes[status or meta["status"]] += 1
                    if meta["status"] == "FAILURE" and isinstance(result, dict):
                        message = str(result.get("exc_message", ""))[:200]
                        errors[f"{result.get('exc_type')}: {message}"] += 1
            now = time.perf_counter()
            in_flight = sum(1 for k in keys if states.get(k) == "STARTED")
            calls = len(gate.requests) - calls_before if gate is not None else 0
            rss = memory_kib(worker.pid)["VmRSS"]
            samples.append((round(now - started, 2), in_flight, calls, rss))
            if calls > last_calls:
                first_call_at = first_call_at or now
                last_calls, last_call_at = calls, now
            if gate is not None and not held:
                most_held = max(most_held, gate.held)
                if gate.held >= count or (
                    calls
                    and (now - last_call_at > GATE_STALL_S or now - first_call_at > GATE_MAX_S)
                ):
                    held = {
                        "at_s": round(now - started, 2),
                        "model_calls_held": max(most_held, gate.held),
                        "model_calls": calls,
                        "in_flight": in_flight,
                        "rss_kib": rss,
                    }
                    gate.open_gate()
            time.sleep(0.25)
    finally:
        if gate is not None:
            gate.open_gate()
    memory = memory_kib(worker.pid)
    peak = max(s[3] for s in samples)
    most = max(s[1] for s in samples)
    return {
        "tasks": count,
        "submitted_s": round(submitted_s, 2),
        "seconds": round(samples[-1][0], 2),
        "max_in_flight": most,
        "max_in_flight_at_s": next(s[0] for s in samples if s[1] == most),
        "held": held or None,
        "outcomes": dict(outcomes),
        "errors": dict(errors.most_common(5)),
        "rss_idle_kib": idle,
        "rss_peak_kib": peak,
        "rss_after_kib": memory["VmRSS"],
        "hwm_kib": memory["VmHWM"],
        "per_task_kib": round((peak - idle) / count, 1),
        "samples": samples,
    }


def measure_memory(env: dict[str, str], redis_server: RedisServer, sizes: Sizes) -> dict[str, Any]:
    """1,000 runs waiting on a slow model in one worker process (``-P threads -c 1000``), then
    1,000 bare Celery tasks sleeping as long on the same settings (the floor)."""
    count, hold_s = sizes.held, sizes.hold_s
    loop = ClosedLoop(redis_server.url_for_db(1))
    out: dict[str, Any] = {"concurrency": count, "sleep_s": hold_s}
    try:
        # In this process: the gate holds every model call until all have arrived.
        with GatedModelServer(gate_timeout_s=sizes.gate_timeout_s) as slow:
            slow.set_default("ok")
            worker = CeleryWorker({**env, "OPENAI_BASE_URL": slow.url}, concurrency=count)
            try:
                worker.start().wait_ready()
                # warm up with the gate open: imports, pools, the first threads
                loop.measure(lambda app, i: _send_run(app, i, "mw"), 20, 40)
                out["runs"] = _hold(
                    worker, loop, lambda app, i: _send_run(app, i, "m"), count, slow,
                    timeout_s=sizes.gate_timeout_s + 600,
                )  # fmt: skip
            finally:
                worker.close()
        floor = _model_call_worker(env, count)
        try:
            floor.wait_ready()

            def send_sleep(app: Celery, i: int, seconds: float = hold_s) -> str:
                return str(app.send_task(SLEEP_TASK, args=(seconds,), queue="bench-model-call").id)

            loop.measure(lambda app, i: send_sleep(app, i, 0.0), 20, 40)
            out["sleep"] = _hold(floor, loop, send_sleep, count, timeout_s=hold_s + 600)
        finally:
            floor.close()
    finally:
        loop.close()
    return out


# --- the benchmark ---------------------------------------------------------------------------


def run(quick: bool = False) -> dict[str, Any]:
    """Measure; ``quick`` uses smaller bursts, one round, and shorter sweep points."""
    sizes = QUICK if quick else FULL
    info = machine()
    with (
        RedisServer() as redis_server,
        model_server_process() as (fast_url, model_pid),
        ScriptedModelServer(latency=LATENCY_S) as slow,
    ):
        slow.set_default("ok")
        env = _env(redis_server, fast_url)
        os.environ.update(
            AGENT_RUNNER_BROKER_URL=redis_server.url,
            AGENT_RUNNER_RESULT_BACKEND=redis_server.url_for_db(1),
        )
        scale = [
            measure_paths(env, redis_server.pid, model_pid, sizes, n) for n in sizes.processes
        ]
        sweep = measure_sweep(env, redis_server, sizes)
        concurrent = measure_concurrent({**env, "OPENAI_BASE_URL": slow.url}, sizes)
        memory = measure_memory(env, redis_server, sizes)
        load_after = [round(x, 2) for x in os.getloadavg()]

    one = scale[0]
    noop_rate, run_rate = one["per_s"]["noop"], one["per_s"]["runs"]
    model_call_rate = one["per_s"]["model_call"]
    for path_points in sweep["points"].values():
        for point in path_points:
            point["latency_ms"] = rounded(point["latency_ms"], 2)
    memory_samples = {path: memory[path].pop("samples") for path in ("runs", "sleep")}
    return {
        "benchmark": NAME,
        "quick": quick,
        "machine": info,
        "load_average_after": load_after,
        "sizes": asdict(sizes),
        "runs": sizes.runs,
        "noop_tasks_per_s": noop_rate,
        "runs_per_s": run_rate,
        "ratio": round(run_rate / noop_rate, 3),
        "model_call_tasks_per_s": model_call_rate,
        "ratio_to_model_call": round(run_rate / model_call_rate, 3),
        "async_model_call_tasks_per_s": one["per_s"]["async_model_call"],
        "ratio_to_async_model_call": round(run_rate / one["per_s"]["async_model_call"], 3),
        "concurrent_runs": sizes.concurrent,
        "model_latency_s": LATENCY_S,
        "concurrent_completion_s": round(concurrent["seconds"], 3),
        "concurrent_ratio": round(concurrent["seconds"] / LATENCY_S, 3),
        "concurrent_completed": concurrent["statuses"].count("completed"),
        "concurrent_statuses": dict(Counter(concurrent["statuses"])),
        "concurrent_floors_s": {k: round(v, 3) for k, v in concurrent["floors"].items()},
        "scale_out": scale,
        "memory": memory,
        "sweep_table": sweep_table(sweep),
        "samples": {
            "noop_rates": one["rates"]["noop"],
            "run_rates": one["rates"]["runs"],
            "model_call_rates": one["rates"]["model_call"],
            "async_model_call_rates": one["rates"]["async_model_call"],
            "sweep": sweep,
            "concurrent_completion_s": concurrent["completion_s"],
            "memory": memory_samples,
        },
    }


# --- the report --------------------------------------------------------------------------------


def _verdict(ratio: float, target: float, at_least: bool) -> str:
    met = ratio >= target if at_least else ratio <= target
    sign = ">=" if at_least else "<="
    return f"{sign} {target:g}x: **{'met' if met else 'missed'}**"


def _headline_rows(result: dict[str, Any]) -> list[str]:
    run_rate, noop_rate = result["runs_per_s"], result["noop_tasks_per_s"]
    concurrent, latency = result["concurrent_completion_s"], result["model_latency_s"]
    n = result["concurrent_runs"]
    rows = []
    if "model_call_tasks_per_s" in result:
        model_rate = result["model_call_tasks_per_s"]
        ratio = run_rate / model_rate
        rows.append(
            f"| runs/s, zero-latency model, 1 worker process (threads, -c 8) | {run_rate:.1f} "
            f"| bare Celery task making the same streamed model call with the raw `openai` "
            f"client: {model_rate:.1f}/s | {ratio:.2f}x | {_verdict(ratio, THROUGHPUT_TARGET, True)} |"
        )
    if "async_model_call_tasks_per_s" in result:
        asyncio_rate = result["async_model_call_tasks_per_s"]
        rows.append(
            f"| same, against the call made the way a runtime with an asyncio agent loop makes "
            f"it (context) | {run_rate:.1f} | bare Celery task handing the same call to "
            f"`AsyncOpenAI` on one asyncio loop thread: {asyncio_rate:.1f}/s "
            f"| {run_rate / asyncio_rate:.2f}x | (no target) |"
        )
    rows.append(
        f"| same, against a bare Celery no-op task (context) | {run_rate:.1f} "
        f"| bare no-op round trip: {noop_rate:.1f}/s | {run_rate / noop_rate:.2f}x | (no target) |"
    )
    floors = result.get("concurrent_floors_s", {})
    where = f"one worker process (threads, -c 250), model {latency:g} s/call"
    if "sleep_s" in floors:
        ratio = concurrent / floors["sleep_s"]
        rows.append(
            f"| {n} concurrent runs on {where} | {concurrent:.2f} s | {n} bare Celery tasks "
            f"sleeping {latency:g} s, same worker settings: {floors['sleep_s']:.2f} s "
            f"| {ratio:.2f}x | {_verdict(ratio, CONCURRENT_TARGET, False)} |"
        )
    if "model_call_s" in floors:
        rows.append(
            f"| same, against the raw client (context) | {concurrent:.2f} s | {n} bare Celery "
            f"tasks making the {latency:g} s model call with the raw client: "
            f"{floors['model_call_s']:.2f} s | {concurrent / floors['model_call_s']:.2f}x "
            "| (no target) |"
        )
    return rows


def _reach_text(result: dict[str, Any]) -> str:
    """What each target asks against what a path without agent-runner reaches in the same run:
    a target that a bare path misses too is out of reach for any runtime on that path."""
    parts = []
    model_rate = result.get("model_call_tasks_per_s")
    asyncio_rate = result.get("async_model_call_tasks_per_s")
    if model_rate and asyncio_rate:
        needed = THROUGHPUT_TARGET * model_rate
        share = asyncio_rate / model_rate
        if asyncio_rate <= needed:
            left = "so even a runtime that did nothing around the call would miss it"
        else:
            left = (
                f"which leaves {1 - needed / asyncio_rate:.0%} of that path's time per task "
                "for everything a run does besides the call"
            )
        parts.append(
            f"The throughput target asks {needed:.1f} runs/s ({THROUGHPUT_TARGET:g}x the "
            f"raw-client floor). The bare task that hands the same call to `AsyncOpenAI` on one "
            f"loop thread, with no session, event, lease or trace, reached {asyncio_rate:.1f}/s "
            f"({share:.3f}x), {left}."
        )
    floors = result.get("concurrent_floors_s", {})
    if "sleep_s" in floors and "model_call_s" in floors:
        raw = floors["model_call_s"] / floors["sleep_s"]
        verdict = (
            "more than the target allows a run: the `openai` client's own cost of holding "
            "that many calls at once on this machine is already past it"
            if raw > CONCURRENT_TARGET
            else f"which leaves {CONCURRENT_TARGET - raw:.2f}x for agent-runner's own work"
        )
        parts.append(
            f"The concurrency target asks at most {CONCURRENT_TARGET:g}x the sleeping tasks; the "
            f"bare tasks making the same 1 s call with the raw client took {raw:.2f}x, {verdict}."
        )
    if not parts:
        return ""
    return "\n**What the targets leave.** " + " ".join(parts) + "\n"


def _scale_out_text(result: dict[str, Any]) -> str:
    scale = result.get("scale_out")
    if not scale:
        return ""
    sizes = result["sizes"]
    rate_lines = []
    for point in scale:
        per_s = point["per_s"]
        one = scale[0]["per_s"]["runs"]
        asyncio_rate = per_s.get("async_model_call")
        asyncio_cells = (
            f"{asyncio_rate:.1f} | {per_s['runs'] / asyncio_rate:.2f}x"
            if asyncio_rate
            else "— | —"
        )
        rate_lines.append(
            f"| {point['processes']} | {per_s['runs']:.1f} | {per_s['runs'] / one:.2f}x "
            f"| {per_s['model_call']:.1f} | {per_s['runs'] / per_s['model_call']:.2f}x "
            f"| {asyncio_cells} | {per_s['noop']:.1f} |"
        )
    cpu_lines = []
    for path in PATHS:
        for point in scale:
            if path not in point["cpu_ms_per_task"]:
                continue  # a record from before this path was measured
            cpu = point["cpu_ms_per_task"][path]
            cells = " | ".join(f"{cpu[c]:.2f}" for c in COMPONENTS)
            total = sum(cpu[c] for c in COMPONENTS)
            cpu_lines.append(
                f"| {PATH_LABELS[path]} | {point['processes']} | {cells} | **{total:.2f}** |"
            )
    header = " | ".join(COMPONENTS)
    return f"""
### Scale-out: 1 and 2 worker processes

Each path with 1 and 2 worker processes (threads `-c 8` each), the same producer (this
process, `delay()` then `.get()` on every result) and the same redis-server and model server;
best of {sizes["rounds"]} round(s) of {sizes["runs"]} tasks submitted at once.

| worker processes | agent-runner runs/s | vs 1 process | raw-client floor tasks/s | runs / floor | `AsyncOpenAI` on one loop thread, tasks/s | runs / that | no-op tasks/s |
|---:|---:|---:|---:|---:|---:|---:|---:|
{chr(10).join(rate_lines)}

CPU per task, ms, by component (utime + stime from `/proc/<pid>/stat` before and after each
burst, summed over the rounds, divided by the tasks; "worker" is the sum over the path's worker
processes, "producer" is the bench process submitting and collecting results):

| path | worker processes | {header} | total |
|---|---:|{"---:|" * len(COMPONENTS)}---:|
{chr(10).join(cpu_lines)}
"""


def _memory_text(result: dict[str, Any]) -> str:
    memory = result.get("memory")
    if not memory:
        return ""
    lines = []
    labels = {
        "runs": "agent-runner runs, model calls held",
        "sleep": f"bare Celery tasks sleeping {memory['sleep_s']:g} s (floor)",
    }
    for path in ("runs", "sleep"):
        m = memory[path]
        done = ", ".join(f"{n} {s}" for s, n in sorted(m["outcomes"].items()))
        held = m.get("held")
        in_flight = f"{m['max_in_flight']}"
        if held:
            in_flight += f" ({held['model_calls_held']} model calls held at once)"
        lines.append(
            f"| {labels[path]} | {m['tasks']} | {in_flight} | {done} "
            f"| {m['rss_idle_kib'] / 1024:.0f} | {m['rss_peak_kib'] / 1024:.0f} "
            f"| {m['rss_after_kib'] / 1024:.0f} | **{m['per_task_kib']:.0f}** |"
        )
    runs, sleep = memory["runs"], memory["sleep"]
    ratio = runs["per_task_kib"] / sleep["per_task_kib"] if sleep["per_task_kib"] else float("nan")
    held = runs.get("held") or {}
    held_text = (
        f" All {runs['tasks']} model calls were held at once {held['at_s']:.0f} s after the first "
        f"run was sent (worker RSS then {held['rss_kib'] / 1024:.0f} MiB)."
        if held.get("model_calls_held", 0) >= runs["tasks"]
        else f" At most {held.get('model_calls_held', 0)} of the {runs['tasks']} model calls were "
        f"held at once: the gate opens when all are held, when none arrived for "
        f"{GATE_STALL_S:g} s, or {GATE_MAX_S:g} s after the first (below the model client's 600 s "
        "timeout), and the runs had not all reached their model call by then."
    )
    errors = runs.get("errors") or {}
    error_text = (
        " Runs that failed, by error: "
        + "; ".join(f"{n} x `{e}`" for e, n in errors.items())
        + "."
        if errors
        else ""
    )
    return f"""
### Memory per run in flight

One worker process, threads `-c {memory["concurrency"]}`, {runs["tasks"]} tasks sent at once.
Each run's model call is held by the scripted server until all {runs["tasks"]} have arrived,
then they all answer; each bare task sleeps {memory["sleep_s"]:g} s. In flight = tasks in state
STARTED at once (taken by a worker thread, not finished), the most seen by polling every
0.25 s; RSS is the worker's `VmRSS` idle (after a warm-up), at its highest while the tasks were
in flight, and after they all finished. Per task in flight = (peak - idle) / tasks.

| path | tasks | most in flight at once | finished | RSS idle MiB | RSS peak MiB | RSS after MiB | KiB per task in flight |
|---|---:|---:|---|---:|---:|---:|---:|
{chr(10).join(lines)}

A run in flight costs {ratio:.1f}x the memory of a bare sleeping task (its worker thread, the
run's coroutine, its model call's HTTP connection and the events and session state it holds).
{held_text.strip()}{error_text} Runs took {runs["seconds"]:.0f} s from the first send to the
last result ({runs["submitted_s"]:.1f} s to send them); the bare tasks {sleep["seconds"]:.0f} s.
"""


def render(result: dict[str, Any]) -> str:
    rounds = result.get("sizes", {}).get("rounds", 2)
    sweep_lines = []
    for row in result.get("sweep_table", []):
        lat = row["runs_latency_ms"]
        sweep_lines.append(
            f"| {row['in_flight']} | {row['runs_per_s']:.1f} | {row['noop_per_s']:.1f} "
            f"| {row['ratio']:.2f}x | {lat['median']:.0f} (p10 {lat['p10']:.0f}, p90 {lat['p90']:.0f}) |"
        )
    sweep_text = ""
    if sweep_lines:
        sizes = result["sizes"]
        sweep_text = f"""
### Throughput versus runs in flight

Zero-latency model; one worker process per path, threads `-c {max(sizes["levels"])}`; the
producer submits the next task as soon as one finishes; steady state only, the first and last
"in flight" completions of each point left out; median of {sizes["rounds"]} round(s) of
max({sizes["sweep_min"]}, 4 x in flight) tasks per point.

| in flight | agent-runner runs/s | bare Celery no-op/s | ratio | run latency ms |
|---:|---:|---:|---:|---:|
{chr(10).join(sweep_lines)}
"""
    completion = result.get("samples", {}).get("concurrent_completion_s")
    statuses = result.get("concurrent_statuses", {})
    others = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()) if s != "completed")
    spread = f" Other statuses: {others}." if others else ""
    if completion:
        s = summarize(completion)
        spread += (
            f" Per-run completion after submission: median {s['median']:.2f} s "
            f"(p10 {s['p10']:.2f}, p90 {s['p90']:.2f})."
        )
    after = result.get("load_average_after")
    load_after = (
        f" Load average at the end: {' / '.join(f'{x:.1f}' for x in after)}." if after else ""
    )
    cpu_pointer = (
        " Where a run's CPU goes, by component, is in the scale-out section below."
        if result.get("scale_out")
        else ""
    )
    return f"""## Distributed runs

`python -m bench distributed` — {machine_line(result["machine"])}{load_after}

| measure | agent-runner | floor measured in the same run | ratio | target |
|---|---|---|---|---|
{chr(10).join(_headline_rows(result))}

The floors are what any Celery-based agent runtime pays at the least on this machine: the
broker and result-backend round trip plus the run's one streamed model call through the
`openai` client (throughput), and Celery holding as many tasks for as long as the model takes
(concurrency). The ratios against them are agent-runner's own cost. The `AsyncOpenAI` row
splits that cost: the floor's sync client blocks a Celery thread per call, while a run's agent
loop is asyncio on one loop thread per process, and the same call made that way, with nothing
of agent-runner around it, is the part of the gap that comes from asyncio and the thread hop.
Each run loads or creates
its session, appends the user and assistant messages to Redis, streams the model's deltas,
publishes every event (pub/sub + stream) and stores the task result. Throughput: best of
{rounds} round(s) of {result["runs"]} submitted at once. {result["concurrent_completed"]}/{result["concurrent_runs"]}
concurrent runs completed.{spread} The workers, Redis, the scripted model server and the
producer share the same {result["machine"]["cores"]} cores, so CPU spent anywhere counts.{cpu_pointer}
{_reach_text(result)}{_scale_out_text(result)}{_memory_text(result)}{sweep_text}{mode_note(result)}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one round")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    result = run(args.quick)
    print(render(result))
    if not args.no_write:
        publish(NAME, result, default_output(args.quick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
