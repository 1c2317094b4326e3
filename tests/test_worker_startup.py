"""Starting workers and producers: which configuration they get, and what a bad one prints.

- The project's settings are applied whatever else is importable as ``celeryconfig``.
- A bad ``AGENT_RUNNER_*`` value stops a worker (or Flower) with one line naming it, exit 78.
- A worker with no reachable Redis says so once per outage, not every 2 s.
- ``send_task`` by name from a Celery client without this app's configuration reaches the run
  workers when it names the queue, as the docs show.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests.celery_workers import ROOT, CeleryWorker, wait_for_completion
from tests.services import free_port

pytestmark = pytest.mark.celery

HOSTILE_CELERYCONFIG = """\
broker_url = "memory://"
task_acks_late = False
task_serializer = "pickle"
accept_content = ["pickle"]
task_default_queue = "celery"
"""


def _python_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_RUNNER_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def test_a_services_own_celeryconfig_never_replaces_the_projects(tmp_path: Path) -> None:
    """Given a producer folder with its own celeryconfig.py first on sys.path,
    when it imports the project's app, then the app has the project's settings."""
    (tmp_path / "celeryconfig.py").write_text(HOSTILE_CELERYCONFIG, encoding="utf-8")
    probe = (
        "import json, celeryconfig, workers.app as a; c = a.app.conf; "
        "print(json.dumps([c.broker_url, c.task_acks_late, c.task_serializer, "
        "c.accept_content, c.task_default_queue, celeryconfig.broker_url]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,  # sys.path[0] is this folder, as for `celery -A ...` started here
        env=_python_env(AGENT_RUNNER_BROKER_URL="redis://127.0.0.1:6390/3"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    broker, acks_late, serializer, accept, queue, theirs = json.loads(result.stdout)
    assert theirs == "memory://"  # their module is importable, and left alone
    assert broker == "redis://127.0.0.1:6390/3"
    assert acks_late is True
    assert serializer == "json" and accept == ["json"]
    assert queue == "runs"


@pytest.mark.parametrize(
    ("variable", "value", "command"),
    [
        ("AGENT_RUNNER_RECOVERY_TIMEOUT_S", "ten", "worker"),
        ("AGENT_RUNNER_AGENTS", "support", "worker"),
        ("AGENT_RUNNER_BROKER_URL", "http://localhost:6379", "worker"),
        ("AGENT_RUNNER_SUMMARY_SHARDS", "many", "flower"),
    ],
)
def test_a_bad_setting_stops_the_worker_with_one_line(
    variable: str, value: str, command: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers.app", command],
        cwd=tmp_path,
        env=_python_env(**{variable: value}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 78, result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("agent-runner: configuration error:")
    assert variable in lines[0]
    assert "Traceback" not in result.stderr


def test_a_producer_importing_the_app_gets_the_exception(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import workers.tasks"],
        cwd=tmp_path,
        env=_python_env(AGENT_RUNNER_MAX_ATTEMPTS="0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "ConfigurationError: AGENT_RUNNER_MAX_ATTEMPTS" in result.stderr


def test_a_worker_without_redis_does_not_repeat_its_warning(
    worker_env: dict[str, str],
) -> None:
    """Given no Redis at the configured URL, the worker keeps trying quietly: one warning
    per component for the outage, not one every 2 s."""
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    env = {
        **worker_env,
        "AGENT_RUNNER_BROKER_URL": nowhere,
        "AGENT_RUNNER_REDIS_URL": nowhere,
        "AGENT_RUNNER_SESSION_URL": "memory://",
    }
    env.pop("AGENT_RUNNER_RESULT_BACKEND")
    worker = CeleryWorker(env).start()
    try:
        # Long enough for the old behaviour to log about ten lines (it retried every 0.1-2 s).
        time.sleep(12)
        log = worker.log_tail(200_000)
    finally:
        worker.close()
    assert "cannot start" not in log  # it waits for Redis instead of giving up
    cancel_watch = [line for line in log.splitlines() if "cancel watch lost" in line]
    assert len(cancel_watch) == 1, "\n".join(cancel_watch)


def test_send_task_by_name_with_the_queue_reaches_a_run_worker(
    worker_env: dict[str, str],
) -> None:
    """A service with a Celery app of its own (no routes from this project) sends the run by
    name, naming the queue as the docs say, and the run completes."""
    # No OPENAI_* at all: the built-in assistant answers with the offline demo model.
    env = {k: v for k, v in worker_env.items() if not k.startswith("OPENAI_")}
    worker = CeleryWorker(env).start().wait_ready()
    foreign = Celery("some-service", broker=worker_env["AGENT_RUNNER_BROKER_URL"])
    foreign.conf.update(task_serializer="json", accept_content=["json"])
    try:
        result: Any = foreign.send_task(
            "agent_runner.submit_run",
            args=["assistant", "alice", "", "what is 6*7"],
            queue="runs",
        )
        events = wait_for_completion(worker_env["AGENT_RUNNER_REDIS_URL"], result.id)
    finally:
        foreign.close()
        worker.close()
    assert events[-1]["status"] == "completed"
    assert "42" in (events[-1].get("final_text") or "")
