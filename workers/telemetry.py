"""OpenTelemetry in workers and producers: one trace from ``submit_run.delay`` to each model call.

On when the process is configured for it the OpenTelemetry way: an OTLP endpoint in
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT``), and ``OTEL_SDK_DISABLED`` not ``true``. Every other
``OTEL_*`` variable (service name, resource attributes, headers, protocol timeouts, batch and
export intervals) is read by the SDK itself. Off, nothing here imports OpenTelemetry.

:func:`setup` runs at worker start (:mod:`workers.app`'s signals, in each process that runs
tasks) and is what a producer calls once at its own start:

- an SDK tracer and meter provider exporting OTLP over HTTP, unless the process already has
  SDK providers (``opentelemetry-instrument``, or the application's own set-up), which are used;
- the official Celery instrumentation, which carries the trace context in the task message's
  headers (JSON): the producer's span is the parent of the worker's ``run/agent_runner.submit_run``
  span, and so of the run's spans (:mod:`runner_core.telemetry`); a summary job queued after a
  run is a child of that run's task span, so it is in the run's trace;
- a ``published_at`` header on each task message, for the time it waited in the queue.

Metrics here (besides the run's, :mod:`runner_core.telemetry`): ``agent_runner.queue.wait``,
``agent_runner.session.wait`` and ``agent_runner.summary.duration`` (docs/telemetry.md).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from runner_core.errors import ConfigurationError
from runner_core.plugins import Plugin
from runner_core.wire import SUBMIT_RUN, SUMMARIZE_SESSION

__all__ = [
    "ENDPOINT_VARIABLES",
    "PUBLISHED_AT_HEADER",
    "current_trace_id",
    "enabled",
    "run_plugins",
    "session_wait",
    "setup",
    "shutdown",
]

logger = logging.getLogger(__name__)

#: Any of these set turns telemetry on (the OTLP exporter's own variables).
ENDPOINT_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)
#: The task message header with the time (epoch seconds) the producer published it.
PUBLISHED_AT_HEADER = "agent_runner_published_at"
_TASKS = (SUBMIT_RUN, SUMMARIZE_SESSION)


def enabled() -> bool:
    """Whether this process's environment asks for telemetry (see the module docstring)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(os.environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


@dataclass(slots=True)
class _Telemetry:
    """What :func:`setup` made in this process."""

    pid: int
    plugin: Plugin
    queue_wait: Any
    session_wait: Any
    summary_duration: Any
    #: The providers made here (None: the process had its own), shut down by :func:`shutdown`.
    owned: list[Any]
    instrumentor: Any


_state: _Telemetry | None = None
_lock = threading.Lock()
_job_started: dict[str, float] = {}


def setup(service_name: str = "agent-runner") -> bool:
    """Turn telemetry on in this process when the environment asks for it; idempotent per
    process. Returns whether it is on.

    Args:
        service_name: the ``service.name`` when ``OTEL_SERVICE_NAME`` does not set one.

    Raises:
        ConfigurationError: an OTLP endpoint is set but the ``otel`` extra is not installed.
    """
    global _state
    if not enabled():
        return False
    with _lock:
        if _state is not None and _state.pid == os.getpid():
            return True
        _state = _start(service_name)
    logger.info("OpenTelemetry on: traces and metrics go to the OTLP endpoint")
    return True


def _start(service_name: str) -> _Telemetry:
    try:
        from opentelemetry import metrics, trace
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import OTELResourceDetector, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from runner_core.telemetry import DURATION_BUCKETS, Telemetry
    except ImportError as exc:
        variable = next(name for name in ENDPOINT_VARIABLES if os.environ.get(name, "").strip())
        raise ConfigurationError(
            f"{variable} is set, so OpenTelemetry is on, but it is not installed ({exc}); "
            "pip install 'agent-runner[otel]', or unset the variable."
        ) from exc

    resource = Resource.create({"service.name": service_name}).merge(
        OTELResourceDetector().detect()
    )
    owned: list[Any] = []
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(tracer_provider)
        owned.append(tracer_provider)
    if not isinstance(metrics.get_meter_provider(), MeterProvider):
        reader = PeriodicExportingMetricReader(OTLPMetricExporter())
        meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
        metrics.set_meter_provider(meter_provider)
        owned.append(meter_provider)
    instrumentor = CeleryInstrumentor()  # type: ignore[no-untyped-call]
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()
    _connect_signals()
    meter = metrics.get_meter("agent_runner")
    return _Telemetry(
        pid=os.getpid(),
        plugin=Telemetry(),
        queue_wait=meter.create_histogram(
            "agent_runner.queue.wait",
            unit="s",
            description="Time a task message waited in the broker before a worker took it.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        ),
        session_wait=meter.create_histogram(
            "agent_runner.session.wait",
            unit="s",
            description="Time a run waited for its session (another run of it under way).",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        ),
        summary_duration=meter.create_histogram(
            "agent_runner.summary.duration",
            unit="s",
            description="Duration of summary jobs, by outcome (agent_runner.summary.status).",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        ),
        owned=owned,
        instrumentor=instrumentor,
    )


def shutdown() -> None:
    """Export what is buffered and stop the providers :func:`setup` made, and the Celery
    instrumentation (worker shutdown; a producer's exit)."""
    global _state
    with _lock:
        state, _state = _state, None
    if state is None or state.pid != os.getpid():
        return
    state.instrumentor.uninstrument()
    _disconnect_signals()
    for provider in state.owned:
        try:
            provider.shutdown()
        except Exception:  # pragma: no cover - best effort at shutdown
            logger.exception("OpenTelemetry provider shutdown failed")


def run_plugins() -> list[Plugin]:
    """The plugins a worker's Runner gets: the telemetry plugin when telemetry is on."""
    state = _state
    return [state.plugin] if state is not None and state.pid == os.getpid() else []


def current_trace_id() -> str | None:
    """The trace ID (32 hex digits) of the span current here when telemetry is on, else None:
    what a completion the worker publishes itself (a run that could not run) carries."""
    if _state is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


@asynccontextmanager
async def session_wait(app_name: str) -> AsyncIterator[None]:
    """Around a run's wait for its session: a ``wait for session`` span and the
    ``agent_runner.session.wait`` metric (nothing when telemetry is off)."""
    state = _state
    if state is None:
        yield
        return
    from opentelemetry import trace

    started = time.perf_counter()
    tracer = trace.get_tracer("agent_runner")
    with tracer.start_as_current_span(
        "wait for session", attributes={"agent_runner.app_name": app_name}
    ):
        try:
            yield
        finally:
            state.session_wait.record(
                time.perf_counter() - started, {"agent_runner.app_name": app_name}
            )


# --- Celery signals -------------------------------------------------------------------------

_connected = False


def _connect_signals() -> None:
    global _connected
    if _connected:
        return
    from celery.signals import before_task_publish, task_postrun, task_prerun

    before_task_publish.connect(_stamp_published_at, weak=False)
    task_prerun.connect(_task_started, weak=False)
    task_postrun.connect(_task_ended, weak=False)
    _connected = True


def _disconnect_signals() -> None:
    global _connected
    from celery.signals import before_task_publish, task_postrun, task_prerun

    before_task_publish.disconnect(_stamp_published_at)
    task_prerun.disconnect(_task_started)
    task_postrun.disconnect(_task_ended)
    _connected = False


def _stamp_published_at(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None:
        headers[PUBLISHED_AT_HEADER] = time.time()


def _task_started(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    state = _state
    name = getattr(task, "name", None)
    if state is None or name not in _TASKS or task_id is None:
        return
    request = getattr(task, "request", None)
    published = getattr(request, PUBLISHED_AT_HEADER, None)
    if published is None:
        headers = getattr(request, "headers", None) or {}
        published = headers.get(PUBLISHED_AT_HEADER)
    if isinstance(published, int | float):
        state.queue_wait.record(max(0.0, time.time() - published), {"agent_runner.task": name})
    if name == SUMMARIZE_SESSION:
        _job_started[task_id] = time.perf_counter()


def _task_ended(
    task_id: str | None = None, retval: Any = None, state: Any = None, **_: Any
) -> None:
    telemetry = _state
    started = _job_started.pop(task_id, None) if task_id is not None else None
    if telemetry is None or started is None:
        return
    status = retval.get("status") if isinstance(retval, dict) else None
    telemetry.summary_duration.record(
        time.perf_counter() - started,
        {"agent_runner.summary.status": str(status or state or "unknown")},
    )
