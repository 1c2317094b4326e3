"""One delivery of a run, on the worker's event loop: claim, run, publish, finish exactly once.

What a delivery of invocation ``I`` does, in order:

1. Watch for cancel requests of ``I`` (:mod:`workers.cancel_watch`), then claim the delivery in
   one round trip (:meth:`workers.session_lock.SessionLocks.claim`):

   - if ``I``'s ``runner.completion`` was already published (a redelivery after the run
     ended), return it: nothing runs, nothing is published;
   - if the session's live lease is ``I``'s own, this is a duplicate delivery of a run that is
     still going: wait for it to finish (or die) instead of starting it twice. Another run's
     lease is handled by ``multitask_strategy``; with ``enqueue`` the waiting run publishes one
     ``run.queued`` event (``waiting_for`` names the run ahead of it), so readers know why
     nothing happens yet;
   - else take the session and count the attempt. Past ``AGENT_RUNNER_MAX_ATTEMPTS`` (a run
     that keeps killing its workers) the run ends ``failed`` without running again.
2. Run the Runner with ``invocation_id=I`` and ``first_seq`` after the last published event: a
   redelivered run continues where it was (no event appended twice, completed tools not re-run)
   and subscribers see a gap-free ``seq``. A later attempt (the previous delivery died)
   publishes one ``run.restarted`` event before it goes on, so subscribers drop the partial
   reply of the dead attempt (docs/events.md, "Redelivery"). Every event is published as it
   comes; a heartbeat keeps the lease and the broker message alive; a cancel request stops
   the run.
3. Every write is fenced by the lease's token: publishes check the lease in their script, the
   session store checks its own fence (docs/workers.md, "Ownership and fencing"). When a write
   is refused or the heartbeat finds the lease granted to another delivery, this delivery is
   stale: it stops at once, writes nothing more and raises
   :class:`~runner_core.errors.FencedError` (the task turns it into ``Ignore``). A claim of an
   invocation ID bound to another (app, user, session) raises
   :class:`~runner_core.errors.InvocationOwnedError` before anything is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from runner_core.errors import FencedError, lone_surrogate, safe_text
from runner_core.events import (
    ErrorEvent,
    Event,
    EventError,
    EventNumbering,
    RunCompletionEvent,
    RunQueuedEvent,
    RunStatus,
)
from runner_core.runner import Runner, RunStream
from runner_core.session import SessionKey
from runner_core.tracing import TraceRecorder
from runner_core.wire import ID_RE, MAX_ID_LENGTH

from .bus import EventBusUnavailableError, Fence, owner_identity
from .requests import RunRequest, TaskID
from .runtime import WorkerRuntime
from .session_lock import Busy, Claimed, Lease
from .telemetry import current_trace_id, run_plugins, session_wait

__all__ = ["RunLabels", "execute_run", "failure_events", "publish_failure"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

AUTHOR = "agent-runner"
_POLL_S = (0.05, 0.1, 0.2, 0.3, 0.5)
#: How often a failure published before the run starts is tried again after a twin delivery
#: took its seq.
_BEFORE_START_ROUNDS = 5


async def _retrying(rt: WorkerRuntime, operation: Callable[[], Awaitable[T]]) -> T:
    """Run a bus operation, riding out a Redis outage for a bounded time."""
    deadline = asyncio.get_running_loop().time() + max(30.0, rt.settings.recovery_timeout_s)
    delay = 0.1
    while True:
        try:
            return await operation()
        except EventBusUnavailableError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            logger.warning("Redis unavailable for events; retrying in %.1f s", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def _redis_retrying(rt: WorkerRuntime, operation: Callable[[], Awaitable[T]]) -> T:
    async def call() -> T:
        try:
            return await operation()
        except (ConnectionError, TimeoutError, OSError) as exc:
            raise EventBusUnavailableError(str(exc)) from exc
        except Exception as exc:
            import redis.exceptions

            if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
                raise EventBusUnavailableError(str(exc)) from exc
            raise

    return await _retrying(rt, call)


@dataclass(frozen=True, slots=True)
class RunLabels:
    """Where a run belongs: its completion carries them, its owner key binds them."""

    app_name: str
    user_id: str
    session_id: str
    request_id: str | None = None

    @classmethod
    def of(
        cls, app_name: object, user_id: object, session_id: object, request_id: object = None
    ) -> RunLabels:
        """Labels from the fields of any request, valid or not, that an event can always carry:
        each ID only if it is a valid ID (else ``""``), ``request_id`` only if it is text UTF-8
        can encode, of at most 128 characters (else None). An invalid value is never echoed."""

        def valid(value: object) -> str:
            return value if isinstance(value, str) and ID_RE.fullmatch(value) else ""

        request = (
            request_id
            if isinstance(request_id, str)
            and len(request_id) <= MAX_ID_LENGTH
            and lone_surrogate(request_id) is None
            else None
        )
        return cls(valid(app_name), valid(user_id), valid(session_id), request)

    @property
    def identity(self) -> str:
        """The owner identity the invocation ID is bound to (:func:`workers.bus.owner_identity`)."""
        return owner_identity(self.app_name, self.user_id, self.session_id)


def _publishable(invocation_id: str) -> str:
    """``invocation_id``, or where a task ID that cannot name a stream publishes instead."""
    return TaskID.read(invocation_id).invocation_id


def failure_events(
    invocation_id: str,
    labels: RunLabels,
    error: EventError,
    *,
    status: RunStatus = "failed",
    after_seq: int | None = None,
) -> list[Event]:
    """The events that end a run that could not run: an ``error`` and a ``status`` completion
    (only the completion for ``cancelled``), numbered after ``after_seq`` (the newest event
    already published, None if none).

    Always JSON-encodable, whatever it is given: labels are kept only where valid
    (:meth:`RunLabels.of`), lone surrogates in the error are escaped, and an invocation ID
    that cannot name a stream is replaced as :class:`~workers.requests.TaskID` says.
    """
    invocation_id = _publishable(invocation_id)
    labels = RunLabels.of(labels.app_name, labels.user_id, labels.session_id, labels.request_id)
    error = EventError(
        type=safe_text(error.type),
        message=safe_text(error.message),
        code=None if error.code is None else safe_text(error.code),
    )
    events: list[Event] = []
    if status != "cancelled":
        events.append(ErrorEvent(invocation_id=invocation_id, author=AUTHOR, error=error))
    events.append(
        RunCompletionEvent(
            invocation_id=invocation_id,
            author=AUTHOR,
            status=status,
            error=error,
            app_name=labels.app_name,
            user_id=labels.user_id,
            session_id=labels.session_id,
            request_id=labels.request_id,
            trace_id=current_trace_id(),
        )
    )
    numbering = EventNumbering.after(after_seq)
    for event in events:
        numbering.stamp(event)
    return events


async def publish_failure(
    rt: WorkerRuntime,
    invocation_id: str,
    labels: RunLabels,
    error: EventError,
    *,
    status: RunStatus = "failed",
    fence: Fence | None = None,
    before_start: bool = False,
) -> RunCompletionEvent:
    """Publish an ``error`` event and a ``failed`` completion (only the completion for
    ``cancelled``) for a run that could not run (:func:`failure_events`), continuing the
    invocation's ``seq``; with ``fence`` (the delivery holds the session), only while its
    lease holds. With ``before_start`` (a request that never gets to claim a session, such as
    an invalid one), each event is published only while no delivery of the invocation took a
    session, checked atomically with the write, so such a request never writes into the stream
    of a run of the same invocation ID that is under way.

    Returns the completion (with ``before_start``, the run's own if it already has one).
    Nothing is appended to the session: the run never had it.

    Raises:
        FencedError: ``fence`` no longer holds, or (``before_start``) a delivery of the
            invocation took a session: the run is that delivery's. InvocationOwnedError: the
            ID is another's. Nothing more was written.
    """
    invocation_id = _publishable(invocation_id)
    for _round in range(_BEFORE_START_ROUNDS if before_start else 1):
        last = await _retrying(rt, lambda: rt.bus.last_seq(invocation_id))
        events = failure_events(invocation_id, labels, error, status=status, after_seq=last)
        completion = events[-1]
        assert completion.type == "runner.completion"
        identity = RunLabels.of(
            labels.app_name, labels.user_id, labels.session_id, labels.request_id
        ).identity
        if not before_start:
            for event in events:
                await _retrying(rt, partial(rt.bus.publish, event, identity=identity, fence=fence))
            return completion
        for event in events:
            publish = partial(rt.bus.publish_before_start, event, identity=identity)
            if not await _retrying(rt, publish):
                break
        else:
            return completion
        # Not published: the run has ended, a delivery of it started, or a twin of this
        # delivery took the next seq first (then go round again).
        done = await _retrying(rt, lambda: rt.bus.completion(invocation_id))
        if done is not None:
            return done
        if await _retrying(rt, partial(rt.bus.has_started, invocation_id)):
            break
    raise FencedError(
        f"run {invocation_id}: a delivery of this invocation ID has started; this delivery "
        "(which could not run) leaves the run to it and publishes nothing more."
    )


async def _release(rt: WorkerRuntime, lease: Lease, *, finished: bool) -> None:
    """Give the session back, riding out a Redis outage: a lease left behind would hold the
    session's next runs until it expired."""
    try:
        await asyncio.shield(
            _redis_retrying(rt, lambda: rt.locks.release(lease, finished=finished))
        )
    except Exception:
        logger.exception(
            "run %s could not release its session; the lease expires in %.0f s",
            lease.invocation_id,
            rt.locks.lease_ms / 1000,
        )


def _labels(request: RunRequest, session_id: str) -> RunLabels:
    return RunLabels(request.app_name, request.user_id, session_id, request.request_id)


async def execute_run(
    rt: WorkerRuntime, request: RunRequest, invocation_id: str, *, delivery_tag: str | None
) -> RunCompletionEvent:
    """Carry out one delivery of a run; return its ``runner.completion`` (see module doc)."""
    visibility = asyncio.create_task(rt.keep_visible(delivery_tag))
    try:
        with rt.cancels.watch(invocation_id) as cancelled:
            return await _execute(rt, request, invocation_id, cancelled)
    finally:
        visibility.cancel()


async def _execute(
    rt: WorkerRuntime, request: RunRequest, invocation_id: str, cancelled: asyncio.Event
) -> RunCompletionEvent:
    session_id = request.session_id or invocation_id
    key = SessionKey(request.app_name, request.user_id, session_id)
    async with session_wait(request.app_name):
        claimed = await _take_session(rt, request, key, invocation_id)
    if isinstance(claimed, RunCompletionEvent):
        return claimed
    lease = claimed.lease
    finished = False
    try:
        completion = await _run_with_lease(rt, request, key, claimed, cancelled)
        finished = True
        return completion
    except FencedError as exc:
        # Another delivery owns the run now: stop quietly, it finishes the run.
        logger.warning(
            "run %s: stale delivery (token %s) stops: %s", invocation_id, lease.token, exc
        )
        raise
    except Exception as exc:
        # Not a crash (those never get here) and not a shutdown (BaseException): the run cannot
        # go on. Tell subscribers, so nobody waits for a completion that will never come.
        logger.exception("run %s failed in the worker", invocation_id)
        finished = True
        return await publish_failure(
            rt,
            invocation_id,
            _labels(request, session_id),
            EventError(type="worker_error", message=f"{type(exc).__name__}: {exc}"),
            fence=rt.locks.fence(lease),
        )
    finally:
        await _release(rt, lease, finished=finished)


async def _run_with_lease(
    rt: WorkerRuntime,
    request: RunRequest,
    key: SessionKey,
    claimed: Claimed,
    cancelled: asyncio.Event,
) -> RunCompletionEvent:
    settings = rt.settings
    invocation_id = claimed.lease.invocation_id
    if claimed.attempt > settings.max_attempts:
        logger.error(
            "run %s: attempt %s > %s; failing it",
            invocation_id,
            claimed.attempt,
            settings.max_attempts,
        )
        return await publish_failure(
            rt,
            invocation_id,
            _labels(request, key.session_id),
            EventError(
                type="too_many_attempts",
                message=(
                    f"the run was started {settings.max_attempts} times and its worker died each "
                    "time (killed, out of memory, or crashed); it will not be retried. Check the "
                    "worker logs for what the run was doing, then submit it again."
                ),
            ),
            fence=rt.locks.fence(claimed.lease),
        )
    if claimed.attempt > 1:
        logger.warning("run %s: recovering (attempt %s)", invocation_id, claimed.attempt)
    if claimed.cancel_requested:
        cancelled.set()
    agent = rt.agents.get(request.app_name)
    plugins = run_plugins()
    if rt.traces is not None:
        # Made for this run: it writes the trace fenced with the run's lease token. First, so
        # it sees each model request before other plugins may answer it.
        plugins.insert(0, TraceRecorder(rt.traces, agent=agent, fence=claimed.lease.token))
    runner = Runner(
        request.app_name,
        agent,
        session_service=rt.sessions,
        plugins=plugins,
        artifact_service=rt.artifacts,
        memory_service=rt.memory,
    )
    last = claimed.last_seq
    stream = runner.run(
        request.user_id,
        key.session_id,
        request.message,
        messages=request.messages,
        resume=request.resume,
        tool_confirmations=request.tool_confirmations,
        request_id=request.request_id,
        invocation_id=invocation_id,
        first_seq=0 if last is None else last + 1,
        timeout_s=request.run_timeout_s or settings.run_timeout_s,
        fence=claimed.lease.token,
        # From the second attempt on, the run hands out run.restarted before it goes on (after
        # any stored event the dead attempt did not publish), so readers drop its partial reply.
        # Published by _pump like every other event, so it is fenced like them.
        attempt=claimed.attempt,
        run_config=request.run_config,
    )
    identity = _labels(request, key.session_id).identity
    return await _pump(rt, stream, claimed.lease, cancelled, identity)


async def _pump(
    rt: WorkerRuntime, stream: RunStream, lease: Lease, cancelled: asyncio.Event, identity: str
) -> RunCompletionEvent:
    """Publish the run's events until its completion and return it.

    Raises:
        FencedError: another delivery owns the run (the store or a publish refused a write,
            or the heartbeat found the lease granted to it); nothing more was written.
    """
    lost = asyncio.Event()
    helpers = [
        asyncio.create_task(_cancel_when(cancelled, stream)),
        asyncio.create_task(_heartbeat(rt, stream, lease, lost)),
    ]
    fence = rt.locks.fence(lease)
    try:
        async for event in stream:
            if lost.is_set():
                break  # another delivery owns the run now: publish nothing more
            # With the events the run handed out meanwhile (streamed deltas, which do not
            # wait for the reader), in one round trip.
            events = [event, *stream.ready()]
            await _publish(rt, events, lease, fence, identity)
            if events[-1].type == "runner.completion":
                return events[-1]
        # Only a lost lease ends the stream early (it always ends with a completion or raises).
        raise FencedError(
            f"run {lease.invocation_id} lost its session lease (token {lease.token}) to another "
            "delivery; it stopped without publishing more."
        )
    finally:
        for helper in helpers:
            helper.cancel()
        await stream.aclose()


async def _publish(
    rt: WorkerRuntime, events: list[Event], lease: Lease, fence: Fence, identity: str
) -> None:
    """Publish events of the run, in order, while this delivery holds its lease.

    A lease that expired with nobody else granted the session (a pause, a Redis blip) is taken
    back by the heartbeat script and the events published; otherwise the FencedError stands.
    """
    publish = partial(rt.bus.publish_many, events, identity=identity, fence=fence)
    try:
        await _retrying(rt, publish)
    except FencedError:
        if not await _redis_retrying(rt, lambda: rt.locks.heartbeat(lease)):
            raise
        logger.warning("run %s took its expired session lease back", lease.invocation_id)
        await _retrying(rt, publish)


async def _cancel_when(cancelled: asyncio.Event, stream: RunStream) -> None:
    await cancelled.wait()
    stream.cancel()


async def _heartbeat(
    rt: WorkerRuntime, stream: RunStream, lease: Lease, lost: asyncio.Event
) -> None:
    while True:
        await asyncio.sleep(rt.settings.heartbeat_s)
        try:
            held = await rt.locks.heartbeat(lease)
        except Exception as exc:
            logger.warning("session lease heartbeat failed (%s); retrying", exc)
            continue
        if not held:
            logger.error(
                "run %s lost its session lease (token %s) to another delivery; stopping it quietly",
                lease.invocation_id,
                lease.token,
            )
            lost.set()
            stream.cancel()
            return


async def _take_session(
    rt: WorkerRuntime, request: RunRequest, key: SessionKey, invocation_id: str
) -> Claimed | RunCompletionEvent:
    """The claimed session, or the completion to return instead (see module doc, step 1)."""
    strategy = request.multitask_strategy
    interrupted: set[str] = set()
    announced = False
    polls = 0
    while True:
        claimed = await _redis_retrying(
            rt, lambda: rt.locks.claim(key, invocation_id, wait=strategy != "reject")
        )
        if isinstance(claimed, RunCompletionEvent):
            logger.info(
                "run %s already completed (%s); not running it again",
                invocation_id,
                claimed.status,
            )
        if not isinstance(claimed, Busy):
            return claimed
        outcome = await _while_busy(rt, request, key, invocation_id, claimed, interrupted)
        if outcome is not None:
            with contextlib.suppress(Exception):
                await rt.locks.leave(key, invocation_id)
            return outcome
        if not announced and claimed.holder != invocation_id:
            # The worker's record of the run's place in the line, which goes by ticket
            # (docs/workers.md, "Order of runs waiting on one session").
            logger.info(
                "run %s waits for its session behind run %s (%s); line ticket %s",
                invocation_id,
                claimed.holder,
                claimed.reason,
                claimed.ticket,
            )
            if strategy == "enqueue":
                await _announce_queued(rt, request, key, invocation_id, claimed.holder)
            announced = True
        await asyncio.sleep(_POLL_S[min(polls, len(_POLL_S) - 1)])
        polls += 1


async def _announce_queued(
    rt: WorkerRuntime, request: RunRequest, key: SessionKey, invocation_id: str, holder: str
) -> None:
    """Tell subscribers that the run waits behind ``holder``: one ``run.queued`` event, the
    next ``seq`` of the invocation (the claim reports it, so the run continues after it).

    Not published if a delivery of the run started meanwhile (:meth:`EventBus.publish_before_start`
    checks that atomically), so it can never take a ``seq`` the run itself will use.
    """
    labels = _labels(request, key.session_id)
    last = await _retrying(rt, lambda: rt.bus.last_seq(invocation_id))
    event = RunQueuedEvent(invocation_id=invocation_id, author=AUTHOR, waiting_for=holder)
    EventNumbering.after(last).stamp(event)
    await _retrying(rt, partial(rt.bus.publish_before_start, event, identity=labels.identity))


async def _while_busy(
    rt: WorkerRuntime,
    request: RunRequest,
    key: SessionKey,
    invocation_id: str,
    busy: Busy,
    interrupted: set[str],
) -> RunCompletionEvent | None:
    """What to do this time round while the session is not ours; None means keep waiting."""
    labels = _labels(request, key.session_id)
    if busy.holder == invocation_id:
        return None  # a duplicate delivery of our own live run: wait for it
    if busy.cancel_requested:
        return await publish_failure(
            rt,
            invocation_id,
            labels,
            EventError(type="cancelled", message="cancelled before the run started."),
            status="cancelled",
        )
    if request.multitask_strategy == "reject":
        return await publish_failure(
            rt,
            invocation_id,
            labels,
            EventError(
                type="session_busy",
                code="session_busy",
                message=(
                    f"session {key.session_id!r} is busy with run {busy.holder} and this run "
                    "used multitask_strategy='reject'. Wait for that run's completion and "
                    "submit again, or use 'enqueue' (wait your turn) or 'interrupt' (cancel it)."
                ),
            ),
        )
    if (
        request.multitask_strategy == "interrupt"
        and busy.reason != "queued"
        and busy.holder not in interrupted
    ):
        logger.info("run %s interrupts run %s on its session", invocation_id, busy.holder)
        await _retrying(rt, lambda: rt.bus.request_cancel(busy.holder))
        interrupted.add(busy.holder)
    return None
