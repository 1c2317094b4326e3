"""In-process background summaries: a Runner summarises its sessions without Celery.

Give a Runner a :class:`BackgroundSummaries`::

    agent = LLMAgent("assistant", model=model, summarizer=Summarizer(...))
    runner = Runner("app", agent, background_summaries=BackgroundSummaries(agent.summarizer))

After each run that ends ``completed``, the Runner hands out the completion first, then asks
for a summary job on the session (:meth:`BackgroundSummaries.submit`, which never waits). A
few asyncio tasks (``workers``) take jobs from a bounded queue; each job is one
:func:`~runner_core.summarizer.run_summary_attempts`, the same code as the Celery shard queues:
it reads the session, runs the summarizer's checks, summarises and stores.

- **One job per session at a time**: a session with a job queued or running gets no second
  one; its new events are covered by the job of its next run.
- **Never backwards**: stores' ``put_summary`` is a compare-and-set on the event count.
- **Never blocking**: a full queue drops the job with a log line and counts it in
  :attr:`BackgroundSummaries.dropped`; the session's next completed run asks again.
- **Time limit**: a job past ``job_timeout_s`` is cancelled and stores nothing.
- **Per branch** (``per_branch=True``): a job also summarises each branch of a parallel agent
  found in the session (filter key ``branch:{branch}``), each with the same checks; an agent on
  a branch with ``add_session_summary`` is given its branch's summary.
- **Closing**: :meth:`BackgroundSummaries.close` (called by ``Runner.close``) takes no more
  jobs, waits up to ``drain_timeout_s`` for the queued and running ones, then cancels the rest.

Use the Celery shard queues (``workers.summaries``) when runs execute in Celery workers; use
this when a program embeds the Runner. Both are in docs/summaries.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .errors import InvalidRequestError
from .session import SessionKey, SessionService
from .summarizer import Summarizer, run_summary_attempts

__all__ = [
    "DEFAULT_DRAIN_TIMEOUT_S",
    "DEFAULT_JOB_TIMEOUT_S",
    "DEFAULT_QUEUE_SIZE",
    "DEFAULT_WORKERS",
    "BackgroundSummaries",
]

logger = logging.getLogger(__name__)

#: The defaults of tRPC-Agent-Go's session summaries (``WithAsyncSummaryNum``,
#: ``WithSummaryQueueSize``, ``WithSummaryJobTimeout``).
DEFAULT_WORKERS = 3
DEFAULT_QUEUE_SIZE = 100
DEFAULT_JOB_TIMEOUT_S = 30.0
#: How long :meth:`BackgroundSummaries.close` waits for queued and running jobs.
DEFAULT_DRAIN_TIMEOUT_S = 30.0

_Job = tuple[SessionService, SessionKey]


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError(f"{name} must be an int >= 1, got {value!r}.")
    return value


def _positive_seconds(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidRequestError(f"{name} must be a number of seconds > 0, got {value!r}.")
    return float(value)


class BackgroundSummaries:
    """Summarises sessions in background asyncio tasks of the Runner's event loop.

    Args:
        summarizer: what summarises (usually the root agent's ``summarizer``).
        workers: how many jobs run at once (on different sessions).
        queue_size: how many jobs may wait; past it, new jobs are dropped and counted.
        job_timeout_s: the limit on one job's session read and model call.
        drain_timeout_s: how long :meth:`close` waits for queued and running jobs before it
            cancels them.
        per_branch: also summarise each branch of the session, one attempt per branch after
            the whole session's (each attempt has ``job_timeout_s``).

    Attributes:
        dropped: jobs dropped because the queue was full.
        stored: summaries stored.
        failed: jobs that timed out, whose model failed, or whose store failed (logged).

    Raises:
        InvalidRequestError: a summarizer that is not a Summarizer, or a bad number.
    """

    def __init__(
        self,
        summarizer: Summarizer,
        *,
        workers: int = DEFAULT_WORKERS,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        job_timeout_s: float = DEFAULT_JOB_TIMEOUT_S,
        drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
        per_branch: bool = False,
    ) -> None:
        if not isinstance(summarizer, Summarizer):
            raise InvalidRequestError(
                "BackgroundSummaries(summarizer) needs a runner_core.Summarizer, got "
                f"{type(summarizer).__name__}; pass the agent's summarizer."
            )
        self.summarizer = summarizer
        self.workers = _positive_int(workers, "workers")
        self.queue_size = _positive_int(queue_size, "queue_size")
        self.job_timeout_s = _positive_seconds(job_timeout_s, "job_timeout_s")
        self.drain_timeout_s = _positive_seconds(drain_timeout_s, "drain_timeout_s")
        self.per_branch = bool(per_branch)
        self.dropped = 0
        self.stored = 0
        self.failed = 0
        self._queue: asyncio.Queue[_Job] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: Sessions with a job queued or running: they get no second one.
        self._pending: set[SessionKey] = set()
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"BackgroundSummaries(workers={self.workers}, queue_size={self.queue_size}, "
            f"job_timeout_s={self.job_timeout_s:g}, dropped={self.dropped})"
        )

    def submit(self, service: SessionService, session: SessionKey) -> bool:
        """Ask for a summary job on ``session``; never waits, never raises.

        Must be called from the event loop the jobs are to run on (the workers start there
        on first use).

        Returns:
            True when a job was queued; False when the session already has one queued or
            running, the queue is full (counted in :attr:`dropped`), or this is closed.
        """
        if self._closed:
            logger.debug("background summaries are closed; no job for %s", session.session_id)
            return False
        if session in self._pending:
            return False
        queue = self._start()
        try:
            queue.put_nowait((service, session))
        except asyncio.QueueFull:
            self.dropped += 1
            logger.warning(
                "summary queue full (%d jobs); dropped the job of session %s (its next run "
                "asks again)",
                self.queue_size,
                session.session_id,
            )
            return False
        self._pending.add(session)
        return True

    def _start(self) -> asyncio.Queue[_Job]:
        if self._queue is None:
            self._queue = asyncio.Queue(maxsize=self.queue_size)
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self._work(), name=f"background-summaries-{index}")
                for index in range(self.workers)
            ]
        return self._queue

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            service, session = await self._queue.get()
            try:
                await self._run_job(service, session)
            finally:
                self._pending.discard(session)
                self._queue.task_done()

    async def _run_job(self, service: SessionService, session: SessionKey) -> None:
        try:
            attempts = await run_summary_attempts(
                service,
                self.summarizer,
                session,
                timeout_s=self.job_timeout_s,
                per_branch=self.per_branch,
            )
        except Exception:
            self.failed += 1
            logger.exception("summary job of session %s failed", session.session_id)
            return
        for _key, attempt in attempts:
            self._count(session, attempt.status, attempt.detail)

    def _count(self, session: SessionKey, status: str, detail: str | None) -> None:
        if status == "stored":
            self.stored += 1
        elif status in ("timeout", "model_error"):
            self.failed += 1
            logger.warning("summary job of session %s: %s (%s)", session.session_id, status, detail)

    async def close(self) -> None:
        """Take no more jobs; wait up to ``drain_timeout_s`` for the queued and running
        ones, then cancel what is left (a cancelled job stores nothing). Idempotent."""
        self._closed = True
        if self._queue is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.drain_timeout_s):
                await self._queue.join()
        if self._queue.qsize() or self._pending:
            logger.warning(
                "closing background summaries: cancelled %d unfinished job(s)",
                len(self._pending),
            )
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._pending.clear()
