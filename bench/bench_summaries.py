"""Summary throughput through the summary queue, with order violations counted.

100 sessions (Redis store) get two rounds of conversation; after each round every session gets
a summary job plus a duplicate, through 8 shard queues consumed by 2 summary worker processes
(``-P threads -c 1``, 4 shards each: the normal one-consumer-per-shard deployment). The model is
a scripted server answering after a fixed latency, standing in for an LLM. The baseline makes
the same summaries inline in one process, one after another, with ``create_session_summary``.
The in-process path submits the same jobs (and duplicates) to a ``BackgroundSummaries`` with
its default 3 asyncio workers, no broker and no Celery worker.

Order violations, from the jobs' own records (``AGENT_RUNNER_SUMMARY_TRACE_KEY``): two jobs of
one session holding it at the same time, or a stored boundary not above the previous one.

    python -m bench summaries [--quick] [--no-write]
    python -m bench.bench_summaries [--sessions N] [--latency S] [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import redis

from bench.report import default_output, machine, machine_line, mode_note, publish
from runner_core import BackgroundSummaries, Summarizer, create_session_summary
from runner_core.events import MessageEvent
from runner_core.messages import Message
from runner_core.session import SessionKey
from runner_core.testing import ScriptedModelServer, scripted_model
from session_backends import RedisSessionService
from tests.celery_workers import CeleryWorker
from tests.services import RedisServer

ROOT = Path(__file__).resolve().parent.parent
APP, USER = "summarized", "bench"
TRACE_KEY = "bench:summary-trace"
SHARDS = 8
ROUNDS = 2
NAME = "summaries"
LATENCY_S = 0.2
FULL_SESSIONS, QUICK_SESSIONS = 100, 20


async def add_turn(service: RedisSessionService, session_id: str, turn: int) -> int:
    session = await service.get_session(APP, USER, session_id)
    if session is None:
        session = await service.create_session(APP, USER, session_id)
    # One invocation per turn: the question and the answer get seq 0 and 1 (the event ID is
    # "{invocation_id}:{seq}", and the store drops an event whose ID it already has).
    question = MessageEvent(
        invocation_id=f"{session_id}-{turn}", seq=0, author="user",
        message=Message.user(f"Question {turn}: what about item {turn}?"),
    )  # fmt: skip
    answer = MessageEvent(
        invocation_id=f"{session_id}-{turn}", seq=1, author=APP,
        message=Message.assistant(f"Answer {turn}: item {turn} is fine."),
    )  # fmt: skip
    for event in (question, answer):
        await service.append_event(session, event)
    return session.event_count


async def covered(service: RedisSessionService, totals: dict[str, int]) -> bool:
    for session_id, total in totals.items():
        summary = await service.get_summary(APP, USER, session_id)
        if summary is None or summary.event_count < total:
            return False
    return True


def violations(records: list[dict[str, Any]]) -> dict[str, int]:
    """Overlapping holdings of one session, and stored boundaries that did not move forward."""
    ends = {r["attempt"]: r["t"] for r in records if r["phase"] == "end"}
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    stored: dict[str, list[int]] = defaultdict(list)
    for r in records:
        if r["phase"] == "start":
            spans[r["session"]].append((r["t"], ends.get(r["attempt"], float("inf"))))
        elif r["phase"] == "stored":
            stored[r["session"]].append(r["event_count"])
    overlaps = 0
    for items in spans.values():
        items.sort()
        overlaps += sum(1 for a, b in itertools.pairwise(items) if b[0] < a[1])
    backwards = sum(
        1 for counts in stored.values() for a, b in itertools.pairwise(counts) if b <= a
    )
    return {"overlapping_jobs": overlaps, "boundary_not_forward": backwards}


def job_durations(records: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Seconds from a job taking the session to its end, grouped by the job's outcome."""
    starts = {r["attempt"]: r["t"] for r in records if r["phase"] == "start"}
    by_status: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r["phase"] == "end" and r["attempt"] in starts:
            by_status[r["status"]].append(round(r["t"] - starts[r["attempt"]], 4))
    return dict(by_status)


def run_distributed(
    redis_url: str, server: ScriptedModelServer, sessions: list[str]
) -> dict[str, Any]:
    env = {
        **os.environ,
        "AGENT_RUNNER_BROKER_URL": redis_url,
        "AGENT_RUNNER_REDIS_URL": redis_url,
        "AGENT_RUNNER_SESSION_URL": redis_url,
        "AGENT_RUNNER_AGENTS": "summarized=tests.summary_agents:build_summarized",
        "AGENT_RUNNER_SUMMARY_SHARDS": str(SHARDS),
        "AGENT_RUNNER_SUMMARY_TRACE_KEY": TRACE_KEY,
        "OPENAI_BASE_URL": server.url,
        "PYTHONPATH": str(ROOT),
    }
    os.environ["AGENT_RUNNER_BROKER_URL"] = redis_url
    from workers.app import app
    from workers.summaries import enqueue_summary

    app.conf.broker_url = redis_url
    half = SHARDS // 2
    groups = [range(0, half), range(half, SHARDS)]
    workers = [
        CeleryWorker(env, concurrency=1, queues=",".join(f"summary.{i}" for i in group))
        for group in groups
    ]
    service = RedisSessionService(redis_url)
    loop = asyncio.new_event_loop()
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.wait_ready()
        calls_before = len(server.requests)
        totals: dict[str, int] = {}
        elapsed = 0.0
        for turn in range(ROUNDS):
            for session_id in sessions:
                totals[session_id] = loop.run_until_complete(add_turn(service, session_id, turn))
            started = time.perf_counter()
            for session_id in sessions:
                enqueue_summary(APP, USER, session_id)
                enqueue_summary(APP, USER, session_id)  # a duplicate: must be a no-op
            while not loop.run_until_complete(covered(service, totals)):
                time.sleep(0.02)
            elapsed += time.perf_counter() - started
        time.sleep(1.0)  # let the duplicates finish before reading the records
        client = redis.Redis.from_url(redis_url)
        records = [json.loads(item) for item in client.lrange(TRACE_KEY, 0, -1)]
        client.close()
    finally:
        for worker in workers:
            worker.close()
        loop.run_until_complete(service.close())
        loop.close()
        app.close()
    summaries = sum(1 for r in records if r["phase"] == "stored")
    return {
        "job_seconds_by_status": job_durations(records),
        "summaries": summaries,
        "model_calls": len(server.requests) - calls_before,
        "jobs": len(sessions) * ROUNDS * 2,
        "noop_jobs": sum(1 for r in records if r["phase"] == "end" and r["status"] == "not_due"),
        "busy_retries": sum(1 for r in records if r["phase"] == "busy"),
        "seconds": elapsed,
        "per_second": summaries / elapsed,
        "violations": violations(records),
    }


async def run_inline(
    redis_url: str, server: ScriptedModelServer, sessions: list[str]
) -> dict[str, Any]:
    service = RedisSessionService(redis_url)
    summarizer = Summarizer(scripted_model(server))
    summaries = 0
    elapsed = 0.0
    per_summary: list[float] = []
    try:
        for turn in range(ROUNDS):
            for session_id in sessions:
                await add_turn(service, session_id, turn)
            started = time.perf_counter()
            for session_id in sessions:
                one = time.perf_counter()
                if await create_session_summary(service, summarizer, APP, USER, session_id):
                    summaries += 1
                per_summary.append(round(time.perf_counter() - one, 4))
            elapsed += time.perf_counter() - started
    finally:
        await service.close()
        await summarizer.model.close()
    return {
        "summaries": summaries,
        "seconds": elapsed,
        "per_second": summaries / elapsed,
        "summary_seconds": per_summary,
    }


async def run_in_process(
    redis_url: str, server: ScriptedModelServer, sessions: list[str]
) -> dict[str, Any]:
    """The same jobs through ``BackgroundSummaries`` (the default 3 asyncio workers) in this
    process: no broker, no lease; the duplicate is refused while the first job is pending."""
    service = RedisSessionService(redis_url)
    summarizer = Summarizer(scripted_model(server))
    background = BackgroundSummaries(summarizer, queue_size=len(sessions) * 2)
    calls_before = len(server.requests)
    refused = 0
    elapsed = 0.0
    backwards = 0
    boundaries: dict[str, int] = {}
    try:
        for turn in range(ROUNDS):
            totals = {sid: await add_turn(service, sid, turn) for sid in sessions}
            started = time.perf_counter()
            for session_id in sessions:
                key = SessionKey(APP, USER, session_id)
                background.submit(service, key)
                if not background.submit(service, key):  # a duplicate: refused, never run
                    refused += 1
            while not await covered(service, totals):  # noqa: ASYNC110 (the store is the truth)
                await asyncio.sleep(0.01)
            elapsed += time.perf_counter() - started
            for session_id in sessions:
                summary = await service.get_summary(APP, USER, session_id)
                count = summary.event_count if summary else 0
                backwards += count < boundaries.get(session_id, 0)
                boundaries[session_id] = count
        await background.close()
    finally:
        await service.close()
        await summarizer.model.close()
    return {
        "summaries": background.stored,
        "model_calls": len(server.requests) - calls_before,
        "jobs": len(sessions) * ROUNDS * 2,
        "refused_duplicates": refused,
        "dropped": background.dropped,
        "failed": background.failed,
        "workers": background.workers,
        "boundary_not_forward": backwards,
        "seconds": elapsed,
        "per_second": background.stored / elapsed,
    }


def run(
    quick: bool = False, *, sessions: int | None = None, latency: float = LATENCY_S
) -> dict[str, Any]:
    """Measure; ``quick`` uses 20 sessions instead of 100."""
    count = sessions or (QUICK_SESSIONS if quick else FULL_SESSIONS)
    session_ids = [f"s{i:03d}" for i in range(count)]
    info = machine()
    with RedisServer() as redis_server, ScriptedModelServer(latency=latency) as server:
        server.set_default("A short summary of the conversation so far.")
        inline = asyncio.run(run_inline(redis_server.url_for_db(2), server, session_ids))
        in_process = asyncio.run(run_in_process(redis_server.url_for_db(4), server, session_ids))
        distributed = run_distributed(redis_server.url_for_db(3), server, session_ids)
    return {
        "benchmark": NAME,
        "quick": quick,
        "machine": info,
        "sessions": count,
        "rounds": ROUNDS,
        "shards": SHARDS,
        "workers": 2,
        "latency_s": latency,
        "inline": inline,
        "in_process": in_process,
        "distributed": distributed,
    }


def render(result: dict[str, Any]) -> str:
    dist, base = result["distributed"], result["inline"]
    local = result.get("in_process")
    v = dist["violations"]
    rows = [
        ("inline, one process (baseline)", base),
    ]
    if local:
        rows.append((f"in-process `BackgroundSummaries`, {local['workers']} workers", local))
    rows += [
        (f"queue, {result['shards']} shards, {result['workers']} workers", dist),
    ]
    table = "\n".join(
        f"| {name} | {r['summaries']} | {r['seconds']:.2f} | {r['per_second']:.1f} |"
        for name, r in rows
    )
    return f"""## Summary queue

`python -m bench summaries` — {result["sessions"]} sessions in Redis, {result["rounds"]} rounds;
after each round every session gets a summary job and a duplicate, through {result["shards"]} shard
queues consumed by {result["workers"]} summary workers (`-P threads -c 1`, {result["shards"] // result["workers"]}
shards each). The scripted model answers after {result["latency_s"]} s. The baseline makes the
same summaries inline in one process, one after another.

| path | summaries | seconds | summaries/s |
|---|---:|---:|---:|
{table}

Speed-up over the baseline: queue **{dist["per_second"] / base["per_second"]:.2f}x**{
        _in_process_line(local, base)}.
Jobs: {dist["jobs"]} ({dist["noop_jobs"]} found the work done, {dist["busy_retries"]} found the
session busy and went back to the queue). Model calls: {dist["model_calls"]}.

Order violations: **{v["overlapping_jobs"] + v["boundary_not_forward"]}** (target 0):
{v["overlapping_jobs"]} overlapping jobs of one session, {v["boundary_not_forward"]} stored
boundaries that did not move forward.

{machine_line(result["machine"])}{mode_note(result)}
"""


def _in_process_line(local: dict[str, Any] | None, base: dict[str, Any]) -> str:
    if not local:
        return ""
    return (
        f", in-process **{local['per_second'] / base['per_second']:.2f}x** "
        f"({local['refused_duplicates']} duplicates refused while pending, "
        f"{local['dropped']} dropped, {local['failed']} failed, "
        f"{local['boundary_not_forward']} boundaries that moved back; "
        f"{local['model_calls']} model calls)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sessions", type=int, default=None, help=f"default {FULL_SESSIONS}")
    parser.add_argument("--latency", type=float, default=LATENCY_S, help="model latency, seconds")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SESSIONS} sessions")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    result = run(args.quick, sessions=args.sessions, latency=args.latency)
    print(render(result))
    if not args.no_write:
        publish(NAME, result, default_output(args.quick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
