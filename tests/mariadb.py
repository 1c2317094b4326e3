"""A real MariaDB server for the tests (a pytest plugin loaded by conftest.py).

Started once per test session on 127.0.0.1, on a free port, with its own data directory in a
temporary directory, and torn down at the end:

- ``mysql_server``  the session's :class:`MariaDBServer` (``.url``, ``.port``, ``.stop()``,
                    ``.start()``)
- ``mysql_url``     a ``mysql://`` URL of a database created for this test only (dropped after)

The binaries are Debian's ``mariadb-server`` (``mariadb-install-db`` and ``mariadbd``; .ci/run
installs them). MariaDB refuses to run as root; when the tests run as root the server runs as
the system user ``agentrunner-mysql`` (created with ``useradd`` when missing). A missing binary
skips the tests that need it, except under ``CI=true``, where it fails them.

The server is tuned for tests (no binary log, the redo log flushed once a second rather than at
each commit) and its ``max_allowed_packet`` is 4 MiB, so the oversized-event tests stay cheap.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import LOOPBACK, START_TIMEOUT, ServerUnavailable, _missing, free_port

__all__ = ["MYSQL_SYSTEM_USER", "MariaDBServer", "find_mariadb"]

MYSQL_SYSTEM_USER = "agentrunner-mysql"
#: The server's max_allowed_packet (bytes): small, so that a test can exceed it cheaply.
MAX_ALLOWED_PACKET = 4 * 1024 * 1024


def find_mariadb() -> tuple[str, str] | None:
    """(``mariadb-install-db``, ``mariadbd``) from PATH or /usr/sbin, or None."""
    install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    server = None
    for name in ("mariadbd", "mysqld"):
        server = shutil.which(name) or (
            f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None
        )
        if server:
            break
    if install and server:
        return install, server
    return None


def _system_user_ids() -> tuple[int, int] | None:
    """(uid, gid) to run MariaDB as when we are root, creating the user if needed."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(MYSQL_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             MYSQL_SYSTEM_USER],
            check=False, capture_output=True,
        )  # fmt: skip
        try:
            entry = pwd.getpwnam(MYSQL_SYSTEM_USER)
        except KeyError as exc:
            raise ServerUnavailable(
                f"running as root and could not create the system user {MYSQL_SYSTEM_USER!r} "
                "that MariaDB needs (useradd failed)"
            ) from exc
    return entry.pw_uid, entry.pw_gid


class MariaDBServer:
    """A MariaDB server in a temp dir, listening on 127.0.0.1 only. ``stop()`` then ``start()``
    keeps the data. Its ``root`` user (from 127.0.0.1) has no password."""

    user = "root"

    def __init__(self, *, port: int | None = None) -> None:
        self.host = LOOPBACK
        self.port = port or free_port()
        self.binaries = find_mariadb()
        self._dir = tempfile.mkdtemp(prefix="agent-runner-mariadb-")
        self.datadir = os.path.join(self._dir, "data")
        self.socket = os.path.join(self._dir, "mysqld.sock")
        # A server of its own for temporary tables: mariadbd removes every `#sql*` file in its
        # tmpdir at start, so servers sharing /tmp delete each other's (a concurrent
        # mariadb-install-db then fails with "Unknown table 'mysql.tmp_user_sys'").
        self.tmpdir = os.path.join(self._dir, "tmp")
        self._ids = _system_user_ids()
        self._process: subprocess.Popen[bytes] | None = None
        self._initialized = False
        self._db_counter = itertools.count(1)

    @property
    def url(self) -> str:
        return self.url_for("mysql")

    def url_for(self, database: str) -> str:
        return f"mysql://{self.user}@{self.host}:{self.port}/{database}"

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _as_user(self) -> dict[str, object]:
        if self._ids is None:
            return {}
        uid, gid = self._ids
        return {"user": uid, "group": gid, "extra_groups": []}

    def _install(self) -> None:
        if self.binaries is None:
            raise ServerUnavailable(
                "MariaDB binaries (mariadb-install-db, mariadbd) not found: install "
                "mariadb-server (apt-get install mariadb-server)"
            )
        os.makedirs(self.tmpdir, exist_ok=True)
        if self._ids is not None:
            os.chown(self._dir, *self._ids)
            os.chown(self.tmpdir, *self._ids)
        result = subprocess.run(
            [self.binaries[0], "--no-defaults", f"--datadir={self.datadir}",
             f"--tmpdir={self.tmpdir}",
             "--auth-root-authentication-method=normal", "--skip-test-db",
             "--skip-name-resolve"],
            capture_output=True, cwd=self._dir, check=False, **self._as_user(),  # type: ignore[call-overload]
        )  # fmt: skip
        if result.returncode != 0:
            raise ServerUnavailable(
                f"mariadb-install-db failed: {result.stderr.decode(errors='replace')[-2000:]}"
            )
        self._initialized = True

    def start(self) -> MariaDBServer:
        if self.is_running():
            return self
        if not self._initialized:
            self._install()
        assert self.binaries is not None
        args = [
            self.binaries[1], "--no-defaults",
            f"--datadir={self.datadir}",
            f"--tmpdir={self.tmpdir}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            f"--socket={self.socket}",
            f"--pid-file={os.path.join(self._dir, 'mysqld.pid')}",
            "--skip-name-resolve",
            "--skip-log-bin",
            "--innodb-flush-log-at-trx-commit=0",
            "--innodb-buffer-pool-size=64M",
            "--max-connections=300",
            f"--max-allowed-packet={MAX_ALLOWED_PACKET}",
        ]  # fmt: skip
        log_path = os.path.join(self._dir, "server.log")
        with open(log_path, "ab") as log:
            if self._ids is not None:
                os.chown(log_path, *self._ids)
            self._process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, cwd=self._dir,
                start_new_session=True, **self._as_user(),  # type: ignore[call-overload]
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServerUnavailable(f"mariadbd exited at start: {self._log_tail()}")
            if self._ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise ServerUnavailable(f"mariadbd did not accept connections: {self._log_tail()}")

    def _sql(self, statement: str) -> None:
        """Run one statement as root over TCP (with the driver the store uses), on a thread of
        its own so that async tests may call it too."""
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        import asyncmy

        async def run() -> None:
            conn = await asyncmy.connect(
                host=self.host, port=self.port, user=self.user, password="", connect_timeout=2
            )
            try:
                async with conn.cursor() as cur:
                    await cur.execute(statement)
            finally:
                conn.close()

        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, run()).result()

    def _ready(self) -> bool:
        try:
            self._sql("SELECT 1")
        except Exception:
            return False
        return True

    def stop(self) -> None:
        """Normal shutdown (SIGTERM): open connections are cut, data is kept."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its URL."""
        name = name or f"test_{os.getpid()}_{next(self._db_counter)}"
        self._sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        self._sql(f"DROP DATABASE IF EXISTS `{name}`")

    def _log_tail(self) -> str:
        try:
            return Path(self._dir, "server.log").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> MariaDBServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture(scope="session")
def mysql_server() -> Iterator[MariaDBServer]:
    """The session's MariaDB server."""
    try:
        server = MariaDBServer()
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
def mysql_url(mysql_server: MariaDBServer) -> Iterator[str]:
    """The ``mysql://`` URL of a database created for this test and dropped after it."""
    if not mysql_server.is_running():
        mysql_server.start()
    url = mysql_server.create_database()
    try:
        yield url
    finally:
        if mysql_server.is_running():
            mysql_server.drop_database(url.rsplit("/", 1)[1])
