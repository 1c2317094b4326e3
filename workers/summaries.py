"""The summary queue: ``agent_runner.summarize_session``, one session at a time, never backwards.

``summarize_session(app_name, user_id, session_id, *, filter_key="", force=False)`` summarises
what the session's stored summary does not cover yet (see :mod:`runner_core.summarizer`). Jobs
go to the session's shard queue (:mod:`workers.summary_routing`); shards give parallelism, and
correctness does not depend on them:

- **One job per session at a time**: a job runs only while it holds the session's summary lease
  in Redis (``SET NX PX`` with a random token, renewed by a heartbeat, deleted by a Lua
  compare-and-delete only by its holder). A job that finds the lease taken goes back to the
  queue with a short countdown (``retry``); it does not block its shard. A killed job's lease
  expires after ``AGENT_RUNNER_SUMMARY_LEASE_S``. A holder whose lease was lost (it stalled
  past the lease) stops at its next heartbeat.
- **Never backwards**: every store's ``put_summary`` is a compare-and-set on the summary's
  event count, so a slow job can never replace a summary covering more events.
- **Idempotent**: a job reads the session after taking the lease and summarises up to the
  newest event. Duplicate deliveries, requeues behind later jobs and retries find the work done
  (nothing new after the boundary, or the checks fail) and do nothing.
- **Time limit**: ``AGENT_RUNNER_SUMMARY_TIMEOUT_S`` bounds the read and the model call; past
  it the model call is cancelled and nothing is stored. Failed jobs are not retried: the next
  job of the session covers the same events.

Which apps are summarised: the agent factory of the app returns an agent with a ``summarizer``
attribute (a :class:`~runner_core.summarizer.Summarizer`). Run workers then call
:func:`maybe_enqueue_after_run` after each completed run; it enqueues a job when the checks pass.
If the broker cannot take the job, the job runs inline in the run worker (same lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from celery import Task
from kombu.exceptions import OperationalError

from runner_core.errors import ConfigurationError, InvalidRequestError
from runner_core.events import RunCompletionEvent
from runner_core.session import SessionKey
from runner_core.summarizer import Summarizer, run_summary_attempts
from runner_core.wire import SUMMARIZE_SESSION, session_digest, summary_lease_key
from session_backends.redis_target import AsyncRedis

from .app import app
from .runtime import WorkerRuntime, get_runtime
from .summary_routing import SummarySettings

__all__ = [
    "SUMMARIZE_SESSION",
    "SummaryJobOutcome",
    "SummaryLeases",
    "enqueue_summary",
    "maybe_enqueue_after_run",
    "run_summary_job",
    "summarize_session",
    "summarizer_for",
]

logger = logging.getLogger(__name__)

#: How often a job finding its session busy goes back to the queue before it is dropped (the
#: holder, or the next job of the session, covers its events).
MAX_BUSY_RETRIES = 200
_INLINE_WAIT_S = 0.2
_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}

# KEYS: lease. ARGV: token, lease ms. Renew only our own lease.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lease. ARGV: token. Delete only our own lease.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class SummaryLeases:
    """Per-session summary leases in Redis: ``{prefix}:summary-lease:{digest}``.

    Args:
        redis: an asyncio client (never closed here).
        prefix: the key prefix (the events prefix).
        lease_s: a lease's life without a renewal.
    """

    def __init__(self, redis: AsyncRedis, *, prefix: str, lease_s: float) -> None:
        self.redis = redis
        self.prefix = prefix
        self.lease_ms = max(1, int(lease_s * 1000))
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    def key(self, session: SessionKey) -> str:
        digest = session_digest(session.app_name, session.user_id, session.session_id)
        return summary_lease_key(digest, self.prefix)

    async def acquire(self, session: SessionKey) -> str | None:
        """Take the session's lease; its token, or None if another job holds it."""
        token = secrets.token_hex(16)
        taken = await self.redis.set(self.key(session), token, nx=True, px=self.lease_ms)
        return token if taken else None

    async def renew(self, session: SessionKey, token: str) -> bool:
        """Extend our lease; False if it is no longer ours."""
        return bool(await self._renew(keys=[self.key(session)], args=[token, self.lease_ms]))

    async def release(self, session: SessionKey, token: str) -> bool:
        """Give our lease back (a lease taken over by another job is left alone)."""
        return bool(await self._release(keys=[self.key(session)], args=[token]))


@dataclass(frozen=True, slots=True)
class SummaryJobOutcome:
    """What one job did.

    ``status``: ``stored`` (``event_count`` is the new boundary), ``not_due`` (nothing new, or
    the checks did not pass: the work was already done), ``superseded`` (a summary covering as
    many events was stored meanwhile), ``busy`` (another job holds the session), ``timeout``,
    ``model_error``, ``lease_lost``, ``no_session``, ``no_summarizer``, ``error`` (the store
    failed; the exception propagates). These describe the whole session's attempt (or the
    ``filter_key`` one); with ``AGENT_RUNNER_SUMMARY_PER_BRANCH`` on, ``branches`` maps each
    branch's filter key to its attempt's status.
    """

    status: str
    event_count: int | None = None
    detail: str | None = None
    branches: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status,
            "event_count": self.event_count,
            "detail": self.detail,
        }
        if self.branches:
            out["branches"] = dict(self.branches)
        return out


def summarizer_for(rt: WorkerRuntime, app_name: str) -> Summarizer | None:
    """The summarizer of ``app_name``'s agent (its ``summarizer`` attribute), or None.

    Raises:
        InvalidRequestError: no agent is configured for ``app_name``.
        ConfigurationError: the agent's ``summarizer`` is not a Summarizer.
    """
    agent = rt.agents.get(app_name)
    summarizer = getattr(agent, "summarizer", None)
    if summarizer is None or isinstance(summarizer, Summarizer):
        return summarizer
    raise ConfigurationError(
        f"the agent of app {app_name!r} has a summarizer attribute of type "
        f"{type(summarizer).__name__}; set it to a runner_core.Summarizer (or None)."
    )


class _Trace:
    """Job records for tests and benchmarks (``AGENT_RUNNER_SUMMARY_TRACE_KEY``); else off."""

    def __init__(self, rt: WorkerRuntime, key: str | None, session: SessionKey, job_id: str):
        self.rt = rt
        self.key = key
        self.base = {
            "session": f"{session.app_name}/{session.user_id}/{session.session_id}",
            "job": job_id,
            "attempt": secrets.token_hex(8),  # one lease holding (a job may run twice)
            "pid": os.getpid(),
        }

    async def record(self, phase: str, **fields: Any) -> None:
        if self.key is None:
            return
        entry = {**self.base, "phase": phase, "t": time.time(), **fields}
        await self.rt.redis.rpush(self.key, json.dumps(entry))


async def _summarize_under_lease(
    rt: WorkerRuntime,
    summarizer: Summarizer,
    session_key: SessionKey,
    *,
    filter_key: str,
    force: bool,
    timeout_s: float,
    per_branch: bool,
    trace: _Trace,
) -> SummaryJobOutcome:
    attempts = await run_summary_attempts(
        rt.sessions,
        summarizer,
        session_key,
        timeout_s=timeout_s,
        per_branch=per_branch,
        filter_key=filter_key,
        force=force,
    )
    for key, attempt in attempts:
        if attempt.status == "stored":
            fields: dict[str, Any] = {"event_count": attempt.event_count}
            if key:
                fields["filter_key"] = key
            await trace.record("stored", **fields)
    _, first = attempts[0]
    branches = {key: attempt.status for key, attempt in attempts[1:]}
    return SummaryJobOutcome(
        first.status, event_count=first.event_count, detail=first.detail, branches=branches
    )


async def _heartbeat(
    leases: SummaryLeases, session: SessionKey, token: str, work: asyncio.Task[Any]
) -> None:
    period = max(0.05, leases.lease_ms / 3000)
    while True:
        await asyncio.sleep(period)
        try:
            held = await leases.renew(session, token)
        except Exception as exc:  # a Redis blip: keep trying while the lease may still live
            logger.warning("summary lease renewal failed (%s); retrying", exc)
            continue
        if not held:
            logger.error("summary job lost its lease on %s; stopping it", session.session_id)
            work.cancel()
            return


async def run_summary_job(
    rt: WorkerRuntime,
    app_name: str,
    user_id: str,
    session_id: str,
    *,
    filter_key: str = "",
    force: bool = False,
    job_id: str = "",
    settings: SummarySettings | None = None,
    delivery_tag: str | None = None,
) -> SummaryJobOutcome:
    """One summary job on the worker's loop: take the lease, summarise, store, release.

    Raises:
        InvalidRequestError: a bad ID or an app no agent is configured for.
        SessionBackendError: the session store failed.
    """
    settings = settings or rt.summary_settings
    session_key = SessionKey(app_name, user_id, session_id)
    summarizer = summarizer_for(rt, app_name)
    if summarizer is None:
        return SummaryJobOutcome("no_summarizer")
    leases = SummaryLeases(rt.redis, prefix=rt.settings.events_prefix, lease_s=settings.lease_s)
    trace = _Trace(rt, settings.trace_key, session_key, job_id)
    token = await leases.acquire(session_key)
    if token is None:
        await trace.record("busy")
        return SummaryJobOutcome("busy")
    visible = asyncio.create_task(rt.keep_visible(delivery_tag))
    outcome = SummaryJobOutcome("error")
    try:
        await trace.record("start")
        work = asyncio.create_task(
            _summarize_under_lease(
                rt,
                summarizer,
                session_key,
                filter_key=filter_key,
                force=force,
                timeout_s=settings.timeout_s,
                per_branch=settings.per_branch,
                trace=trace,
            )
        )
        heartbeat = asyncio.create_task(_heartbeat(leases, session_key, token, work))
        try:
            await asyncio.wait({work})
        finally:
            heartbeat.cancel()
            if not work.done():  # we were cancelled ourselves (shutdown)
                work.cancel()
                await asyncio.wait({work})
        if work.cancelled():
            outcome = SummaryJobOutcome("lease_lost")
        else:
            outcome = work.result()
        return outcome
    finally:
        visible.cancel()
        with contextlib.suppress(Exception):
            await asyncio.shield(trace.record("end", status=outcome.status))
        with contextlib.suppress(Exception):
            await asyncio.shield(leases.release(session_key, token))


def _summarize_session(
    self: Task,
    app_name: str,
    user_id: str,
    session_id: str,
    *,
    filter_key: str = "",
    force: bool = False,
) -> dict[str, Any]:
    """Summarise a session's events not covered yet (see the module docstring).

    Returns the :class:`SummaryJobOutcome` as a dict. A job finding the session busy is
    retried with a short countdown; other failures are logged, not retried.

    Raises:
        InvalidRequestError: bad IDs or an unknown app. Never retried.
    """
    rt = get_runtime()
    settings = rt.summary_settings
    job_id = str(self.request.id)
    properties = getattr(self.request, "properties", None) or {}
    outcome = rt.run(
        run_summary_job(
            rt,
            app_name,
            user_id,
            session_id,
            filter_key=filter_key,
            force=force,
            job_id=job_id,
            settings=settings,
            delivery_tag=properties.get("delivery_tag"),
        ),
        timeout=settings.timeout_s + settings.lease_s + 30,
    )
    if outcome.status == "busy":
        retries = int(self.request.retries or 0)
        if retries >= MAX_BUSY_RETRIES:
            logger.warning(
                "summary job %s for session %s gave up waiting for the session", job_id, session_id
            )
            return SummaryJobOutcome("busy", detail="gave up").as_dict()
        countdown = min(0.2 * 2 ** min(retries, 5), 5.0) * random.uniform(0.75, 1.25)
        raise self.retry(countdown=countdown, max_retries=MAX_BUSY_RETRIES)
    if outcome.status in ("timeout", "model_error", "lease_lost"):
        logger.warning(
            "summary job %s for session %s: %s (%s)",
            job_id,
            session_id,
            outcome.status,
            outcome.detail,
        )
    return outcome.as_dict()


summarize_session: Task = app.task(
    name=SUMMARIZE_SESSION,
    bind=True,
    acks_late=True,
    ignore_result=True,
    throws=(InvalidRequestError,),
)(_summarize_session)


def enqueue_summary(
    app_name: str,
    user_id: str,
    session_id: str,
    *,
    force: bool = False,
    filter_key: str = "",
) -> str:
    """Queue a summary job for a session; returns the job (task) ID.

    Raises:
        InvalidRequestError: a bad ID.
        OperationalError: the broker cannot be reached (after a short retry). The job is not
            queued: call ``runner_core.create_session_summary`` to summarise synchronously, or
            rely on the next run of the session, whose job covers the same events.
    """
    SessionKey(app_name, user_id, session_id)  # validates, naming the field
    result = summarize_session.apply_async(
        args=(app_name, user_id, session_id),
        kwargs={"filter_key": filter_key, "force": force},
        retry=True,
        retry_policy=_PUBLISH_RETRY,
    )
    return str(result.id)


async def _due_after_run(rt: WorkerRuntime, app_name: str, user_id: str, session_id: str) -> bool:
    summarizer = summarizer_for(rt, app_name)
    if summarizer is None:
        return False
    session = await rt.sessions.get_session(app_name, user_id, session_id)
    return session is not None and summarizer.should_summarize(session)


async def _run_inline(
    rt: WorkerRuntime, app_name: str, user_id: str, session_id: str
) -> SummaryJobOutcome:
    settings = rt.summary_settings
    deadline = asyncio.get_running_loop().time() + settings.lease_s + settings.timeout_s
    while True:
        outcome = await run_summary_job(
            rt, app_name, user_id, session_id, job_id="inline", settings=settings
        )
        if outcome.status != "busy" or asyncio.get_running_loop().time() > deadline:
            return outcome
        await asyncio.sleep(_INLINE_WAIT_S)


def maybe_enqueue_after_run(rt: WorkerRuntime, completion: RunCompletionEvent) -> str | None:
    """After a completed run: queue a summary job if the app has a summarizer whose checks pass.

    Called by the run task in the task's thread. If the broker cannot take the job, the job
    runs inline here, under the same lease. Never raises: a summary that cannot be scheduled is
    logged, and the session's next run schedules one covering the same events.

    Returns:
        The job ID, or None when no job was queued.
    """
    if completion.status != "completed":
        return None
    app_name, user_id, session_id = completion.app_name, completion.user_id, completion.session_id
    try:
        if summarizer_for(rt, app_name) is None:
            return None  # the common case, answered here without a hop to the runtime's loop
        if not rt.run(_due_after_run(rt, app_name, user_id, session_id), timeout=30):
            return None
        try:
            return enqueue_summary(app_name, user_id, session_id)
        except (OperationalError, ConnectionError, OSError) as exc:
            logger.warning(
                "cannot queue a summary job for session %s (%s); running it inline",
                session_id,
                type(exc).__name__,
            )
        outcome = rt.run(_run_inline(rt, app_name, user_id, session_id))
        logger.info("inline summary of session %s: %s", session_id, outcome.status)
    except Exception:
        # The run itself is complete and published: a summary problem must not fail it.
        logger.exception("no summary scheduled for session %s", session_id)
    return None
