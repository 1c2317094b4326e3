"""Real ``celery worker`` subprocesses for the distributed tests.

- ``worker_env``: the environment a worker gets: the test Redis (broker, events, sessions,
  results in DB 1), recovery timeout and unacked sweep at 1-2 s so killed runs come back fast.
- ``start_worker``: a factory; ``start_worker(pool="threads", concurrency=8, **env)`` starts
  ``celery -A workers.app worker -Q runs`` and returns once the worker answers a ping. Every
  worker is SIGKILLed (with its process group) at the end of the test.
- ``celery_worker``: one started worker.
- ``producer``: the ``workers.app`` Celery app of the test process, pointed at the test Redis,
  so tests call ``submit_run.delay(...)`` like a real producer.

Events are read with plain redis-py (:func:`read_events`, :func:`wait_for_completion`), the way
a service written without this project's code would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 60.0
#: Short recovery settings for tests: a killed worker's run is picked up again in seconds.
TEST_RECOVERY_TIMEOUT_S = "2"
TEST_RESTORE_INTERVAL_S = "1"


class CeleryWorker:
    """One ``celery -A workers.app worker`` process, in its own process group."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        pool: str = "threads",
        concurrency: int = 8,
        queues: str = "runs",
    ) -> None:
        self.env = env
        self.pool = pool
        self.concurrency = concurrency
        self.queues = queues
        self.hostname = f"test-{uuid.uuid4().hex[:8]}@127.0.0.1"
        self._log = tempfile.NamedTemporaryFile(
            prefix="celery-worker-", suffix=".log", delete=False
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> CeleryWorker:
        args = [
            sys.executable, "-m", "celery", "-A", "workers.app", "worker",
            "-Q", self.queues, "-P", self.pool, "-c", str(self.concurrency),
            "-n", self.hostname, "--without-mingle", "--without-gossip", "-l", "INFO",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args,
            env=self.env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def is_alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> CeleryWorker:
        """Return once the worker answers a control ping (its run loop is up by then)."""
        from celery import Celery

        pinger = Celery(broker=self.env["AGENT_RUNNER_BROKER_URL"])
        pinger.conf.update(accept_content=["json"], task_serializer="json")
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not self.is_alive():
                    raise RuntimeError(f"celery worker exited at start:\n{self.log_tail()}")
                try:
                    replies = pinger.control.ping(destination=[self.hostname], timeout=0.5)
                except (OSError, redis.exceptions.ConnectionError):
                    # A pooled connection to a server that restarted (fault tests): the
                    # failed attempt drops it; try again.
                    continue
                if replies:
                    return self
        finally:
            pinger.close()
        self.kill()
        raise RuntimeError(f"celery worker not ready after {timeout} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the worker and its children, like an OOM kill or a pulled plug."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it takes longer than ``timeout``."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, chars: int = 6000) -> str:
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")[-chars:]

    def close(self) -> None:
        self.kill()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)


def _result_url(redis_url: str) -> str:
    return redis_url.rsplit("/", 1)[0] + "/1"


@pytest.fixture
def worker_env(redis_url: str) -> dict[str, str]:
    """Environment for worker subprocesses (tests add OPENAI_BASE_URL etc. as they need)."""
    env = dict(os.environ)
    env.update(
        AGENT_RUNNER_BROKER_URL=redis_url,
        AGENT_RUNNER_REDIS_URL=redis_url,
        AGENT_RUNNER_SESSION_URL=redis_url,
        AGENT_RUNNER_RESULT_BACKEND=_result_url(redis_url),
        AGENT_RUNNER_RECOVERY_TIMEOUT_S=TEST_RECOVERY_TIMEOUT_S,
        AGENT_RUNNER_RESTORE_INTERVAL_S=TEST_RESTORE_INTERVAL_S,
        AGENT_RUNNER_RESTORE_THROTTLE="1",
        AGENT_RUNNER_SOFT_SHUTDOWN_S="0",
        AGENT_RUNNER_MODEL="scripted",
        AGENT_RUNNER_AGENTS="testkit=tests.worker_agents:build_testkit",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    return env


StartWorker = Callable[..., CeleryWorker]


@pytest.fixture
def start_worker(worker_env: dict[str, str]) -> Iterator[StartWorker]:
    """``start_worker(pool="threads", concurrency=8, wait=True, **env)`` -> a ready worker."""
    workers: list[CeleryWorker] = []

    def start(
        *, pool: str = "threads", concurrency: int = 8, wait: bool = True, **env: str
    ) -> CeleryWorker:
        worker = CeleryWorker({**worker_env, **env}, pool=pool, concurrency=concurrency)
        workers.append(worker)
        worker.start()
        return worker.wait_ready() if wait else worker

    try:
        yield start
    finally:
        for worker in workers:
            worker.close()


@pytest.fixture
def celery_worker(start_worker: StartWorker) -> CeleryWorker:
    return start_worker()


@pytest.fixture
def producer(worker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The project's Celery app in the test process, pointed at the test Redis."""
    for name in (
        "AGENT_RUNNER_BROKER_URL",
        "AGENT_RUNNER_RESULT_BACKEND",
        "AGENT_RUNNER_REDIS_URL",
    ):
        monkeypatch.setenv(name, worker_env[name])
    from workers.app import app

    app.close()  # drop pooled connections to a previous test's server
    app.conf.update(
        broker_url=worker_env["AGENT_RUNNER_BROKER_URL"],
        result_backend=worker_env["AGENT_RUNNER_RESULT_BACKEND"],
        # celeryconfig derives this from the environment of the first import of workers.app,
        # which may have been a test without a result backend.
        task_ignore_result=False,
    )
    app._local.__dict__.pop("backend", None)
    _forget_producer_pool(app)
    try:
        yield app
    finally:
        app.close()
        _forget_producer_pool(app)


def _forget_producer_pool(app: Any) -> None:
    """Unbind the app's producer pool: ``app.close()`` keeps it, bound to the broker URL of its
    first use, so a test with a Redis of its own would leave the next test sending there. (Not
    closed: kombu keeps pools per URL, and the next test on that URL gets the same one back.)"""
    app.amqp._producer_pool = None


# --- reading events the way any Redis client can --------------------------------------------


def read_events(redis_url: str, invocation_id: str) -> list[dict[str, Any]]:
    """Every event in the invocation's stream, in stream order (plain XRANGE)."""
    client = redis.Redis.from_url(redis_url)
    try:
        entries = client.xrange(f"agent-runner:stream:{invocation_id}")
    finally:
        client.close()
    return [json.loads(fields[b"event"]) for _, fields in entries]


def wait_for_completion(
    redis_url: str, invocation_id: str, *, timeout: float = 60.0
) -> list[dict[str, Any]]:
    """Poll the stream until it holds a ``runner.completion``; return all its events.

    The timeout only keeps a broken run from hanging the suite; no test asserts on timing.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            events = read_events(redis_url, invocation_id)
        except redis.exceptions.ConnectionError:
            events = []
        if any(e["type"] == "runner.completion" for e in events):
            return events
        time.sleep(0.1)
    raise AssertionError(
        f"no runner.completion for {invocation_id} after {timeout} s; "
        f"events so far: {[(e['seq'], e['type']) for e in read_events(redis_url, invocation_id)]}"
    )


def completions(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "runner.completion"]
