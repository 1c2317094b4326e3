"""Flower over the project's app: tasks listed by name, basic auth enforced."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from runner_core.testing import ScriptedModelServer
from tests.celery_workers import ROOT, StartWorker, wait_for_completion
from tests.services import free_port

pytestmark = [pytest.mark.redis, pytest.mark.celery]

USER, PASSWORD = "ops", "s3cret-pass"


def get(url: str, *, auth: bool) -> tuple[int, Any]:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


@pytest.fixture
def flower(worker_env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    env = {**worker_env, "FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.app", "flower",
         "--address=127.0.0.1", f"--port={port}"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, "flower exited at start"
            try:
                urllib.request.urlopen(f"{base}/healthcheck", timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def test_flower_lists_runs_by_name_behind_basic_auth(
    producer: Any, start_worker: StartWorker, flower: str, redis_url: str
) -> None:
    with ScriptedModelServer() as model_server:
        model_server.add_text("hello from the worker")
        start_worker(OPENAI_BASE_URL=model_server.url)
        from workers.tasks import submit_run

        result = submit_run.delay("assistant", "kim", "s-flower", "hi")
        wait_for_completion(redis_url, result.id)

    deadline = time.monotonic() + 60
    tasks: dict[str, Any] = {}
    while time.monotonic() < deadline and result.id not in tasks:
        status, tasks = get(f"{flower}/api/tasks", auth=True)
        assert status == 200
        time.sleep(0.3)
    assert tasks[result.id]["name"] == "agent_runner.submit_run"
    assert "kim" in tasks[result.id]["args"]

    status, _ = get(f"{flower}/api/tasks", auth=False)
    assert status == 401
