"""The cost of execution traces per run: the same run with the trace recorder and without it.

Part of ``python -m bench runtime`` (:mod:`bench.bench_runtime` calls :func:`measure` and
:func:`render`): the runtime benchmark's run (two streamed model calls with one tool call in
between, in-memory sessions) through two Runners built alike, one with a
:class:`~runner_core.tracing.TraceRecorder` in its plugins, alternating A B A B; the cost is the
median of the paired differences. Two trace stores: in memory (the recorder's own CPU) and a
real ``redis-server`` on loopback (each step one round trip, as a worker writes them).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from bench.report import machine_line, rounded, summarize
from runner_core import InMemoryTraceStore, LLMAgent, Runner, TraceRecorder, TraceStore, tool
from runner_core.testing import ScriptedModelServer, scripted_model
from session_backends import InMemorySessionService
from session_backends.traces import RedisTraceStore
from tests.services import RedisServer

__all__ = ["measure", "render"]


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def _script(server: ScriptedModelServer) -> None:
    server.add_tool_calls([("call_1", "add", {"a": 2, "b": 3})])
    server.add_text("The answer is 5.", chunks=4)


async def _pairs(
    server: ScriptedModelServer, store: TraceStore, runs: int, warmup: int
) -> dict[str, Any]:
    agent = LLMAgent("bench", model=scripted_model(server), instruction="Be brief.", tools=[add])
    sessions = InMemorySessionService()
    plain = Runner("bench", agent, session_service=sessions)
    traced = Runner(
        "bench", agent, session_service=sessions, plugins=[TraceRecorder(store, agent=agent)]
    )
    off_ms: list[float] = []
    on_ms: list[float] = []
    cpu_diffs: list[float] = []
    steps = 0
    for i in range(warmup + runs):
        timings = []
        cpu = []
        for runner, name in ((plain, "off"), (traced, "on")):
            _script(server)
            invocation_id = str(uuid.uuid4())
            c0, t0 = time.process_time(), time.perf_counter()
            stream = runner.run("user", f"{name}-{i}", "What is 2 + 3?", invocation_id=invocation_id)
            events = [e async for e in stream]
            timings.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
            assert events[-1].type == "runner.completion" and events[-1].status == "completed"
        trace = await store.get(invocation_id)  # the traced run's, outside the timed span
        assert trace is not None and trace.status == "completed", trace
        steps = len(trace.steps)
        if i >= warmup:
            off_ms.append(timings[0])
            on_ms.append(timings[1])
            cpu_diffs.append(cpu[1] - cpu[0])
    await plain.close()
    await traced.close()
    await sessions.close()
    await agent.model.close()
    diffs = [on - off for on, off in zip(on_ms, off_ms, strict=True)]
    return {
        "steps_per_run": steps,
        "off_ms": summarize(off_ms),
        "on_ms": summarize(on_ms),
        "overhead_ms": summarize(diffs),
        # CPU time of this process (the runs, the scripted server's thread, the recorder): on
        # a loaded machine, the part of the cost that is the recorder's own work.
        "cpu_overhead_ms": summarize(cpu_diffs),
        "samples": {"off_ms": rounded(off_ms, 4), "on_ms": rounded(on_ms, 4)},
    }


async def measure(server: ScriptedModelServer, runs: int, warmup: int) -> dict[str, Any]:
    """Tracing on vs off, with the trace store in memory and in Redis."""
    cases: dict[str, Any] = {}
    memory = InMemoryTraceStore()
    cases["memory"] = {"label": "in-memory trace store", **await _pairs(server, memory, runs, warmup)}
    with RedisServer() as redis_server:
        store = RedisTraceStore(redis_server.url)
        try:
            cases["redis"] = {
                "label": "Redis trace store (loopback)",
                **await _pairs(server, store, runs, warmup),
            }
        finally:
            await store.close()
    return cases


def render(result: dict[str, Any]) -> str:
    """The "tracing on vs off" section of the runtime page."""
    lines = [
        "### Tracing on vs off",
        "",
        f"The same run ({result['runs']} interleaved pairs, in-memory sessions) through a Runner",
        "with the trace recorder (`TraceRecorder`, docs/traces.md) and one without it; the",
        "cost is the median of the paired differences."
        + (
            f" Measured apart from the rest of this page: {machine_line(result['tracing_machine'])}"
            if "tracing_machine" in result
            else ""
        ),
        "",
        "| trace store | steps per run | off ms, median (p90) | on ms, median (p90) "
        "| **tracing cost ms**, median (p90) | on / off | CPU cost ms, median |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case in result["tracing"].values():
        off, on, over = case["off_ms"], case["on_ms"], case["overhead_ms"]
        lines.append(
            f"| {case['label']} | {case['steps_per_run']} "
            f"| {off['median']:.2f} ({off['p90']:.2f}) | {on['median']:.2f} ({on['p90']:.2f}) "
            f"| **{over['median']:.2f}** ({over['p90']:.2f}) "
            f"| {on['median'] / off['median']:.2f}x "
            f"| {case['cpu_overhead_ms']['median']:.2f} |"
            if "cpu_overhead_ms" in case
            else f"| {on['median'] / off['median']:.2f}x | |"
        )
    lines += [
        "",
        "The recorder queues each step for a writer task of the run's own and the completion",
        "waits for the writes to land: the store's round trips (one Lua script per step in",
        "Redis, plus the header at the start and the end) overlap with the run, except the",
        "first one (the trace's start) and the last ones. The CPU column is the paired",
        "difference of this process's CPU time (the run, the scripted server's thread, the",
        "recorder; not redis-server's): on a loaded machine the wall-clock cost mostly",
        "measures waiting for a core, the CPU cost the recorder's own work.",
    ]
    return "\n".join(lines)
