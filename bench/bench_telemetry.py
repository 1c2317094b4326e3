"""What OpenTelemetry costs a run, in-process: telemetry off vs on, in the same process.

The run is the runtime benchmark's (``bench/bench_runtime.py``): two streamed model calls with
one tool call in between, through ``Runner`` with the in-memory session store, against the
scripted server on loopback. Off: no plugin. On: ``runner_core.telemetry.Telemetry`` with an
SDK tracer provider (``BatchSpanProcessor`` and the OTLP/HTTP span exporter) and meter provider
(periodic OTLP/HTTP metric export), both sending to a small OTLP receiver on loopback, as a
worker with ``OTEL_EXPORTER_OTLP_ENDPOINT`` does. Runs alternate off/on; the overhead is the
median of the paired differences. After the timed runs the providers are flushed and the
receiver's span count is checked: every span of every run was exported.

    python -m bench telemetry [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench.bench_runtime import add, script
from bench.report import (
    default_output,
    machine,
    machine_line,
    mode_note,
    publish,
    rounded,
    summarize,
)
from runner_core import LLMAgent, Runner
from runner_core.testing import ScriptedModelServer, scripted_model
from session_backends import InMemorySessionService

NAME = "telemetry"
FULL_RUNS, QUICK_RUNS = 300, 60
#: Spans of one run: run, invoke_agent, two chat, one execute_tool.
SPANS_PER_RUN = 5


class _Receiver:
    """Counts the spans and the bytes OTLP/HTTP exporters send it; answers 200."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        self.spans = 0
        self.bytes = 0
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    receiver.bytes += len(body)
                    if self.path == "/v1/traces":
                        request = ExportTraceServiceRequest()
                        request.ParseFromString(body)
                        receiver.spans += sum(
                            len(scope.spans)
                            for resource in request.resource_spans
                            for scope in resource.scope_spans
                        )
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _providers(endpoint: str) -> tuple[Any, Any]:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces"))
    )
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics"), export_interval_millis=1000
    )
    return tracer_provider, MeterProvider(metric_readers=[reader])


async def measure(runs: int, warmup: int) -> dict[str, Any]:
    from runner_core.telemetry import Telemetry

    receiver = _Receiver()
    tracer_provider, meter_provider = _providers(receiver.endpoint)
    try:
        with ScriptedModelServer() as server:
            service = InMemorySessionService()
            model = scripted_model(server)
            agent = LLMAgent("bench", model=model, instruction="Be brief.", tools=[add])
            plugin = Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
            off = Runner("bench", agent, session_service=service)
            on = Runner("bench", agent, session_service=service, plugins=[plugin])

            async def one_run(runner: Runner, session_id: str) -> float:
                script(server)
                started = time.perf_counter()
                stream = runner.run(
                    "user", session_id, "What is 2 + 3?", invocation_id=str(uuid.uuid4())
                )
                events = [event async for event in stream]
                elapsed = (time.perf_counter() - started) * 1000
                last = events[-1]
                assert last.type == "runner.completion" and last.status == "completed", last
                assert (last.trace_id is not None) == (runner is on), last
                return elapsed

            off_ms: list[float] = []
            on_ms: list[float] = []
            for i in range(warmup + runs):
                a = await one_run(off, f"off-{i}")
                b = await one_run(on, f"on-{i}")
                if i >= warmup:
                    off_ms.append(a)
                    on_ms.append(b)
            await off.close()
            await on.close()
            await service.close()
            await model.close()
        tracer_provider.force_flush()
        meter_provider.force_flush()
        expected = (warmup + runs) * SPANS_PER_RUN
        assert receiver.spans == expected, f"{receiver.spans} spans exported, {expected} made"
        exported_bytes = receiver.bytes
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()
        receiver.close()
    diffs = [b - a for a, b in zip(off_ms, on_ms, strict=True)]
    off_summary, on_summary = summarize(off_ms), summarize(on_ms)
    return {
        "runs": runs,
        "warmup": warmup,
        "off_ms": off_summary,
        "on_ms": on_summary,
        "overhead_ms": summarize(diffs),
        "ratio": on_summary["median"] / off_summary["median"],
        "spans_per_run": SPANS_PER_RUN,
        "spans_exported": expected,
        "otlp_bytes_per_run": exported_bytes / (warmup + runs),
        "samples": {"off_ms": rounded(off_ms, 4), "on_ms": rounded(on_ms, 4)},
    }


def run(quick: bool = False, *, runs: int | None = None) -> dict[str, Any]:
    """Measure; ``quick`` runs 60 pairs instead of 300."""
    runs = runs or (QUICK_RUNS if quick else FULL_RUNS)
    measured = asyncio.run(measure(runs, warmup=10))
    return {"benchmark": NAME, "quick": quick, "machine": machine(), **measured}


def render(result: dict[str, Any]) -> str:
    off, on, over = result["off_ms"], result["on_ms"], result["overhead_ms"]
    share = over["median"] / off["median"] * 100
    return f"""## Telemetry on vs off (in-process)

`python -m bench telemetry` — {result['runs']} interleaved pairs (off, on) of the runtime
benchmark's run (two streamed model calls, one tool call) against the scripted server on
loopback. On: the `Telemetry` plugin with the SDK's batch span processor and periodic metric
reader, both exporting OTLP/HTTP to a receiver on loopback, as a worker with
`OTEL_EXPORTER_OTLP_ENDPOINT` set does (docs/telemetry.md). {machine_line(result['machine'])}

| | median ms | p10 | p90 | p99 |
|---|---|---|---|---|
| telemetry off (baseline) | {off['median']:.2f} | {off['p10']:.2f} | {off['p90']:.2f} | {off['p99']:.2f} |
| telemetry on, exporting OTLP/HTTP | {on['median']:.2f} | {on['p10']:.2f} | {on['p90']:.2f} | {on['p99']:.2f} |
| **overhead (paired difference)** | **{over['median']:.2f}** | {over['p10']:.2f} | {over['p90']:.2f} | {over['p99']:.2f} |

Overhead: {over['median']:.2f} ms per run at the median ({share:.0f}% of the run), for
{result['spans_per_run']} spans (run, agent, two model calls, one tool call) and their metrics;
on / off = {result['ratio']:.2f}x. Every span was exported ({result['spans_exported']} at the
receiver after the final flush), {result['otlp_bytes_per_run'] / 1024:.1f} KiB of OTLP per run
(spans and metrics). Exporting happens on the SDK's own threads, so on 2 shared cores part of
the overhead is their CPU taken from the event loop, not time the run waits for.{mode_note(result)}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=None, help=f"default {FULL_RUNS}")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS} runs")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    result = run(args.quick, runs=args.runs)
    print(render(result))
    if not args.no_write:
        publish(NAME, result, default_output(args.quick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
