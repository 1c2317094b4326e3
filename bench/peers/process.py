"""A driver subprocess seen from the orchestrator: send one JSON line, read one back."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["DriverError", "DriverProcess"]


class DriverError(RuntimeError):
    """A driver died, timed out or answered something that is not a protocol line."""


class DriverProcess:
    """A long-lived driver (``argv``) speaking the line protocol of ``driver_protocol.py``.

    Its stderr goes to a log file whose tail is quoted when the driver fails.
    """

    def __init__(
        self, name: str, argv: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self._log = tempfile.NamedTemporaryFile(
            prefix=f"bench-peer-{name}-", suffix=".log", delete=False
        )
        self.process = subprocess.Popen(
            list(argv), cwd=cwd, env=env, text=True, bufsize=1,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            start_new_session=True,
        )  # fmt: skip
        self._closed = False
        self._selector = selectors.DefaultSelector()
        assert self.process.stdout is not None
        self._selector.register(self.process.stdout, selectors.EVENT_READ)

    def request(self, payload: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        """Send ``payload`` and return the driver's reply.

        Raises:
            DriverError: the driver exited, did not answer within ``timeout`` seconds, or
                answered with something that is not JSON (the message quotes its stderr).
        """
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write(json.dumps(payload) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            raise DriverError(f"{self.name} driver exited:\n{self.log_tail()}") from None
        deadline = time.monotonic() + timeout
        while not self._selector.select(max(0.0, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                raise DriverError(
                    f"{self.name} driver did not answer {payload.get('op')!r} within "
                    f"{timeout:.0f} s:\n{self.log_tail()}"
                )
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=10)
            raise DriverError(
                f"{self.name} driver exited (code {self.process.returncode}):\n{self.log_tail()}"
            )
        try:
            reply: dict[str, Any] = json.loads(line)
        except ValueError:
            raise DriverError(f"{self.name} driver wrote {line[:200]!r}, not JSON") from None
        return reply

    def log_tail(self, chars: int = 3000) -> str:
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")[-chars:].strip() or "(no output)"

    def close(self) -> None:
        """Ask the driver to close its clients and exit; kill it if it does not. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.process.poll() is None:
            try:
                self.request({"op": "close"}, timeout=15)
                self.process.wait(timeout=10)
            except (DriverError, subprocess.TimeoutExpired, OSError):
                self.process.kill()
                self.process.wait(timeout=10)
        self._selector.close()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        self._log.close()
        os.unlink(self._log.name)
