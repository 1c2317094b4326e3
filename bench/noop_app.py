"""The baseline for bench_distributed: a bare Celery no-op task on the same settings."""

from __future__ import annotations

from celery import Celery

from workers.celery_config import load_celeryconfig

app = Celery("bench_noop")
app.config_from_object(load_celeryconfig())
app.conf.task_routes = {"bench.noop": {"queue": "bench-noop"}}


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]
def noop() -> None:
    return None
