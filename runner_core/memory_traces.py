"""``InMemoryTraceStore``: traces in this process's memory.

Real shipped code, held to the same conformance suite as the Redis and PostgreSQL trace stores
(``tests/test_trace_conformance.py``). Traces are kept JSON-encoded, as the other stores keep
them, so what a caller gets back never aliases what is stored. With ``ttl`` a trace expires
that many seconds after its last write (hidden at once, dropped on the next write of any
trace).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from .session import SessionKey, validate_identifier
from .store_support import check_fence, check_ttl
from .traces import (
    Step,
    Trace,
    check_owner,
    decode_step,
    decode_trace,
    trace_fenced,
    trace_not_found,
    write_step_by_step,
)

__all__ = ["InMemoryTraceStore"]


@dataclass(slots=True)
class _Stored:
    header: str
    #: (app, user, session): whose trace it is.
    owner: tuple[str, str, str]
    fence: int | None = None
    steps: dict[str, str] = field(default_factory=dict)  # insertion-ordered
    expires_at: float | None = None


class InMemoryTraceStore:
    """Traces in memory (this process only).

    Args:
        ttl: seconds (or a timedelta) a trace is kept after its last write; None or 0 keeps
            it until its session's traces are deleted. Give it the session store's
            ``session_ttl`` to keep traces as long as their sessions.
    """

    def __init__(self, *, ttl: float | timedelta | None = None) -> None:
        self.ttl = check_ttl(ttl, "ttl")
        self._traces: dict[str, _Stored] = {}

    def __repr__(self) -> str:
        return f"InMemoryTraceStore({len(self._traces)} traces)"

    def _live(self, invocation_id: str) -> _Stored | None:
        stored = self._traces.get(invocation_id)
        if stored is not None and stored.expires_at is not None:
            if stored.expires_at <= time.monotonic():
                del self._traces[invocation_id]
                return None
        return stored

    def _touch(self, stored: _Stored) -> None:
        if self.ttl is not None:
            stored.expires_at = time.monotonic() + self.ttl

    def _sweep(self) -> None:
        if self.ttl is None:
            return
        now = time.monotonic()
        for invocation_id in [
            i for i, s in self._traces.items() if s.expires_at is not None and s.expires_at <= now
        ]:
            del self._traces[invocation_id]

    def _writable(self, invocation_id: str, fence: int | None) -> _Stored:
        validate_identifier(invocation_id, "invocation_id")
        if fence is not None:
            check_fence(fence)
        stored = self._live(invocation_id)
        if stored is None:
            raise trace_not_found(invocation_id)
        if fence is not None and stored.fence != fence:
            raise trace_fenced(invocation_id, fence, stored.fence)
        return stored

    async def start(self, trace: Trace, *, fence: int | None = None) -> bool:
        SessionKey(trace.app_name, trace.user_id, trace.session_id)
        validate_identifier(trace.invocation_id, "invocation_id")
        if fence is not None:
            check_fence(fence)
        self._sweep()
        stored = self._live(trace.invocation_id)
        if stored is None:
            stored = _Stored(trace.header().to_json(), _owner(trace), fence)
            self._traces[trace.invocation_id] = stored
            self._touch(stored)
            return True
        header = decode_trace(stored.header, f"trace {trace.invocation_id}")
        check_owner(header, trace)
        if fence is not None:
            if stored.fence is not None and stored.fence > fence:
                raise trace_fenced(trace.invocation_id, fence, stored.fence)
            stored.fence = fence
        header.attempts += 1
        header.status = "running"
        header.ended_at = None
        stored.header = header.to_json()
        self._touch(stored)
        return False

    async def add_step(self, invocation_id: str, step: Step, *, fence: int | None = None) -> bool:
        stored = self._writable(invocation_id, fence)
        if step.step_id in stored.steps:
            return False
        stored.steps[step.step_id] = step.to_json()
        self._touch(stored)
        return True

    async def finish(self, trace: Trace, *, fence: int | None = None) -> None:
        stored = self._writable(trace.invocation_id, fence)
        if stored.owner != _owner(trace):
            check_owner(decode_trace(stored.header, f"trace {trace.invocation_id}"), trace)
        stored.header = trace.header().to_json()
        self._touch(stored)

    async def write(
        self,
        invocation_id: str,
        steps: Sequence[Step],
        *,
        header: Trace | None = None,
        fence: int | None = None,
        start: Trace | None = None,
    ) -> None:
        await write_step_by_step(
            self, invocation_id, steps, header=header, fence=fence, start=start
        )

    async def get(self, invocation_id: str) -> Trace | None:
        validate_identifier(invocation_id, "invocation_id")
        stored = self._live(invocation_id)
        if stored is None:
            return None
        trace = decode_trace(stored.header, f"trace {invocation_id}")
        trace.steps = [
            decode_step(raw, f"trace {invocation_id} step {step_id}")
            for step_id, raw in stored.steps.items()
        ]
        return trace

    async def delete_session(self, app_name: str, user_id: str, session_id: str) -> int:
        key = SessionKey(app_name, user_id, session_id)
        doomed = [
            invocation_id
            for invocation_id, stored in self._traces.items()
            if stored.owner == (key.app_name, key.user_id, key.session_id)
        ]
        for invocation_id in doomed:
            del self._traces[invocation_id]
        return len(doomed)

    async def close(self) -> None:
        return None


def _owner(trace: Trace) -> tuple[str, str, str]:
    return trace.app_name, trace.user_id, trace.session_id
