"""A second baseline for bench_distributed: a bare Celery task that makes the same streamed
model call as a run, with the raw ``openai`` client, and returns the text.

It is what any Celery-based agent runtime pays at the least (broker, result backend, one model
call), so the gap between it and ``submit_run`` is agent-runner's own cost.

``bench.async_model_call`` makes the same call with ``AsyncOpenAI`` on one asyncio loop thread
per process, handed over from the task thread as a run worker does (``workers.runtime``): what
any runtime whose agent loop is asyncio pays at the least on Celery's thread pool. It is
context for the floor above, not a floor of its own: the gap between the two is the cost of
asyncio and the thread hop, before agent-runner does anything.
"""

from __future__ import annotations

import asyncio
import os
import threading

from celery import Celery
from openai import AsyncOpenAI, OpenAI

from workers.celery_config import load_celeryconfig

app = Celery("bench_model_call")
app.config_from_object(load_celeryconfig())
app.conf.task_routes = {
    "bench.async_model_call": {"queue": "bench-async-model-call"},
    "bench.*": {"queue": "bench-model-call"},
}

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


_loop_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_async_client: AsyncOpenAI | None = None


def _runtime_loop() -> asyncio.AbstractEventLoop:
    """The process's one asyncio loop, on a thread of its own (started on first use)."""
    global _loop
    with _loop_lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="bench-loop", daemon=True).start()
            _loop = loop
        return _loop


async def _async_call(message: str) -> str:
    global _async_client
    if _async_client is None:  # on the loop's thread only: no lock needed
        _async_client = AsyncOpenAI(
            base_url=os.environ["OPENAI_BASE_URL"], api_key="sk-bench", max_retries=0
        )
    stream = await _async_client.chat.completions.create(
        model=os.environ.get("AGENT_RUNNER_MODEL", "scripted"),
        messages=[{"role": "user", "content": message}],
        stream=True,
        stream_options={"include_usage": True},
    )
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


@app.task(name="bench.async_model_call")  # type: ignore[untyped-decorator]
def async_model_call(message: str) -> str:
    return asyncio.run_coroutine_threadsafe(_async_call(message), _runtime_loop()).result()


@app.task(name="bench.sleep")  # type: ignore[untyped-decorator]
def sleep(seconds: float) -> None:
    """The model call's wait without the call: bare Celery holding many tasks at once."""
    import time

    time.sleep(seconds)
