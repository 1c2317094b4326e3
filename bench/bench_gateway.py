"""The HTTP gateway: many concurrent SSE clients on one gateway process vs reading Redis directly.

One local ``redis-server``, one ``agent-runner serve`` process (one uvicorn worker), and a
publisher in this process that writes a run's events with ``EventBus.publish`` (what a worker
does), each ``message.delta`` stamped with ``time.monotonic_ns()`` just before it is written.
``CLOCK_MONOTONIC`` is system-wide, so receipt time minus stamp is the latency. The clients run
in one child process on asyncio, in one of two modes, against the same run's stream:

- **gateway**: ``GET /v1/runs/{id}/events`` over plain HTTP/1.1 with an API key; each client
  reads the ``data:`` lines of the server-sent events.
- **direct**: each client has its own Redis connection and follows the stream with
  ``XREAD BLOCK`` and ``json.loads``: what a service that can reach Redis would do, and what
  the gateway does for each client inside.

Two phases per round, both modes back to back:

- **paced**: events at a steady rate (a model streaming tokens), slow enough that neither path
  is saturated (1,000 clients x 3 events/s); the latency of every event at every client.
- **burst**: a batch written as fast as the publisher can; delivered events per second = clients
  x events / (last client's completion - first write).

    python -m bench gateway [--quick] [--no-write]
    python -m bench.bench_gateway [--clients N] [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import redis.asyncio as aioredis

from bench.bench_events import IDENTITY, USER, make_event, redis_server
from bench.report import (
    ROOT,
    default_output,
    machine,
    machine_line,
    mode_note,
    publish,
    rounded,
    summarize,
)
from runner_core.wire import stream_key
from workers.bus import EventBus
from workers.localstack import LOOPBACK, free_port

NAME = "gateway"
KEY = "bench-gateway-key-0123456789"
MODES = ("direct", "gateway")
FULL = {"clients": 1000, "paced_events": 40, "rate": 3.0, "burst_events": 200, "rounds": 3}
QUICK = {"clients": 100, "paced_events": 30, "rate": 10.0, "burst_events": 100, "rounds": 1}
#: Paced events dropped at the start of each round (connections warming up).
WARMUP = 5
#: Clients opening their connection at the same time (more overflow the listen backlogs).
CONNECTING = 50
#: Latency samples kept per mode in the JSON (evenly spaced); the figures use all of them.
KEPT_SAMPLES = 5000


# --- the gateway process -------------------------------------------------------------------


@contextlib.contextmanager
def gateway_process(redis_url: str) -> Iterator[int]:
    port = free_port()
    env = {
        **os.environ,
        "AGENT_RUNNER_BROKER_URL": redis_url,
        "AGENT_RUNNER_REDIS_URL": redis_url,
        "AGENT_RUNNER_SESSION_URL": "memory://",
        "AGENT_RUNNER_GATEWAY_API_KEYS": f"{KEY}={USER}",
        "PYTHONPATH": str(ROOT),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "serve", "--host", LOOPBACK, "--port", str(port),
         "--log-level", "warning"],
        env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not _answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def _answers(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/healthz", timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


# --- clients (child process) ---------------------------------------------------------------


async def _gateway_client(
    port: int, invocation_id: str, ready: asyncio.Event, connecting: asyncio.Semaphore
) -> list[int]:
    """One SSE client over a raw HTTP/1.1 connection; the receipt times (ns) and stamps."""
    async with connecting:  # connections are opened a few at a time (listen backlogs)
        reader, writer = await asyncio.open_connection(LOOPBACK, port, limit=1 << 20)
        writer.write(
            f"GET /v1/runs/{invocation_id}/events HTTP/1.1\r\nHost: bench\r\n"
            f"Authorization: Bearer {KEY}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"gateway answered {status!r}")
        while not (await reader.readline()).startswith(b"retry:"):
            pass
    ready.set()
    samples: list[int] = []
    try:
        while True:
            line = await reader.readline()
            if not line:
                raise RuntimeError("the gateway closed the stream before the completion")
            if line.startswith(b"data: "):
                received = time.monotonic_ns()
                event = json.loads(line[6:])
                if event["type"] == "runner.completion":
                    samples.append(-received)  # the end, as a negative receipt time
                    return samples
                samples.extend((received, int(event["delta"])))
    finally:
        writer.close()


async def _direct_client(
    url: str, invocation_id: str, ready: asyncio.Event, connecting: asyncio.Semaphore
) -> list[int]:
    """One reader of the stream with its own Redis connection (XREAD BLOCK)."""
    connection = aioredis.Redis.from_url(url, socket_connect_timeout=60, socket_timeout=60)
    key = stream_key(invocation_id)
    last = b"0-0"
    samples: list[int] = []
    try:
        async with connecting:
            await connection.ping()
        ready.set()
        while True:
            response = await connection.xread({key: last}, count=500, block=10_000)
            for _stream, entries in response or []:
                for entry_id, fields in entries:
                    received = time.monotonic_ns()
                    last = entry_id
                    event = json.loads(fields[b"event"])
                    if event["type"] == "runner.completion":
                        samples.append(-received)
                        return samples
                    samples.extend((received, int(event["delta"])))
    finally:
        await connection.aclose()


async def _clients(
    mode: str, target: Any, invocation_id: str, count: int, ready: Connection
) -> Any:
    events = [asyncio.Event() for _ in range(count)]
    connecting = asyncio.Semaphore(CONNECTING)
    client = _gateway_client if mode == "gateway" else _direct_client
    tasks = [asyncio.create_task(client(target, invocation_id, e, connecting)) for e in events]
    waiting = asyncio.gather(*(e.wait() for e in events))
    # Until every client is in (or one failed: a client ends only with its run, later).
    done, _ = await asyncio.wait([*tasks, asyncio.ensure_future(waiting)],
                                 return_when=asyncio.FIRST_COMPLETED, timeout=120)  # fmt: skip
    if not done:
        raise RuntimeError(f"the {mode} clients did not all connect in 120 s")
    for task in done:
        if task.exception() is not None:
            raise RuntimeError(f"a {mode} client failed: {task.exception()!r}")
    ready.send("ready")
    return await asyncio.gather(*tasks)


def client_process(
    mode: str, target: Any, invocation_id: str, count: int, ready: Connection, out: Connection
) -> None:
    try:
        out.send(asyncio.run(_clients(mode, target, invocation_id, count, ready)))
    except Exception as exc:  # report it to the parent instead of hanging it
        ready.send(f"failed: {exc!r}")
        out.send(f"failed: {exc!r}")


# --- the publisher (this process) ----------------------------------------------------------


async def _publish(url: str, invocation_id: str, count: int, rate: float | None) -> int:
    """Write ``count`` deltas (at ``rate`` per second, or at once) and the completion; the
    time of the first write (ns)."""
    connection = aioredis.Redis.from_url(url)
    bus = EventBus(connection)
    first = time.monotonic_ns()
    start = time.monotonic()
    try:
        for seq in range(count + 1):
            if rate is not None:
                delay = start + seq * (1 / rate) - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await bus.publish(make_event(invocation_id, seq, last=seq == count), identity=IDENTITY)
    finally:
        await connection.aclose()
    return first


def run_phase(
    mode: str, url: str, port: int, clients: int, events: int, rate: float | None
) -> dict[str, Any]:
    """One phase of one mode: clients connect, the run is published, each client reads it."""
    invocation_id = f"bench-{uuid.uuid4()}"
    # The run's owner, as the first event would bind it: the gateway authorizes by it.
    asyncio.run(_claim(url, invocation_id))
    context = multiprocessing.get_context("spawn")
    ready_recv, ready_send = context.Pipe(duplex=False)
    out_recv, out_send = context.Pipe(duplex=False)
    target: Any = port if mode == "gateway" else url
    child = context.Process(
        target=client_process,
        args=(mode, target, invocation_id, clients, ready_send, out_send),
    )
    child.start()
    if not ready_recv.poll(180) or (answer := ready_recv.recv()) != "ready":
        child.kill()
        raise RuntimeError(f"{mode} clients did not connect: {locals().get('answer')}")
    time.sleep(0.3)  # every client is in its blocking read
    first_write = asyncio.run(_publish(url, invocation_id, events, rate))
    if not out_recv.poll(300):
        child.kill()
        raise RuntimeError(f"{mode} clients did not finish")
    per_client = out_recv.recv()
    child.join(timeout=30)
    if isinstance(per_client, str):
        raise RuntimeError(per_client)
    latencies: list[float] = []
    ends: list[int] = []
    for samples in per_client:
        ends.append(-samples[-1])
        pairs = list(zip(samples[0:-1:2], samples[1:-1:2], strict=True))
        if len(pairs) != events:
            raise RuntimeError(f"a {mode} client got {len(pairs)} of {events} events")
        skip = WARMUP if rate is not None else 0
        latencies.extend((received - stamp) / 1000 for received, stamp in pairs[skip:])
    elapsed_s = (max(ends) - first_write) / 1e9
    return {"latencies_us": latencies, "elapsed_s": elapsed_s,
            "events_per_s": clients * events / elapsed_s}  # fmt: skip


async def _claim(url: str, invocation_id: str) -> None:
    from runner_core.wire import owner_key

    connection = aioredis.Redis.from_url(url)
    try:
        await connection.set(owner_key(invocation_id), IDENTITY, ex=3600)
    finally:
        await connection.aclose()


def run(quick: bool = False, *, clients: int | None = None) -> dict[str, Any]:
    """Measure; ``quick``: 100 clients, one round, fewer events."""
    sizes = dict(QUICK if quick else FULL)
    if clients is not None:
        sizes["clients"] = clients
    info = machine()
    load_before = os.getloadavg()[0]
    paced: dict[str, list[float]] = {mode: [] for mode in MODES}
    burst: dict[str, list[float]] = {mode: [] for mode in MODES}
    p99_ratios: list[float] = []
    throughput_ratios: list[float] = []
    with redis_server() as (url, redis_version), gateway_process(url) as port:
        for _ in range(int(sizes["rounds"])):
            p99: dict[str, float] = {}
            rate_of: dict[str, float] = {}
            for mode in MODES:
                phase = run_phase(mode, url, port, int(sizes["clients"]),
                                  int(sizes["paced_events"]), float(sizes["rate"]))  # fmt: skip
                paced[mode].extend(phase["latencies_us"])
                p99[mode] = summarize(phase["latencies_us"])["p99"]
                phase = run_phase(mode, url, port, int(sizes["clients"]),
                                  int(sizes["burst_events"]), None)  # fmt: skip
                burst[mode].append(phase["events_per_s"])
                rate_of[mode] = phase["events_per_s"]
            p99_ratios.append(p99["gateway"] / p99["direct"])
            throughput_ratios.append(rate_of["gateway"] / rate_of["direct"])

    def kept(samples: list[float]) -> list[float]:
        step = max(1, len(samples) // KEPT_SAMPLES)
        return rounded(samples[::step], 1)

    return {
        "benchmark": NAME,
        "quick": quick,
        "machine": info,
        "redis_version": redis_version,
        "load_average_1m_before": load_before,
        **{key: sizes[key] for key in ("clients", "paced_events", "rate", "burst_events", "rounds")},
        "warmup_per_round": WARMUP,
        "unit": "microseconds",
        "latency": {mode: summarize(samples) for mode, samples in paced.items()},
        "events_per_s": {mode: statistics.median(rates) for mode, rates in burst.items()},
        "events_per_s_per_round": burst,
        "p99_ratio_per_round": p99_ratios,
        "p99_ratio": statistics.median(p99_ratios),
        "throughput_ratio_per_round": throughput_ratios,
        "throughput_ratio": statistics.median(throughput_ratios),
        "samples_us": {mode: kept(samples) for mode, samples in paced.items()},
    }


def render(result: dict[str, Any]) -> str:
    latency, rates, info = result["latency"], result["events_per_s"], result["machine"]

    def row(label: str, stats: dict[str, float], rate: float) -> str:
        return (
            f"| {label} | {stats['median'] / 1000:.1f} | {stats['p90'] / 1000:.1f} | "
            f"{stats['p99'] / 1000:.1f} | {rate:,.0f} |"
        )

    return f"""## HTTP gateway: SSE clients vs reading Redis directly

`python -m bench gateway`: **{result["clients"]:,} concurrent clients** follow one run's events
through **one** gateway process (`agent-runner serve`, one uvicorn worker; server-sent events
over HTTP/1.1 with an API key), against the same clients each reading the run's Redis stream
themselves (`XREAD BLOCK` on a connection of their own, then `json.loads`: what the gateway does
for each client inside). The events are written with `EventBus.publish`, as a worker writes
them. The clients run on asyncio in one process, the same for both modes; redis-server
{result["redis_version"]} on 127.0.0.1.

- **Latency**: {result["rounds"]} round(s) of {result["paced_events"]} `message.delta` events at
  {result["rate"]:g}/s (the first {result["warmup_per_round"]} dropped), from the write to each
  client having it, in milliseconds.
- **Delivered events/s**: a burst of {result["burst_events"]} events written at once; clients x
  events / (the last client's completion - the first write).

| path | p50 ms | p90 ms | p99 ms | delivered events/s |
|---|---|---|---|---|
{row("direct (XREAD per client)", latency["direct"], rates["direct"])}
{row("gateway (SSE)", latency["gateway"], rates["gateway"])}

Gateway / direct, median over the rounds: p99 latency **{result["p99_ratio"]:.2f}x**, delivered
events/s **{result["throughput_ratio"]:.2f}x** (per round: p99
{", ".join(f"{r:.2f}x" for r in result["p99_ratio_per_round"])}; events/s
{", ".join(f"{r:.2f}x" for r in result["throughput_ratio_per_round"])}).

How to read it: the 1-minute load average was {result["load_average_1m_before"]:.1f} on
{info["cores"]} cores when the run started (other benchmarks and test suites ran at the same
time), so the absolute latencies are mostly the one client process falling behind while it
shares the CPU; the ratios of back-to-back rounds are the figures to compare. Through the
gateway each event is read once per client (one `XREAD BLOCK` per open stream, no shared
fan-out), parsed, and written to an HTTP connection by one Python process next to Redis and the
clients; that process's CPU is the limit as clients grow. More processes (`--workers N`, or
instances behind a load balancer) share the clients, since any of them serves any stream.

{machine_line(info)}{mode_note(result)}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=None, help="concurrent clients")
    parser.add_argument("--quick", action="store_true", help="100 clients, one round")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    result = run(args.quick, clients=args.clients)
    print(render(result))
    if not args.no_write:
        publish(NAME, result, default_output(args.quick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
