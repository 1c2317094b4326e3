"""A second baseline for bench_distributed: a bare Celery task that makes the same streamed
model call as a run, with the raw ``openai`` client, and returns the text.

It is what any Celery-based agent runtime pays at the least (broker, result backend, one model
call), so the gap between it and ``submit_run`` is agent-runner's own cost.
"""

from __future__ import annotations

import os
import threading

from celery import Celery
from openai import OpenAI

from workers.celery_config import load_celeryconfig

app = Celery("bench_model_call")
app.config_from_object(load_celeryconfig())
app.conf.task_routes = {"bench.*": {"queue": "bench-model-call"}}

_local = threading.local()


def _client() -> OpenAI:
    client: OpenAI | None = getattr(_local, "client", None)
    if client is None:
        client = _local.client = OpenAI(
            base_url=os.environ["OPENAI_BASE_URL"], api_key="sk-bench", max_retries=0
        )
    return client


@app.task(name="bench.model_call")  # type: ignore[untyped-decorator]
def model_call(message: str) -> str:
    stream = _client().chat.completions.create(
        model=os.environ.get("AGENT_RUNNER_MODEL", "scripted"),
        messages=[{"role": "user", "content": message}],
        stream=True,
        stream_options={"include_usage": True},
    )
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


@app.task(name="bench.sleep")  # type: ignore[untyped-decorator]
def sleep(seconds: float) -> None:
    """The model call's wait without the call: bare Celery holding many tasks at once."""
    import time

    time.sleep(seconds)
