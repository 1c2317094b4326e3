"""A real three-node Redis Cluster for the tests (a pytest plugin loaded by conftest.py).

Started once per test session on 127.0.0.1: three ``redis-server --cluster-enabled yes``
processes on free ports (and their cluster bus ports, port + 10000), each in its own temporary
directory, joined with ``redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes``
(every node a primary holding a third of the 16384 slots), torn down at the end:

- ``redis_cluster``      the session's :class:`RedisClusterServers` (``.nodes``, ``.url``,
                         ``.version``)
- ``redis_cluster_url``  ``redis+cluster://127.0.0.1:<port of the first node>`` with every node
                         flushed before the test

Binaries: Debian's ``/usr/bin/redis-server`` and ``/usr/bin/redis-cli`` first (Redis 7: sharded
pub/sub), else whatever ``redis-server``/``redis-cli`` PATH has. A missing binary skips the
tests that need the cluster, except under ``CI=true``, where it fails them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import LOOPBACK, START_TIMEOUT, ServerUnavailable, _missing, free_port

__all__ = ["RedisClusterServers", "find_cluster_binaries"]

#: How many primaries the test cluster has (the smallest cluster redis-cli creates).
NODES = 3


def _usable(path: str | None) -> str | None:
    return path if path and os.access(path, os.X_OK) else None


def find_cluster_binaries() -> tuple[str, str] | None:
    """(``redis-server``, ``redis-cli``): Debian's in /usr/bin first, else from PATH."""
    server = _usable("/usr/bin/redis-server") or _usable(shutil.which("redis-server"))
    cli = _usable("/usr/bin/redis-cli") or _usable(shutil.which("redis-cli"))
    return (server, cli) if server and cli else None


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(100):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOOPBACK, port + 10000))
            except OSError:
                continue
        return port
    raise ServerUnavailable("no free port pair (port, port + 10000) for a cluster node")


class RedisClusterServers:
    """Three cluster-mode redis-server processes on 127.0.0.1, joined into one cluster."""

    def __init__(self) -> None:
        found = find_cluster_binaries()
        if found is None:
            raise ServerUnavailable(
                "redis-server or redis-cli not found: install them (apt-get install redis-server)"
            )
        self.server_bin, self.cli_bin = found
        self.nodes: list[int] = []
        self._dirs: list[str] = []
        self._processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """The cluster's URL as agent-runner takes it (one seed node; the rest are found)."""
        return f"redis+cluster://{LOOPBACK}:{self.nodes[0]}"

    @property
    def version(self) -> tuple[int, ...]:
        out = subprocess.run(
            [self.server_bin, "--version"], capture_output=True, text=True, check=True
        ).stdout
        number = out.split("v=", 1)[1].split()[0]
        return tuple(int(part) for part in number.split("."))

    def start(self) -> RedisClusterServers:
        for _ in range(NODES):
            port = _free_cluster_port()
            directory = tempfile.mkdtemp(prefix="agent-runner-cluster-")
            args = [
                self.server_bin,
                "--bind", LOOPBACK,
                "--port", str(port),
                "--dir", directory,
                "--cluster-enabled", "yes",
                "--cluster-config-file", os.path.join(directory, "nodes.conf"),
                "--cluster-node-timeout", "5000",
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--protected-mode", "no",
                "--loglevel", "warning",
            ]  # fmt: skip
            with open(os.path.join(directory, "redis.log"), "ab") as log:
                process = subprocess.Popen(
                    args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            self.nodes.append(port)
            self._dirs.append(directory)
            self._processes.append(process)
        for port, process in zip(self.nodes, self._processes, strict=True):
            self._wait_ping(port, process)
        nodes = [f"{LOOPBACK}:{port}" for port in self.nodes]
        command = [self.cli_bin, "--cluster", "create", *nodes, "--cluster-replicas", "0"]
        create = subprocess.run(
            [*command, "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        if create.returncode != 0:
            raise ServerUnavailable(f"redis-cli --cluster create failed: {create.stdout[-2000:]}")
        self._wait_ok()
        return self

    def _cli(self, port: int, *command: str) -> str:
        return subprocess.run(
            [self.cli_bin, "-h", LOOPBACK, "-p", str(port), *command],
            capture_output=True,
            text=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
        ).stdout

    def _wait_ping(self, port: int, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ServerUnavailable(f"redis-server exited at start: {self._log_tail(port)}")
            if self._cli(port, "PING").strip() == "PONG":
                return
            time.sleep(0.05)
        raise ServerUnavailable(f"cluster node {port} did not answer PING: {self._log_tail(port)}")

    def _wait_ok(self) -> None:
        """Until every node sees the cluster as ``ok`` with all slots assigned."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            infos = [self._cli(port, "CLUSTER", "INFO") for port in self.nodes]
            if all("cluster_state:ok" in info and "cluster_slots_ok:16384" in info
                   for info in infos):  # fmt: skip
                return
            time.sleep(0.1)
        raise ServerUnavailable("the test Redis Cluster did not reach cluster_state:ok")

    def flush(self) -> None:
        """FLUSHALL on every primary: a clean dataset for the next test."""
        for port in self.nodes:
            self._cli(port, "FLUSHALL")

    def _log_tail(self, port: int) -> str:
        directory = self._dirs[self.nodes.index(port)]
        try:
            return Path(directory, "redis.log").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def close(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
        for process in self._processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self._processes = []
        for directory in self._dirs:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """The session's three-node Redis Cluster."""
    try:
        cluster = RedisClusterServers()
    except ServerUnavailable as exc:
        _missing(str(exc))
    try:
        cluster.start()
    except (ServerUnavailable, subprocess.SubprocessError, OSError) as exc:
        cluster.close()
        _missing(f"could not start a Redis Cluster: {exc}")
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterServers) -> str:
    """The ``redis+cluster://`` URL of the session's cluster, every node flushed."""
    redis_cluster.flush()
    return redis_cluster.url
