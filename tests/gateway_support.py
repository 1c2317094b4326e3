"""The HTTP gateway under test: real ``agent-runner serve`` processes, an SSE reader, a webhook
receiver, and their fixtures (tests/test_gateway*.py; loaded as a plugin by tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import pytest

from runner_core.testing import ScriptedModelServer
from tests.celery_workers import StartWorker
from tests.services import free_port

ROOT = Path(__file__).resolve().parent.parent
ALICE_KEY = "alice-key-0123456789abcdef"
BOB_KEY = "bob-key-0123456789abcdef0"
OPERATOR_KEY = "operator-key-0123456789abc"
WEBHOOK_SECRET = "webhook-secret-0123456789abcdef"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class GatewayProcess:
    """One ``agent-runner serve`` process on a free port of 127.0.0.1."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.NamedTemporaryFile(prefix="gateway-", suffix=".log", delete=False)
        args = [
            sys.executable, "-m", "workers.cli", "serve",
            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 60.0) -> GatewayProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited at start:\n{self.log_tail()}")
            try:
                if httpx2.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx2.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gateway not ready after {timeout} s:\n{self.log_tail()}")

    def client(self, key: str | None = None) -> httpx2.Client:
        return httpx2.Client(
            base_url=self.url, headers=auth(key) if key else {}, timeout=60, trust_env=False
        )

    def log_tail(self, chars: int = 6000) -> str:
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")[-chars:]

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=10)
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)


def sse_frames(response: httpx2.Response) -> Iterator[dict[str, Any]]:
    """The messages of an SSE response as dicts of their fields (``data`` parsed as JSON);
    a comment line is ``{"comment": text}``."""
    fields: dict[str, Any] = {}
    for line in response.iter_lines():
        if not line:
            if fields:
                if "data" in fields:
                    fields["data"] = json.loads(fields["data"])
                yield fields
                fields = {}
            continue
        if line.startswith(":"):
            yield {"comment": line[1:].strip()}
            continue
        name, _, value = line.partition(":")
        fields[name] = value[1:] if value.startswith(" ") else value


def read_run(client: httpx2.Client, invocation_id: str, **headers: str) -> list[dict[str, Any]]:
    """Every message of the run's event stream (comments left out) until the server ends it."""
    with client.stream("GET", f"/v1/runs/{invocation_id}/events", headers=headers) as response:
        assert response.status_code == 200, response.read()
        return [frame for frame in sse_frames(response) if "comment" not in frame]


def events_of(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [frame["data"] for frame in frames if "id" in frame]


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 recording every POST; answers ``statuses`` in turn, then
    200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.changed:
                    receiver.requests.append((dict(self.headers.items()), body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.changed.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, count: int, timeout: float = 60.0) -> list[tuple[dict[str, str], bytes]]:
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.requests) >= count, timeout=timeout):
                raise AssertionError(f"{len(self.requests)} webhook requests, expected {count}")
            return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- fixtures (a plugin of tests/conftest.py) ------------------------------------------------


StartGateway = Callable[..., GatewayProcess]


@pytest.fixture
def model_server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as server:
        yield server


@pytest.fixture
def stack_env(
    postgres_dsn: str, model_server: ScriptedModelServer, tmp_path: Path
) -> dict[str, str]:
    """What the workers and gateways get on top of the test Redis (tests/celery_workers.py)."""
    return {
        "OPENAI_BASE_URL": model_server.url,
        "AGENT_RUNNER_SESSION_URL": postgres_dsn,
        "AGENT_RUNNER_ARTIFACT_URL": postgres_dsn,
        "AGENT_RUNNER_AGENTS": "testkit=tests.worker_agents:build_testkit,"
        "notes=tests.gateway_agents:build_notes",
        "AGENT_RUNNER_TEST_HOLD_DIR": str(tmp_path),
        "AGENT_RUNNER_GATEWAY_API_KEYS": f"{ALICE_KEY}=alice,{BOB_KEY}=bob,{OPERATOR_KEY}=*",
        "AGENT_RUNNER_GATEWAY_KEEPALIVE_S": "0.3",
        "AGENT_RUNNER_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "AGENT_RUNNER_WEBHOOK_ALLOW_PRIVATE": "true",
        "AGENT_RUNNER_WEBHOOK_BACKOFF_S": "0.2",
    }


@pytest.fixture
def worker(start_worker: StartWorker, stack_env: dict[str, str]) -> Any:
    return start_worker(**stack_env)


@pytest.fixture
def start_gateway(
    worker_env: dict[str, str], stack_env: dict[str, str]
) -> Iterator[StartGateway]:
    started: list[GatewayProcess] = []

    def start(**env: str) -> GatewayProcess:
        gateway = GatewayProcess({**worker_env, **stack_env, **env})
        started.append(gateway)
        return gateway.wait_ready()

    try:
        yield start
    finally:
        for gateway in started:
            gateway.close()


@pytest.fixture
def gateway(start_gateway: StartGateway, worker: Any) -> GatewayProcess:
    return start_gateway()
