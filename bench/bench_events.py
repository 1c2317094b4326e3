"""Event latency: a published chunk until a subscriber has it, through the client vs raw pub/sub.

Two processes on one machine and one local ``redis-server``. A publisher emits ``message.delta``
events at a steady rate (like a model streaming tokens), stamping each with
``time.monotonic_ns()`` just before sending; the subscriber notes the time it receives each one.
``CLOCK_MONOTONIC`` is system-wide, so the difference is the latency.

- **client**: ``EventBus.publish`` (one Lua call: XADD + EXPIRE + PUBLISH) -> the subscriber's
  ``workers.client.stream_events`` (XREAD BLOCK, decode, dedupe by seq) -> the ``Event``.
- **raw**: redis-py ``PUBLISH`` of the same event JSON -> redis-py ``SUBSCRIBE`` -> ``json.loads``.

Both build the event and encode it inside the timed span, so the difference is what the bus
and the client add. Rounds alternate raw, client, raw, client; the figures pool the rounds.

    python -m bench events [--quick] [--no-write]
    python -m bench.bench_events [--events N] [--rate PER_S] [--rounds R] [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import redis
import redis.asyncio as aioredis

from bench.report import (
    default_output,
    machine,
    machine_line,
    mode_note,
    publish,
    rounded,
    summarize,
)
from runner_core.events import Event, MessageDeltaEvent, RunCompletionEvent
from workers import client
from workers.bus import EventBus, events_channel, owner_identity
from workers.localstack import LOOPBACK, find_redis_server, free_port

NAME = "events"
WARMUP = 100
RATE_PER_S = 1000.0
FULL_EVENTS, FULL_ROUNDS = 1500, 8
QUICK_EVENTS, QUICK_ROUNDS = 600, 3


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[str, str]]:
    """A throw-away redis-server on 127.0.0.1; yields (url, version)."""
    executable = find_redis_server()
    port = free_port()
    directory = tempfile.mkdtemp(prefix="agent-runner-bench-")
    process = subprocess.Popen(
        [executable, "--bind", LOOPBACK, "--port", str(port), "--dir", directory,
         "--save", "", "--appendonly", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://{LOOPBACK}:{port}/0"
    try:
        probe = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                version = str(probe.info("server")["redis_version"])
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        probe.close()
        yield url, version
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


APP, USER, SESSION = "bench", "bench-user", "bench-session"
#: Whose run the events are: the bus binds the invocation ID to it on the first publish.
IDENTITY = owner_identity(APP, USER, SESSION)


def make_event(invocation_id: str, seq: int, *, last: bool = False) -> Event:
    if last:
        return RunCompletionEvent(
            invocation_id=invocation_id, seq=seq, author="assistant", status="completed",
            final_text="", app_name=APP, user_id=USER, session_id=SESSION,
        )  # fmt: skip
    # The stamp rides in the delta: the text a model chunk would carry.
    return MessageDeltaEvent(
        invocation_id=invocation_id, seq=seq, author="assistant", delta=str(time.monotonic_ns())
    )


# --- subscribers (child processes) ---------------------------------------------------------


def subscribe_client(url: str, invocation_id: str, ready: Connection, out: Connection) -> None:
    latencies: list[int] = []
    ready.send(True)
    for event in client.stream_events(invocation_id, redis_url=url, timeout=30):
        received = time.monotonic_ns()
        if event.type == "message.delta":
            latencies.append(received - int(event.delta))
    out.send(latencies)


def subscribe_raw(url: str, invocation_id: str, ready: Connection, out: Connection) -> None:
    connection = redis.Redis.from_url(url)
    pubsub = connection.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(events_channel(invocation_id))
    while pubsub.get_message(timeout=1) is None and not pubsub.subscribed:
        pass
    latencies: list[int] = []
    ready.send(True)
    for message in pubsub.listen():
        received = time.monotonic_ns()
        if message["type"] != "message":
            continue
        event = json.loads(message["data"])
        if event["type"] == "runner.completion":
            break
        latencies.append(received - int(event["delta"]))
    pubsub.close()
    connection.close()
    out.send(latencies)


# --- publisher (this process) --------------------------------------------------------------


async def publish_events(url: str, invocation_id: str, mode: str, count: int, rate: float) -> None:
    connection = aioredis.Redis.from_url(url)
    bus = EventBus(connection)
    channel = events_channel(invocation_id)
    interval = 1.0 / rate
    start = time.monotonic()
    try:
        for seq in range(count + 1):
            delay = start + seq * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            event = make_event(invocation_id, seq, last=seq == count)
            if mode == "client":
                await bus.publish(event, identity=IDENTITY)
            else:
                await connection.publish(channel, event.to_json())
    finally:
        await connection.aclose()


def run_round(url: str, mode: str, count: int, rate: float) -> list[float]:
    """One round; returns latencies in microseconds, warm-up dropped."""
    invocation_id = f"bench-{uuid.uuid4()}"
    context = multiprocessing.get_context("spawn")
    ready_recv, ready_send = context.Pipe(duplex=False)
    out_recv, out_send = context.Pipe(duplex=False)
    target = subscribe_client if mode == "client" else subscribe_raw
    child = context.Process(target=target, args=(url, invocation_id, ready_send, out_send))
    child.start()
    if not ready_recv.poll(60):
        child.kill()
        raise RuntimeError(f"{mode} subscriber did not start")
    ready_recv.recv()
    time.sleep(0.2)  # let the subscriber reach its blocking read
    asyncio.run(publish_events(url, invocation_id, mode, count, rate))
    if not out_recv.poll(60):
        child.kill()
        raise RuntimeError(f"{mode} subscriber did not finish")
    latencies: list[int] = out_recv.recv()
    child.join(timeout=10)
    if len(latencies) != count:
        raise RuntimeError(f"{mode} subscriber got {len(latencies)} of {count} events")
    return [ns / 1000 for ns in latencies[WARMUP:]]


def run(
    quick: bool = False,
    *,
    events: int | None = None,
    rate: float = RATE_PER_S,
    rounds: int | None = None,
) -> dict[str, Any]:
    """Measure; ``quick`` runs 3 rounds of 600 events per mode instead of 8 of 1500."""
    events = events or (QUICK_EVENTS if quick else FULL_EVENTS)
    rounds = rounds or (QUICK_ROUNDS if quick else FULL_ROUNDS)
    info = machine()
    per_round: dict[str, list[list[float]]] = {"raw": [], "client": []}
    round_ratios: list[float] = []  # client p99 / raw p99 of back-to-back rounds
    load_before = os.getloadavg()[0]
    with redis_server() as (url, redis_version):
        for _ in range(rounds):
            pair = {}
            for mode in ("raw", "client"):
                latencies = run_round(url, mode, events, rate)
                per_round[mode].append(latencies)
                pair[mode] = summarize(latencies)["p99"]
            round_ratios.append(pair["client"] / pair["raw"])

    raw = summarize([x for r in per_round["raw"] for x in r])
    bus = summarize([x for r in per_round["client"] for x in r])
    # The headline: the median over rounds of the paired p99 ratio. Each pair runs back to back,
    # so load from other processes on this shared machine hits both sides of a ratio alike.
    ratio = statistics.median(round_ratios)
    return {
        "benchmark": NAME,
        "quick": quick,
        "machine": info,
        "redis_version": redis_version,
        "load_average_1m_before": load_before,
        "events_per_round": events,
        "warmup_per_round": WARMUP,
        "rate_per_s": rate,
        "rounds": rounds,
        "unit": "microseconds",
        "raw_pubsub": raw,
        "client_stream": bus,
        "p99_ratio_per_round": round_ratios,
        "p99_ratio": ratio,
        "p99_ratio_pooled": bus["p99"] / raw["p99"],
        "target": "client p99 within 2x of raw pub/sub p99",
        "target_met": ratio <= 2.0,
        # Latencies in µs, one list per round, warm-up dropped.
        "samples_us": {
            mode: [rounded(r, 1) for r in rounds_] for mode, rounds_ in per_round.items()
        },
    }


def render(result: dict[str, Any]) -> str:
    raw, bus, info = result["raw_pubsub"], result["client_stream"], result["machine"]
    ratio, round_ratios = result["p99_ratio"], result["p99_ratio_per_round"]

    def row(label: str, stats: dict[str, float]) -> str:
        return (
            f"| {label} | {stats['p10']:.0f} | {stats['median']:.0f} | {stats['p90']:.0f} | "
            f"{stats['p99']:.0f} | {stats['mean']:.0f} |"
        )

    return f"""## Event latency

`python -m bench events` — from a published chunk to the subscriber having it, in
microseconds: {result["rounds"]} rounds x {result["events_per_round"]} `message.delta` events at
{result["rate_per_s"]:g}/s per mode (first {result["warmup_per_round"]} of each round dropped),
publisher and subscriber in separate processes, redis-server {result["redis_version"]} on
127.0.0.1; 1-minute load average {result["load_average_1m_before"]:.2f} before the run (the machine
is shared). **client** = `EventBus.publish` (one Lua call: XADD + EXPIRE + PUBLISH) read with
`workers.client.stream_events` (XREAD BLOCK, decode to `Event`, dedupe by seq); **raw** = redis-py
`PUBLISH` of the same JSON read with `SUBSCRIBE` and `json.loads`.

| path | p10 | p50 | p90 | p99 | mean |
|---|---|---|---|---|---|
{row("raw pub/sub", raw)}
{row("client (stream)", bus)}

p99 ratio client/raw, median of the {result["rounds"]} back-to-back round pairs: **{ratio:.2f}x**
(target: within 2x; {"met" if ratio <= 2 else "NOT met"}). Per round:
{", ".join(f"{r:.2f}x" for r in round_ratios)}; pooled over all rounds: {result["p99_ratio_pooled"]:.2f}x.
The p50 gap is the design's cost: the client asks for each batch (`XREAD BLOCK`) where pub/sub
pushes, and the worker's write is a script (XADD + EXPIRE + PUBLISH) instead of one PUBLISH. The
tails are dominated by scheduling on this shared {info["cores"]}-core machine; rerun on a quiet one.

{machine_line(info)}{mode_note(result)}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=None, help=f"per round, default {FULL_EVENTS}")
    parser.add_argument("--rate", type=float, default=RATE_PER_S, help="events per second")
    parser.add_argument("--rounds", type=int, default=None, help=f"per mode, default {FULL_ROUNDS}")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROUNDS} rounds of {QUICK_EVENTS}")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    result = run(args.quick, events=args.events, rate=args.rate, rounds=args.rounds)
    shown = ("raw_pubsub", "client_stream", "p99_ratio_per_round", "p99_ratio", "p99_ratio_pooled")
    print(json.dumps({k: result[k] for k in shown}, indent=2))
    if not args.no_write:
        publish(NAME, result, default_output(args.quick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
