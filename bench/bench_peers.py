"""agent-runner next to Google ADK, the OpenAI Agents SDK and LangGraph, in the same run.

Method. Every framework runs the same task against the same scripted OpenAI-compatible server
(``ScriptedModelServer``, in this process, TCP_NODELAY on): one run = two streamed model calls,
first a tool call ``add(a=2, b=3)``, then the text "The answer is 5." in 4 chunks, usage
included. Each framework runs in its own process, a *driver* (``bench/peers/drive_*.py``): the
peers in venvs of their own built by ``bench/peers/envs.py`` (their ``openai`` requirements
conflict; ``~/.cache/agent-runner-bench/venvs`` unless ``AGENT_RUNNER_BENCH_CACHE`` says
otherwise, about 500 MB, printed with its size on every run; ``python -m bench clean`` removes
them), agent-runner in the project's interpreter. Each driver can also make the same two
calls with the raw ``openai`` client (``raw``), and every framework run is paired with a raw run
right before or after it (the order alternates by round) in the same process, so a framework's
overhead is framework - raw with the same ``openai`` version under the same machine load.

Cases per framework: ``framework`` (its in-memory session store or checkpointer),
``framework_db`` (its PostgreSQL store, on one PostgreSQL server started here) and, for
agent-runner only, ``framework_mysql`` (its MySQL store on a MariaDB server started here) and
``distributed`` (``submit_run`` through a real ``celery worker`` and
``stream_events`` back; no peer has a distributed runtime in its library). The cost of a
database store is its case's overhead minus the framework overhead of the same round.

All drivers start once and warm up; then each round runs every (framework, case) pair once, in
a new random order, so drift on this noisy 2-core machine hits every case alike. The
orchestrator queues the two scripted replies before each run (runs are sequential) and checks
afterwards that both were consumed. Times are measured inside the driver around the run alone.

    python -m bench peers [--quick] [--no-write]
    python -m bench.bench_peers [--quick] [--runs N] [--no-write]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from bench.peers.envs import PEERS, VenvError, describe_venvs, ensure_venv, installed_versions
from bench.peers.markdown import CASES, OURS, STORE_CASES, render
from bench.peers.process import DriverError, DriverProcess
from bench.report import ROOT, default_output, machine, publish, rounded, summarize
from runner_core.testing import ScriptedModelServer

__all__ = ["main", "render", "run"]

NAME = "peers"
QUICK_ROUNDS = 30
FULL_ROUNDS = 200
WARMUP_ROUNDS = 10
#: A (framework, case) that fails this often is dropped from the run, with its last error.
MAX_FAILURES = 3

#: What each driver's ``framework`` and ``framework_db`` cases use, for the tables.
CONFIGURATIONS: dict[str, dict[str, str]] = {
    OURS: {
        "framework": "`Runner` + `LLMAgent`, `InMemorySessionService`, streaming",
        "framework_db": "`PostgresSessionService`",
        "framework_mysql": "`MySQLSessionService`",
        "distributed": "`submit_run` → celery worker (threads) → `stream_events`, Redis store",
    },
    "adk": {
        "framework": "`Runner` + `LlmAgent` + `OpenAILlm`, `InMemorySessionService`, `StreamingMode.SSE`",
        "framework_db": "`DatabaseSessionService` (SQLAlchemy + asyncpg)",
    },
    "openai_agents": {
        "framework": "`Runner.run_streamed` + `OpenAIChatCompletionsModel`, no session, tracing off",
        "framework_db": "`SQLAlchemySession` (asyncpg)",
    },
    "langgraph": {
        "framework": "`create_react_agent` + `ChatOpenAI(streaming)`, `InMemorySaver`, `astream`",
        "framework_db": "`AsyncPostgresSaver` (psycopg)",
    },
}
EVENT_MEANING = {
    OURS: "`Event`s yielded by `Runner.run` (`message.delta` included, `runner.completion` last); distributed: the same events read back from the Redis stream",
    "adk": "`Event`s yielded by `Runner.run_async` (partial SSE events included)",
    "openai_agents": "items of `stream_events()` (raw response deltas, run items, agent updates)",
    "langgraph": "`(mode, chunk)` pairs of `astream` (message chunks and node updates)",
}
NO_DISTRIBUTED = {
    "adk": "no task queue or worker runtime in the library (its FastAPI server and Vertex "
    "Agent Engine run each invocation in the serving process)",
    "openai_agents": "an in-process library; durable runs go through the Temporal "
    "integration, not measured here",
    "langgraph": "distributed runs need the LangGraph Agent Server (langgraph-api, whose "
    "Postgres/Redis runtime is licensed), not the open-source library",
}


@dataclass
class Slot:
    """One (framework, case): its samples by round, the raw-client run paired with each, and
    why it was not measured if so."""

    case: str
    ms: dict[int, float] = field(default_factory=dict)
    events: dict[int, int] = field(default_factory=dict)
    raw_ms: dict[int, float] = field(default_factory=dict)
    raw_events: dict[int, int] = field(default_factory=dict)
    failures: int = 0
    status: str = "measured"

    def overheads(self) -> dict[int, float]:
        return {r: self.ms[r] - self.raw_ms[r] for r in self.ms if r in self.raw_ms}


@dataclass
class Subject:
    """One framework, behind its driver process."""

    name: str
    title: str
    versions: dict[str, str] = field(default_factory=dict)
    driver: DriverProcess | None = None
    status: str = "measured"
    slots: dict[str, Slot] = field(default_factory=dict)
    #: Cases the framework does not support or that could not run, with the reason.
    missing: dict[str, str] = field(default_factory=dict)


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def script(server: ScriptedModelServer) -> None:
    server.add_tool_calls([("call_1", "add", {"a": 2, "b": 3})])
    server.add_text("The answer is 5.", chunks=4)


# --- services -------------------------------------------------------------------------------


@dataclass
class Services:
    model: ScriptedModelServer
    pg_dsns: dict[str, str] = field(default_factory=dict)
    pg_missing: str | None = None
    mysql_url: str | None = None
    mysql_missing: str | None = None
    #: Environment of agent-runner's driver (the producer side of the distributed case).
    producer_env: dict[str, str] | None = None
    distributed_missing: str | None = None


def _start_postgres(stack: ExitStack, services: Services, names: list[str]) -> None:
    from tests.services import PostgresServer, ServerUnavailable

    try:
        server = stack.enter_context(PostgresServer())
        for name in names:
            services.pg_dsns[name] = server.create_database(f"bench_peers_{name}")
    except (ServerUnavailable, OSError) as exc:
        services.pg_missing = f"PostgreSQL did not start: {exc}"


def _start_mysql(stack: ExitStack, services: Services) -> None:
    """A MariaDB server for agent-runner's MySQL store (no peer has one to compare)."""
    from tests.mariadb import MariaDBServer
    from tests.services import ServerUnavailable

    try:
        server = stack.enter_context(MariaDBServer())
        services.mysql_url = server.create_database(f"bench_peers_{OURS}")
    except (ServerUnavailable, OSError) as exc:
        services.mysql_missing = f"MariaDB did not start: {exc}"


def _start_worker(stack: ExitStack, services: Services) -> None:
    from tests.celery_workers import CeleryWorker
    from tests.services import RedisServer, ServerUnavailable

    try:
        redis = stack.enter_context(RedisServer())
    except ServerUnavailable as exc:
        services.distributed_missing = f"redis-server did not start: {exc}"
        return
    env = {
        **os.environ,
        "AGENT_RUNNER_BROKER_URL": redis.url,
        "AGENT_RUNNER_RESULT_BACKEND": redis.url_for_db(1),
        "AGENT_RUNNER_SOFT_SHUTDOWN_S": "0",
        "AGENT_RUNNER_AGENTS": "bench=bench.peers.agent_runner_app:build_agent",
        "OPENAI_BASE_URL": services.model.url,
        "OPENAI_API_KEY": "sk-bench",
        "PYTHONPATH": str(ROOT),
    }
    worker = CeleryWorker(env, concurrency=4)
    stack.callback(worker.close)
    try:
        worker.start().wait_ready()
    except RuntimeError as exc:
        services.distributed_missing = f"celery worker did not start: {exc}"
        return
    services.producer_env = env


@contextmanager
def services_running(names: list[str]) -> Iterator[Services]:
    with ExitStack() as stack:
        services = Services(model=stack.enter_context(ScriptedModelServer()))
        log("[peers] starting PostgreSQL, MariaDB, Redis and a celery worker")
        _start_postgres(stack, services, names)
        _start_mysql(stack, services)
        _start_worker(stack, services)
        yield services


# --- drivers --------------------------------------------------------------------------------


def prepare() -> list[tuple[Subject, list[str] | None]]:
    """Every framework with its driver's command line, building the peers' venvs first
    (slow the first time only); ``None`` when a venv could not be built."""
    ours = Subject(OURS, "agent-runner", versions=machine()["versions"])
    out: list[tuple[Subject, list[str] | None]] = [
        (ours, [sys.executable, "-m", "bench.peers.drive_agent_runner"])
    ]
    for spec in PEERS:
        subject = Subject(spec.name, spec.title)
        try:
            python = ensure_venv(spec, log=log)
            subject.versions = installed_versions(spec)
        except VenvError as exc:
            subject.status = f"not measured: could not build its venv: {exc.reason}"
            log(f"[peers] {subject.title} {subject.status}")
            out.append((subject, None))
            continue
        out.append((subject, [str(python), str(spec.driver_path)]))
    log(f"[peers] {describe_venvs()}")
    return out


def _start_driver(
    stack: ExitStack, subject: Subject, command: list[str], services: Services
) -> None:
    if subject.name == OURS:
        env = services.producer_env or dict(os.environ)
    else:  # the peers must not see the project's packages
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    driver = DriverProcess(subject.name, command, cwd=ROOT, env=env)
    stack.callback(driver.close)
    config = {
        "op": "setup",
        "model_url": services.model.url,
        "pg_dsn": services.pg_dsns.get(subject.name),
        "pg_missing": services.pg_missing,
        "mysql_url": services.mysql_url if subject.name == OURS else None,
        "mysql_missing": services.mysql_missing,
        "distributed": subject.name == OURS and services.producer_env is not None,
        "distributed_missing": services.distributed_missing,
    }
    try:
        reply = driver.request(config, timeout=120)
    except DriverError as exc:
        reply = {"ok": False, "error": str(exc)}
    if not reply.get("ok"):
        subject.status = f"not measured: its driver failed to set up: {reply.get('error')}"
        log(f"[peers] {subject.title} {subject.status}")
        return
    subject.driver = driver
    subject.slots = {case: Slot(case) for case in reply["cases"] if case != "raw"}
    subject.missing = dict(reply["unsupported"])
    if subject.name != OURS:
        subject.missing["distributed"] = (
            f"not supported by {subject.title}: {NO_DISTRIBUTED[subject.name]}"
        )


# --- measuring ------------------------------------------------------------------------------


def _request(
    server: ScriptedModelServer, driver: DriverProcess, case: str, session: str
) -> dict[str, Any]:
    """One run: queue its two replies, run it, check it consumed both. Raises DriverError."""
    script(server)
    reply = driver.request({"op": "run", "case": case, "session": session})
    if reply.get("ok") and server.pending:
        reply = {"ok": False, "error": f"{server.pending} scripted replies left unconsumed"}
    if not reply.get("ok"):
        server.reset()
    return reply


def _run_pair(server: ScriptedModelServer, subject: Subject, slot: Slot, round_: int) -> None:
    """Run ``slot``'s case and the raw client back to back in its driver (in alternating
    order by round), so slow drift on the machine hits both sides of the pair alike."""
    assert subject.driver is not None
    session = f"{slot.case}-{round_ + WARMUP_ROUNDS}"
    order = ("raw", slot.case) if round_ % 2 == 0 else (slot.case, "raw")
    replies: dict[str, dict[str, Any]] = {}
    try:
        for case in order:
            replies[case] = reply = _request(server, subject.driver, case, session)
            if not reply.get("ok"):
                break
    except DriverError as exc:
        # A dead or hung driver cannot be trusted with another request: drop all its cases.
        server.reset()
        log(f"[peers] {subject.title} dropped: {exc}")
        for each in subject.slots.values():
            each.status = f"not measured: the driver failed during the run: {exc}"
        subject.driver.close()
        subject.driver = None
        return
    failed = next((r for r in replies.values() if not r.get("ok")), None)
    if failed is not None:
        slot.failures += 1
        log(f"[peers] {subject.title} {slot.case} failed: {failed.get('error')}")
        if slot.failures >= MAX_FAILURES:
            slot.status = f"not measured: failed {slot.failures} times, last: {failed.get('error')}"
        return
    if round_ >= 0:
        slot.ms[round_] = float(replies[slot.case]["ms"])
        slot.events[round_] = int(replies[slot.case]["events"])
        slot.raw_ms[round_] = float(replies["raw"]["ms"])
        slot.raw_events[round_] = int(replies["raw"]["events"])


def measure(subjects: list[Subject], server: ScriptedModelServer, rounds: int) -> None:
    """Warm up, then run ``rounds`` rounds of every live (framework, case), each paired with a
    raw-client run, in a new random order each round."""
    slots = [(s, slot) for s in subjects if s.driver for slot in s.slots.values()]
    started = time.monotonic()
    for round_ in range(-WARMUP_ROUNDS, rounds):
        random.shuffle(slots)
        for subject, slot in slots:
            if slot.status == "measured" and subject.driver is not None:
                _run_pair(server, subject, slot, round_)
        if round_ == -1:
            log(f"[peers] warmed up ({WARMUP_ROUNDS} rounds); measuring {rounds} rounds")
        elif round_ >= 0 and (round_ + 1) % 10 == 0:
            log(f"[peers] round {round_ + 1}/{rounds} ({time.monotonic() - started:.0f} s)")


# --- results --------------------------------------------------------------------------------


def _samples(values: dict[int, float], events: dict[int, int], rounds: int) -> dict[str, Any]:
    return {
        "status": "measured",
        "n": len(values),
        "ms": summarize(list(values.values())),
        "events_per_run": statistics.median(events.values()),
        "events_range": [min(events.values()), max(events.values())],
        # Per round (None: that round's run failed), so plots can pair any two cases.
        "ms_by_round": [None if r not in values else round(values[r], 4) for r in range(rounds)],
        "events_by_round": [events.get(r) for r in range(rounds)],
    }


def _case_result(slot: Slot, rounds: int) -> dict[str, Any]:
    if slot.status != "measured" or not slot.ms:
        return {"status": slot.status if slot.status != "measured" else "not measured: no runs"}
    overheads = slot.overheads()
    return {
        **_samples(slot.ms, slot.events, rounds),
        "raw_ms_by_round": [
            None if r not in slot.raw_ms else round(slot.raw_ms[r], 4) for r in range(rounds)
        ],
        "overhead_ms": summarize(list(overheads.values())),
        "overhead_samples_ms": rounded(list(overheads.values()), 4),
    }


def _raw_result(subject: Subject) -> dict[str, Any]:
    """Every raw-client run of the subject, whichever case it was paired with."""
    measured = [slot for slot in subject.slots.values() if slot.raw_ms]
    if not measured:
        return {
            "status": subject.status if subject.status != "measured" else "not measured: no runs"
        }
    values = [v for slot in measured for v in slot.raw_ms.values()]
    events = [e for slot in measured for e in slot.raw_events.values()]
    return {
        "status": "measured",
        "n": len(values),
        "ms": summarize(values),
        "events_per_run": statistics.median(events),
        "events_range": [min(events), max(events)],
    }


def median_interval(samples: list[float]) -> tuple[float, float]:
    """A 95% confidence interval of the median, from order statistics (no assumption about
    the distribution: the store costs swing widely between p10 and p90)."""
    ordered = sorted(samples)
    n = len(ordered)
    half_width = 1.96 * math.sqrt(n) / 2
    low = max(0, math.floor(n / 2 - half_width))
    high = min(n - 1, math.ceil(n / 2 + half_width) - 1)
    return ordered[low], ordered[high]


def collect(subjects: list[Subject], rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for subject in subjects:
        entry: dict[str, Any] = {
            "title": subject.title,
            "status": subject.status,
            "versions": subject.versions,
            "configurations": CONFIGURATIONS[subject.name],
            "events_are": EVENT_MEANING[subject.name],
            "cases": {"raw": _raw_result(subject)},
        }
        for case in CASES[1:]:
            if case == "framework_mysql" and subject.name != OURS:
                continue  # only agent-runner has a MySQL store here
            if case in subject.slots:
                entry["cases"][case] = _case_result(subject.slots[case], rounds)
            elif case in subject.missing:
                entry["cases"][case] = {"status": subject.missing[case]}
            elif subject.status != "measured":
                entry["cases"][case] = {"status": subject.status}
        memory = subject.slots.get("framework")
        for case, key in STORE_CASES.items():
            db = subject.slots.get(case)
            if not (memory and db and memory.status == db.status == "measured"):
                continue
            # The difference of the two overheads of a round: each side is already paired
            # with its own adjacent raw run, so drift cancels out of both.
            memory_over, db_over = memory.overheads(), db.overheads()
            cost = [db_over[r] - memory_over[r] for r in sorted(db_over) if r in memory_over]
            if cost:
                low, high = median_interval(cost)
                entry[key] = {**summarize(cost), "ci95_low": low, "ci95_high": high}
                entry[key.replace("_ms", "_samples_ms")] = rounded(cost, 4)
        out[subject.name] = entry
    return out


def run(quick: bool, rounds: int | None = None) -> dict[str, Any]:
    """Measure every framework; returns the results ``render`` and ``peers.json`` take."""
    rounds = rounds or (QUICK_ROUNDS if quick else FULL_ROUNDS)
    started = time.monotonic()
    info = machine()
    prepared = prepare()
    subjects = [subject for subject, _ in prepared]
    with services_running([s.name for s in subjects]) as services, ExitStack() as drivers:
        for subject, command in prepared:
            if command is not None:
                log(f"[peers] starting the {subject.title} driver")
                _start_driver(drivers, subject, command, services)
        measure(subjects, services.model, rounds)
    return {
        "benchmark": NAME,
        "machine": info,
        "rounds": rounds,
        "warmup_rounds": WARMUP_ROUNDS,
        "quick": quick,
        "seconds": round(time.monotonic() - started, 1),
        "peers": collect(subjects, rounds),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROUNDS} rounds")
    parser.add_argument("--runs", type=int, default=None, help=f"rounds (default {FULL_ROUNDS})")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    result = run(args.quick, args.runs)
    print(render(result))
    if not args.no_write:
        publish(NAME, result, default_output(args.quick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
