"""The producer's side: submit runs, read their events, cancel them, read the artifacts runs
saved (:func:`list_artifacts`, :func:`artifact_versions`, :func:`load_artifact`, from
:mod:`workers.artifacts`).

Reading events: :func:`stream_events` reads the invocation's stream (``XREAD`` from the
beginning, then ``XREAD BLOCK`` from the last entry it saw), not the pub/sub channel. Pub/sub is
at-most-once (a subscriber that connects late, or reconnects, misses what was published
meanwhile); the stream keeps every event until it expires, so one loop covers all cases:

- subscribed before the run started: the first ``XREAD BLOCK`` waits for the first entry;
- joined late: the entries already written are read first, then it follows live;
- reconnecting: pass ``after_seq`` (the last ``seq`` you processed) and nothing is repeated;
- a repeated ``seq`` (an event published twice) is dropped; a missing one raises.

It stops after ``runner.completion``, which every run ends with.

A worker that dies mid-reply has its run redelivered, and the new attempt calls the model
again: its first event is ``run.restarted``, after which the ``message.delta`` text published
after its ``discard_after_seq`` is void. :class:`ReplyText` assembles replies by those rules
(docs/events.md, "Redelivery") for readers that want each reply once.

A mistyped ID would otherwise be waited for forever: with ``known_wait`` the readers give up
with :class:`UnknownInvocationError` unless the invocation becomes *known* within that many
seconds (a worker took it or published for it, or :func:`submit` recorded sending it; see
:func:`workers.bus.known_keys`). ``submit`` records the ID in the events Redis just before it
sends the task, so a run still waiting in the queue is known.

On Redis Cluster (``redis+cluster://``) a run's stream carries its session's hash tag, so a
reader first finds the session through the invocation's locator (:mod:`workers.locator`), which
``submit`` writes instead of the submitted marker; until it exists the run is not known.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis
import redis.exceptions
from kombu.exceptions import OperationalError

from runner_core.errors import AgentRunnerError, InvalidRequestError
from runner_core.events import Event, RunCompletionEvent
from runner_core.messages import Message
from runner_core.run_config import RunConfig
from runner_core.wire import (
    DEFAULT_RUNS_QUEUE,
    ID_RE,
    OWNER_TTL_S,
    SUBMIT_RUN,
    SUBMITTED_TTL_S,
    known_keys,
    locator_key,
    session_digest,
    session_tag,
    stream_key,
    submitted_key,
)
from session_backends.redis_target import async_client, is_cluster_url, sync_client

from .artifacts import (
    aartifact_versions,
    alist_artifacts,
    aload_artifact,
    artifact_versions,
    list_artifacts,
    load_artifact,
)
from .bus import (
    CancelScript,
    EventBus,
    EventBusError,
    UnknownInvocationError,
    decode_entry,
    describe_redis,
    invocation_owned,
    owner_identity,
    unavailable,
    unknown_invocation,
)
from .locator import BIND_LUA
from .settings import Settings, mask_url

if TYPE_CHECKING:
    from runner_core.traces import Trace

__all__ = [
    "BrokerUnavailableError",
    "EventGapError",
    "EventStreamTimeout",
    "ReplyText",
    "UnknownInvocationError",
    "aartifact_versions",
    "acancel",
    "aget_trace",
    "alist_artifacts",
    "aload_artifact",
    "artifact_versions",
    "astream_events",
    "cancel",
    "events_redis_url",
    "get_trace",
    "list_artifacts",
    "load_artifact",
    "stream_events",
    "submit",
    "validate_invocation_id",
]

#: Longest single XREAD BLOCK; waiting longer is done in several blocks.
_BLOCK_SLICE_S = 10.0
#: Entries read per XREAD.
_READ_COUNT = 500
#: Socket timeout of the reading connection: longer than one XREAD BLOCK.
_SOCKET_TIMEOUT_S = _BLOCK_SLICE_S + 10.0
#: While an invocation is not known yet, how often to look again (``known_wait``).
_KNOWN_POLL_S = 0.25


class BrokerUnavailableError(AgentRunnerError, ConnectionError):
    """The Celery broker could not be reached, so the run was not submitted."""


class EventStreamTimeout(EventBusError, TimeoutError):
    """No event arrived within the ``timeout`` given to :func:`stream_events`."""


class EventGapError(EventBusError):
    """Events are missing from the stream (trimmed by ``MAXLEN`` or expired); never skipped."""


def events_redis_url() -> str:
    """The Redis that carries events: ``AGENT_RUNNER_REDIS_URL``, else the broker URL.

    Raises:
        ConfigurationError: a bad setting, naming the variable.
    """
    return Settings.from_env().redis_url


def _events_target(redis_url: str | None, prefix: str | None) -> tuple[str, str]:
    """The events Redis URL and key prefix: the arguments, else the settings, read once per
    call (and not at all when both are given)."""
    if redis_url and prefix:
        return redis_url, prefix
    settings = Settings.from_env()
    return redis_url or settings.redis_url, prefix or settings.events_prefix


def validate_invocation_id(invocation_id: object) -> str:
    """Check an invocation ID (a Celery task ID: 1-128 letters, digits or ``._:@+=-``).

    Raises:
        InvalidRequestError: naming ``invocation_id`` and what a valid one looks like.
    """
    if not isinstance(invocation_id, str) or not ID_RE.fullmatch(invocation_id):
        raise InvalidRequestError(
            f"invocation_id {invocation_id!r} is not a valid invocation ID. Pass the ID that "
            "submit() returned (the Celery task ID, e.g. 3f2b6c1e-...)."
        )
    return invocation_id


# --- submitting ----------------------------------------------------------------------------


def submit(
    app_name: str,
    user_id: str,
    session_id: str,
    message: Any,
    *,
    invocation_id: str | None = None,
    **options: Any,
) -> str:
    """Validate a run request and send it to the run workers.

    Args:
        app_name, user_id, session_id: which agent and which conversation.
        message: text, an OpenAI-style message dict, or a :class:`~runner_core.messages.Message`.
        invocation_id: the ID to give the run (default: a fresh UUID). A caller that must
            record something under the ID before the run can start (the HTTP gateway's owner
            and webhook records) chooses it; it must be new and valid.
        **options: the other fields of ``submit_run`` (``messages``, ``resume``,
            ``tool_confirmations``, ``request_id``, ``multitask_strategy``, ``run_timeout_s``,
            ``run_config``). ``run_config`` is a :class:`~runner_core.run_config.RunConfig` or
            a dict of its fields; it is sent as a JSON object, so ``runtime_state`` must hold
            JSON values only.

    Returns:
        The invocation ID (the Celery task ID); read the run with :func:`stream_events`.
        It is recorded in the events Redis (``{prefix}:submitted:{id}``, kept a day) just
        before the task is sent, so readers know the run exists while it waits in the queue.

    Raises:
        InvalidRequestError: the request is invalid; nothing was sent. The message names the field.
        EventBusUnavailableError: the events Redis cannot be reached; nothing was sent.
        BrokerUnavailableError: the broker cannot be reached; nothing was sent.
    """
    from .app import app
    from .requests import RunRequest

    if isinstance(message, Message):
        message = message.to_openai()
    if isinstance(options.get("run_config"), RunConfig):
        # As the dict it travels as, so the request checks its values like any sender's.
        options["run_config"] = options["run_config"].model_dump(exclude_defaults=True)
    settings = Settings.from_env()  # read once per submit: size limit, queue, events Redis
    fields = {"app_name": app_name, "user_id": user_id, "session_id": session_id}
    request = RunRequest.from_task_arguments(
        (), {**fields, "message": message, **options}, max_message_chars=settings.max_message_chars
    )
    args, kwargs = request.task_arguments()
    invocation_id = str(uuid.uuid4()) if invocation_id is None else invocation_id
    validate_invocation_id(invocation_id)
    session = (request.app_name, request.user_id, request.session_id or invocation_id)
    _record_submission(settings, invocation_id, session)
    try:
        # The queue is named explicitly, as any other Celery client must name it: a client
        # without this app's routes would otherwise send to Celery's default queue, which no
        # run worker consumes.
        result = app.send_task(
            SUBMIT_RUN, args=args, kwargs=kwargs, queue=settings.queue, task_id=invocation_id
        )
    except OperationalError as exc:
        _record_submission(settings, invocation_id, session, forget=True)
        raise BrokerUnavailableError(
            f"cannot send the run to the broker at {mask_url(str(app.conf.broker_url))} ({exc}). "
            "Start Redis there, or point AGENT_RUNNER_BROKER_URL at a running Redis."
        ) from exc
    return str(result.id)


@functools.lru_cache(maxsize=8)
def _marker_client(url: str) -> redis.Redis | redis.cluster.RedisCluster:
    """One pooled client per events Redis for the submission markers: a producer submitting
    many runs reuses its connections instead of opening one per run."""
    return sync_client(url, variable="AGENT_RUNNER_REDIS_URL", socket_timeout=_SOCKET_TIMEOUT_S)


def _record_submission(
    settings: Settings,
    invocation_id: str,
    session: tuple[str, str, str],
    *,
    forget: bool = False,
) -> None:
    """Mark ``invocation_id`` as submitted in the events Redis (``forget``: unmark it, best
    effort, after the broker refused the task). On Redis Cluster the mark is the locator,
    binding the ID to its session (app, user, session ID).

    Raises:
        InvocationOwnedError: on a cluster, the ID is bound to another session already.
    """
    client = _marker_client(settings.redis_url)
    cluster = is_cluster_url(settings.redis_url)
    if cluster:
        key = locator_key(invocation_id, settings.events_prefix)
    else:
        key = submitted_key(invocation_id, settings.events_prefix)
    try:
        if forget:
            client.delete(key)
        elif cluster:
            bind = client.register_script(BIND_LUA)
            other = bind(keys=[key], args=[session_digest(*session), OWNER_TTL_S])
            if other:
                raise invocation_owned(invocation_id, other, owner_identity(*session))
        else:
            client.set(key, "1", ex=SUBMITTED_TTL_S)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        if not forget:
            raise unavailable(client, exc) from exc
    except redis.exceptions.RedisError as exc:
        if not forget:
            raise EventBusError(f"Redis at {describe_redis(client)} failed: {exc}") from exc


# --- reading events ------------------------------------------------------------------------


class _StreamCursor:
    """Turns stream entries into events: each ``seq`` once, in order, up to the completion."""

    def __init__(self, invocation_id: str, key: str | None, after_seq: int | None) -> None:
        if after_seq is not None and (not isinstance(after_seq, int) or after_seq < 0):
            raise InvalidRequestError(
                f"after_seq must be the seq of the last event you processed (>= 0), "
                f"got {after_seq!r}."
            )
        self.invocation_id = invocation_id
        #: The stream; None on Redis Cluster until the locator names the run's session.
        self.key = key
        self.last_entry_id = "0-0"
        self.next_seq = 0 if after_seq is None else after_seq + 1
        self.done = False

    def feed(self, response: Any) -> list[Event]:
        events: list[Event] = []
        for _stream, entries in response or []:
            for entry_id, fields in entries:
                self.last_entry_id = _text(entry_id)
                if self.done:
                    break
                event = decode_entry(fields, where=f"{self.key} {self.last_entry_id}")
                if event.seq < self.next_seq:
                    continue  # already delivered (or before after_seq)
                if event.seq > self.next_seq:
                    raise EventGapError(
                        f"events {self.next_seq}..{event.seq - 1} of invocation "
                        f"{self.invocation_id} are not in {self.key} (the stream was trimmed "
                        "or expired). Read the session from its store for the full history."
                    )
                events.append(event)
                self.next_seq += 1
                if event.is_runner_completion():
                    self.done = True
        return events

    def timeout_error(self, timeout: float) -> EventStreamTimeout:
        waited = "the first event" if self.next_seq == 0 else f"event seq {self.next_seq}"
        return EventStreamTimeout(
            f"waited {timeout:g} s for {waited} of invocation {self.invocation_id} and none "
            f"came. Check that a run worker consumes the run queue (AGENT_RUNNER_QUEUE, default "
            f"{DEFAULT_RUNS_QUEUE!r}) and that the invocation ID is right, or pass a longer "
            "timeout."
        )


class _Presence:
    """Whether the invocation is known yet; gives up ``wait`` seconds after the start.

    ``wait=None`` never checks (the reader waits as long as its ``timeout`` says).
    """

    def __init__(self, invocation_id: str, prefix: str, wait: float | None) -> None:
        if wait is not None and (isinstance(wait, bool) or not wait >= 0):
            raise InvalidRequestError(
                f"known_wait must be a number of seconds >= 0 (or None not to check), got {wait!r}."
            )
        self.invocation_id = invocation_id
        self.keys = known_keys(invocation_id, prefix)
        self.wait = wait
        self.known = wait is None
        self.deadline = time.monotonic() + (wait or 0)

    def settle(self, exists: int) -> None:
        """Take the answer of ``EXISTS`` on :attr:`keys`.

        Raises:
            UnknownInvocationError: still unknown and the wait is over.
        """
        if exists:
            self.known = True
        elif time.monotonic() >= self.deadline:
            raise unknown_invocation(self.invocation_id, waited_s=self.wait)

    def block_ms(self, block: int) -> int:
        """The XREAD BLOCK to use: short while unknown, since what makes a run known need not
        be a stream entry."""
        return block if self.known else min(block, int(_KNOWN_POLL_S * 1000))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _first_stream_key(invocation_id: str, url: str, prefix: str) -> str | None:
    """The stream to read: known from the ID on one Redis; on a cluster (None here) it is
    found through the locator (:func:`_located_stream_key`)."""
    return None if is_cluster_url(url) else stream_key(invocation_id, prefix)


def _located_stream_key(invocation_id: str, prefix: str, digest: bytes | str | None) -> str | None:
    """The stream of a run on a cluster, from its locator's value (None: not bound yet)."""
    return None if digest is None else stream_key(invocation_id, prefix, session_tag(_text(digest)))


def _block_ms(deadline: float | None) -> int | None:
    """Milliseconds for the next XREAD BLOCK, or None when the deadline has passed."""
    if deadline is None:
        return int(_BLOCK_SLICE_S * 1000)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return None
    return max(1, int(min(remaining, _BLOCK_SLICE_S) * 1000))


def stream_events(
    invocation_id: str,
    *,
    after_seq: int | None = None,
    timeout: float | None = None,
    known_wait: float | None = None,
    redis_url: str | None = None,
    prefix: str | None = None,
) -> Generator[Event, None, None]:
    """Yield the events of an invocation exactly once, in ``seq`` order, up to its completion.

    Every event is yielded, ``run.restarted`` included: after it, the reply the dead attempt
    was streaming starts over (drop its ``message.delta`` text, or use :class:`ReplyText`).

    Args:
        invocation_id: what :func:`submit` returned.
        after_seq: the ``seq`` of the last event already processed; later ones are yielded.
        timeout: seconds to wait for each next event (None waits as long as it takes).
        known_wait: seconds to wait for the invocation to be known before giving up with
            :class:`UnknownInvocationError` (0 checks once; None, the default, never checks).
        redis_url: the events Redis (default: :func:`events_redis_url`).
        prefix: the channel/key prefix (default ``agent-runner``).

    Raises:
        EventStreamTimeout: (a ``TimeoutError``) no next event within ``timeout``.
        UnknownInvocationError: (an ``InvalidRequestError``) with ``known_wait``, no run with
            this ID became known within that many seconds.
        EventGapError: events between the last yielded one and the next stored one are gone.
        EventBusUnavailableError: Redis cannot be reached (the message names host and port).
        InvalidRequestError: a malformed ``invocation_id``, ``after_seq`` or ``known_wait``.
    """
    validate_invocation_id(invocation_id)
    url, actual_prefix = _events_target(redis_url, prefix)
    key = _first_stream_key(invocation_id, url, actual_prefix)
    cursor = _StreamCursor(invocation_id, key, after_seq)
    presence = _Presence(invocation_id, actual_prefix, known_wait)
    client = sync_client(url, socket_timeout=_SOCKET_TIMEOUT_S)
    locator = locator_key(invocation_id, actual_prefix)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not cursor.done:
            block = _block_ms(deadline)
            if block is None:
                raise cursor.timeout_error(timeout or 0)
            try:
                if cursor.key is None:
                    digest = client.get(locator)
                    cursor.key = _located_stream_key(invocation_id, actual_prefix, digest)
                    if cursor.key is None:
                        if not presence.known:
                            presence.settle(0)
                        time.sleep(min(block, _KNOWN_POLL_S * 1000) / 1000)
                        continue
                    presence.known = True
                if not presence.known:
                    presence.settle(client.exists(*presence.keys))
                response = client.xread(
                    {cursor.key: cursor.last_entry_id},
                    count=_READ_COUNT,
                    block=presence.block_ms(block),
                )
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                raise unavailable(client, exc) from exc
            events = cursor.feed(response)
            if events:
                presence.known = True
                if timeout is not None:
                    deadline = time.monotonic() + timeout
            yield from events
    finally:
        client.close()


async def astream_events(
    invocation_id: str,
    *,
    after_seq: int | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 (per-event idle timeout, as in the sync twin)
    known_wait: float | None = None,
    redis_url: str | None = None,
    prefix: str | None = None,
) -> AsyncIterator[Event]:
    """The async twin of :func:`stream_events`; same arguments, same guarantees."""
    validate_invocation_id(invocation_id)
    url, actual_prefix = _events_target(redis_url, prefix)
    key = _first_stream_key(invocation_id, url, actual_prefix)
    cursor = _StreamCursor(invocation_id, key, after_seq)
    presence = _Presence(invocation_id, actual_prefix, known_wait)
    client = async_client(url, socket_timeout=_SOCKET_TIMEOUT_S)
    locator = locator_key(invocation_id, actual_prefix)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not cursor.done:
            block = _block_ms(deadline)
            if block is None:
                raise cursor.timeout_error(timeout or 0)
            try:
                if cursor.key is None:
                    digest = await client.get(locator)
                    cursor.key = _located_stream_key(invocation_id, actual_prefix, digest)
                    if cursor.key is None:
                        if not presence.known:
                            presence.settle(0)
                        await asyncio.sleep(min(block, _KNOWN_POLL_S * 1000) / 1000)
                        continue
                    presence.known = True
                if not presence.known:
                    presence.settle(await client.exists(*presence.keys))
                response = await client.xread(
                    {cursor.key: cursor.last_entry_id},
                    count=_READ_COUNT,
                    block=presence.block_ms(block),
                )
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                raise unavailable(client, exc) from exc
            events = cursor.feed(response)
            if events:
                presence.known = True
                if timeout is not None:
                    deadline = time.monotonic() + timeout
            for event in events:
                yield event
    finally:
        await asyncio.shield(client.aclose())


# --- assembling replies --------------------------------------------------------------------


@dataclass(slots=True)
class ReplyText:
    """The assistant's text, assembled from a run's events by the rules of docs/events.md
    ("Redelivery"), so that a worker dying mid-reply never shows any text twice.

    Feed it every event in ``seq`` order (what :func:`stream_events` yields)::

        reply = ReplyText()
        for event in stream_events(invocation_id):
            if (text := reply.feed(event)) is not None:
                print(text)  # each reply once, never the part of one that was discarded

    :attr:`partial` is the text of the turn being streamed so far (what a live display
    shows): ``message.delta`` text since the turn's last complete event, minus what a
    ``run.restarted`` event voided (the dead attempt's unfinished reply).
    """

    #: ``(seq, text)`` of the current turn's ``message.delta`` events.
    deltas: list[tuple[int, str]] = field(default_factory=list)

    @property
    def partial(self) -> str:
        return "".join(text for _, text in self.deltas)

    def feed(self, event: Event) -> str | None:
        """Take the next event; return the complete text of a reply when one ends (an
        assistant ``message`` with text and no tool calls), else None."""
        if event.type == "message.delta":
            self.deltas.append((event.seq, event.delta or ""))
            return None
        if event.type == "run.restarted":
            void_after = -1 if event.discard_after_seq is None else event.discard_after_seq
            self.deltas = [(seq, text) for seq, text in self.deltas if seq <= void_after]
            return None
        self.deltas = []  # any complete event ends the turn; its message is the truth
        if event.type == "message" and event.is_final_response() and event.message is not None:
            return event.message.content or ""
        return None


# --- cancelling ----------------------------------------------------------------------------


def cancel(
    invocation_id: str,
    *,
    require_known: bool = False,
    redis_url: str | None = None,
    prefix: str | None = None,
) -> RunCompletionEvent | None:
    """Ask a run to stop at its next await; it ends with a ``cancelled`` completion.

    Works before the run starts too: the request is remembered for an hour. In one atomic
    step, it also finds out whether the run already finished (then nothing is recorded).

    Args:
        invocation_id: what :func:`submit` returned.
        require_known: refuse an invocation that is not known (see
            :func:`workers.bus.known_keys`) instead of remembering a request for it.
        redis_url, prefix: as for :func:`stream_events`.

    Returns:
        None when the request was made; the run's ``runner.completion`` if it had already
        finished (its ``status`` says how).

    Raises:
        UnknownInvocationError: with ``require_known``, no run with this ID is known.
        InvalidRequestError: a malformed ``invocation_id``.
        EventBusUnavailableError: Redis cannot be reached.
    """
    validate_invocation_id(invocation_id)
    url, actual_prefix = _events_target(redis_url, prefix)
    if is_cluster_url(url):  # not one script on a cluster: EventBus.request_cancel says how
        return asyncio.run(
            acancel(invocation_id, require_known=require_known, redis_url=url, prefix=actual_prefix)
        )
    client = redis.Redis.from_url(url)
    try:
        script = client.register_script(CancelScript.source)
        reply = script(
            keys=CancelScript.keys(invocation_id, actual_prefix),
            args=CancelScript.args(invocation_id, actual_prefix, require_known=require_known),
        )
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise unavailable(client, exc) from exc
    except redis.exceptions.RedisError as exc:
        raise EventBusError(f"Redis at {describe_redis(client)} failed: {exc}") from exc
    finally:
        client.close()
    return CancelScript.outcome(reply, invocation_id, actual_prefix)


async def acancel(
    invocation_id: str,
    *,
    require_known: bool = False,
    redis_url: str | None = None,
    prefix: str | None = None,
) -> RunCompletionEvent | None:
    """The async twin of :func:`cancel`."""
    validate_invocation_id(invocation_id)
    url, actual_prefix = _events_target(redis_url, prefix)
    client = async_client(url)
    try:
        bus = EventBus(client, prefix=actual_prefix)
        return await bus.request_cancel(invocation_id, require_known=require_known)
    finally:
        await client.aclose()


# --- traces --------------------------------------------------------------------------------


async def aget_trace(
    app_name: str | None,
    user_id: str | None,
    invocation_id: str,
    *,
    trace_url: str | None = None,
) -> Trace:
    """The execution trace of a run (docs/traces.md), read from any process.

    Only the run's own user reads it: pass the ``app_name`` and ``user_id`` the run was
    submitted with. An operator passes ``None`` for both.

    Args:
        trace_url: the trace store; default ``AGENT_RUNNER_TRACE_URL`` (else the session
            store's URL), as the workers use it.

    Returns:
        The :class:`~runner_core.traces.Trace` (``trace.to_json()`` for its JSON).

    Raises:
        InvalidRequestError: a malformed ID, naming it.
        TraceNotFoundError: no trace of this invocation (unknown, expired, deleted).
        InvocationOwnedError: the run is another user's.
        ConfigurationError: traces are off (``AGENT_RUNNER_TRACES=off``) or the URL is bad.
        SessionBackendError: the trace store cannot be reached.
    """
    from runner_core.errors import ConfigurationError
    from runner_core.traces import read_trace
    from session_backends.traces import trace_store_from_url

    if trace_url is None:
        trace_url = Settings.from_env().trace_url
        if trace_url is None:
            raise ConfigurationError(
                "traces are off (AGENT_RUNNER_TRACES=off), so no run has one; switch them on "
                "for the workers and the runs after that are traced."
            )
    store = trace_store_from_url(trace_url)
    try:
        return await read_trace(store, app_name, user_id, invocation_id)
    finally:
        await store.close()


def get_trace(
    app_name: str | None,
    user_id: str | None,
    invocation_id: str,
    *,
    trace_url: str | None = None,
) -> Trace:
    """Blocking :func:`aget_trace` (for scripts; inside an event loop, await that)."""
    return asyncio.run(aget_trace(app_name, user_id, invocation_id, trace_url=trace_url))
