"""The wire: every name and limit that producers, workers and clients must agree on.

A producer in another language, a worker of the previous release and a subscriber that joined
late all depend on these values byte for byte, so each is written here and nowhere else
(``tests/test_wire.py`` fails if another module spells one). Changing one is a migration, not a
refactoring: deployed producers and subscribers keep using the old value.

Celery (any client can ``send_task`` by name; it must name the queue):

- task ``agent_runner.submit_run`` on queue ``runs`` (``AGENT_RUNNER_QUEUE``);
- task ``agent_runner.summarize_session`` on queue ``summary.<shard>`` (:func:`summary_shard`);
- task ``agent_runner.deliver_webhook`` on the run queue.

Redis, for the invocation ``I`` and the events prefix ``P`` (``AGENT_RUNNER_EVENTS_PREFIX``,
default ``agent-runner``; what each holds: :mod:`workers.bus` and docs/events.md):

- ``P:events:I`` (pub/sub), ``P:stream:I`` (stream; field ``event``), ``P:control:I``
  (pub/sub; ``cancel``), ``P:cancel:I``, ``P:owner:I``, ``P:attempts:I``, ``P:submitted:I``,
  ``P:webhook:I`` (:mod:`workers.webhooks`);
- per session, for the digest ``D`` of (app, user, session) (:func:`session_digest`):
  ``P:session:D:{lease,claim,waiters,waiters-seen,fence}`` (:mod:`workers.session_lock`),
  ``P:summary-lease:D`` (:mod:`workers.summaries`), and the counter ``P:session-lease-token``.

On Redis Cluster (``redis+cluster://``; docs/workers.md, "Redis Cluster") every key that one
fenced write touches must share a hash slot, so the keys of a run carry its session's hash tag
``T`` = ``{D}`` (:func:`session_tag`): ``P:T:events:I``, ``P:T:stream:I``, ``P:T:owner:I``,
``P:T:attempts:I``, ``P:T:submitted:I``; the lease keys are ``P:session:T:{lease,claim,waiters,
waiters-seen,fence,token}`` (``token``: the session's own fencing-token counter). The locator
``P:locator:I`` (holding ``D``) leads a reader that has only the invocation ID to them; cancel
requests (``P:cancel:I``, ``P:control:I``) stay untagged. A single Redis keeps the names above.

This module imports nothing of the project, so every layer can use it (``runner_core`` imports
neither ``workers`` nor ``session_backends``).
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from typing import Literal

__all__ = [
    "ADD_FEEDBACK",
    "ATTEMPTS_TTL_S",
    "CANCEL_MESSAGE",
    "CANCEL_TTL_S",
    "DEFAULT_EVENTS_PREFIX",
    "DEFAULT_EVENT_TTL_S",
    "DEFAULT_MAX_MESSAGE_CHARS",
    "DEFAULT_RUNS_QUEUE",
    "DEFAULT_STREAM_MAXLEN",
    "DEFAULT_SUMMARY_SHARDS",
    "DELIVER_WEBHOOK",
    "ID_RE",
    "MAX_ID_LENGTH",
    "MAX_SUMMARY_SHARDS",
    "OWNER_TTL_S",
    "STREAM_FIELD",
    "SUBMITTED_TTL_S",
    "SUBMIT_RUN",
    "SUMMARIZE_SESSION",
    "SUMMARY_QUEUE_PREFIX",
    "SessionLockPart",
    "attempts_key",
    "cancel_key",
    "control_channel",
    "events_channel",
    "known_keys",
    "lease_token_key",
    "locator_key",
    "owner_key",
    "session_digest",
    "session_lock_key",
    "session_tag",
    "stream_key",
    "submitted_key",
    "summary_lease_key",
    "summary_queue",
    "summary_queue_name",
    "summary_shard",
    "webhook_key",
]

# --- IDs -----------------------------------------------------------------------------------

#: The longest ID (app name, user ID, session ID, invocation ID, request ID). IDs become Redis
#: keys and SQL parameters; producers, workers, stores and readers all check it.
MAX_ID_LENGTH = 128
#: Every ID (app name, user ID, session ID, invocation ID): 1-128 letters, digits or ``._:@+=-``.
#: Always used with ``fullmatch``: ``$`` would let a trailing newline through ("alice\n").
ID_RE = re.compile(rf"[A-Za-z0-9._:@+=-]{{1,{MAX_ID_LENGTH}}}")

# --- Celery task and queue names -----------------------------------------------------------

#: The run task: what producers ``send_task`` (workers.tasks registers it under this name).
SUBMIT_RUN = "agent_runner.submit_run"
#: The summary task (workers.summaries registers it; run workers enqueue it after runs).
SUMMARIZE_SESSION = "agent_runner.summarize_session"
#: The webhook delivery task (workers.webhooks registers it; run workers enqueue it after a run
#: that has a webhook, on the run queue).
DELIVER_WEBHOOK = "agent_runner.deliver_webhook"
#: The feedback task (workers.feedback registers it; any service sends it on the run queue).
ADD_FEEDBACK = "agent_runner.add_feedback"
#: The run queue producers send to and run workers consume, unless ``AGENT_RUNNER_QUEUE`` says.
DEFAULT_RUNS_QUEUE = "runs"
#: Summary queues are this and the shard number: ``summary.0`` ... ``summary.N-1``.
SUMMARY_QUEUE_PREFIX = "summary."
#: Shard queues (``AGENT_RUNNER_SUMMARY_SHARDS``); the same on every producer and worker.
DEFAULT_SUMMARY_SHARDS = 8
#: The most shard queues ``AGENT_RUNNER_SUMMARY_SHARDS`` may ask for.
MAX_SUMMARY_SHARDS = 1024


def summary_shard(app_name: str, user_id: str, session_id: str, shards: int) -> int:
    """The shard of a session: ``crc32(JSON [app_name, user_id, session_id]) % shards``, the
    same in every process, host and Python version (never the per-process salted ``hash()``)."""
    raw = json.dumps([app_name, user_id, session_id]).encode()
    return zlib.crc32(raw) % shards


def summary_queue_name(shard: int) -> str:
    """The name (and routing key) of one summary shard queue: ``summary.<shard>``."""
    return f"{SUMMARY_QUEUE_PREFIX}{shard}"


def summary_queue(app_name: str, user_id: str, session_id: str, shards: int) -> str:
    """The queue (and routing key) of a session's summary jobs: ``summary.<shard>``."""
    return summary_queue_name(summary_shard(app_name, user_id, session_id, shards))


# --- Redis names of an invocation ----------------------------------------------------------

#: The first part of every event-bus key and channel (``AGENT_RUNNER_EVENTS_PREFIX``).
DEFAULT_EVENTS_PREFIX = "agent-runner"
#: The one field of every stream entry; its value is the event JSON (subscribers read it).
STREAM_FIELD = "event"
#: What is published on the control channel to ask a run to stop (clients publish, workers
#: listen).
CANCEL_MESSAGE = "cancel"


def _scope(prefix: str, tag: str) -> str:
    """``prefix``, followed on Redis Cluster by the session's hash tag (:func:`session_tag`)."""
    return f"{prefix}:{tag}" if tag else prefix


def events_channel(invocation_id: str, prefix: str = DEFAULT_EVENTS_PREFIX, tag: str = "") -> str:
    """The pub/sub channel carrying an invocation's events: ``{prefix}:events:{invocation_id}``
    (``{prefix}:{tag}:events:{invocation_id}`` on Redis Cluster, a sharded channel)."""
    return f"{_scope(prefix, tag)}:events:{invocation_id}"


def stream_key(invocation_id: str, prefix: str = DEFAULT_EVENTS_PREFIX, tag: str = "") -> str:
    """The capped stream holding an invocation's events: ``{prefix}:stream:{invocation_id}``
    (``{prefix}:{tag}:stream:{invocation_id}`` on Redis Cluster)."""
    return f"{_scope(prefix, tag)}:stream:{invocation_id}"


def cancel_key(invocation_id: str, prefix: str = DEFAULT_EVENTS_PREFIX) -> str:
    """The key that marks a cancel request: ``{prefix}:cancel:{invocation_id}``."""
    return f"{prefix}:cancel:{invocation_id}"


def control_channel(invocation_id: str, prefix: str = DEFAULT_EVENTS_PREFIX) -> str:
    """The channel that wakes a run on a cancel request: ``{prefix}:control:{invocation_id}``."""
    return f"{prefix}:control:{invocation_id}"


def owner_key(invocation_id: str, prefix: str = DEFAULT_EVENTS_PREFIX, tag: str = "") -> str:
    """The identity the invocation ID is bound to: ``{prefix}:owner:{invocation_id}``."""
    return f"{_scope(prefix, tag)}:owner:{invocation_id}"


def attempts_key(invocation_id: str, prefix: str = DEFAULT_EVENTS_PREFIX, tag: str = "") -> str:
    """The counter of a run's deliveries that took the session: ``{prefix}:attempts:{id}``."""
    return f"{_scope(prefix, tag)}:attempts:{invocation_id}"


def submitted_key(invocation_id: str, prefix: str = DEFAULT_EVENTS_PREFIX, tag: str = "") -> str:
    """The marker :func:`workers.client.submit` sets before sending: ``{prefix}:submitted:{id}``."""
    return f"{_scope(prefix, tag)}:submitted:{invocation_id}"


def locator_key(invocation_id: str, prefix: str = DEFAULT_EVENTS_PREFIX) -> str:
    """On Redis Cluster, the session digest an invocation is bound to (so its tag):
    ``{prefix}:locator:{invocation_id}``, written (``SET NX``) by :func:`workers.client.submit`
    and by the first worker that takes or publishes for the run."""
    return f"{prefix}:locator:{invocation_id}"


def webhook_key(invocation_id: str, prefix: str = DEFAULT_EVENTS_PREFIX) -> str:
    """The hash of a run's webhook (URL and delivery state): ``{prefix}:webhook:{id}``."""
    return f"{prefix}:webhook:{invocation_id}"


def known_keys(invocation_id: str, prefix: str = DEFAULT_EVENTS_PREFIX, tag: str = "") -> list[str]:
    """The keys whose existence makes an invocation known: its stream (a worker published
    something), its attempts counter (a worker took it) and its submitted marker (the client
    sent it). ``EXISTS`` of all three is 0 for an ID nobody submitted or whose traces expired.
    (On Redis Cluster its locator, :func:`locator_key`, is what makes it known.)"""
    return [
        stream_key(invocation_id, prefix, tag),
        attempts_key(invocation_id, prefix, tag),
        submitted_key(invocation_id, prefix, tag),
    ]


# --- Redis names of a session --------------------------------------------------------------

#: The keys of a session's run lease (:mod:`workers.session_lock` says what each holds).
SessionLockPart = Literal["lease", "claim", "waiters", "waiters-seen", "fence", "token"]


def session_digest(app_name: str, user_id: str, session_id: str) -> str:
    """The session's part of its key names: 32 hex digits of the SHA-256 of
    ``JSON [app_name, user_id, session_id]`` (IDs may hold ``:``, so they are never joined)."""
    raw = json.dumps([app_name, user_id, session_id])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def session_tag(digest: str) -> str:
    """The Redis Cluster hash tag of a session and of its runs' keys: ``{`` + the session's
    :func:`session_digest` + ``}``. Everything one fenced write touches (a run's stream,
    channel and owner, the session's lease and fence) carries it, so it is in one slot."""
    return "{" + digest + "}"


def session_lock_key(
    digest: str,
    part: SessionLockPart,
    prefix: str = DEFAULT_EVENTS_PREFIX,
    *,
    cluster: bool = False,
) -> str:
    """One key of a session's run lease: ``{prefix}:session:{digest}:{part}``; on Redis
    Cluster the digest is the hash tag: ``{prefix}:session:{{digest}}:{part}``. (``token``,
    the session's own fencing-token counter, exists on Redis Cluster only.)"""
    return f"{prefix}:session:{session_tag(digest) if cluster else digest}:{part}"


def lease_token_key(prefix: str = DEFAULT_EVENTS_PREFIX) -> str:
    """The global counter fencing tokens are drawn from: ``{prefix}:session-lease-token``."""
    return f"{prefix}:session-lease-token"


def summary_lease_key(digest: str, prefix: str = DEFAULT_EVENTS_PREFIX) -> str:
    """A session's summary lease: ``{prefix}:summary-lease:{digest}``."""
    return f"{prefix}:summary-lease:{digest}"


# --- limits and lifetimes ------------------------------------------------------------------

#: Default of ``AGENT_RUNNER_STREAM_MAXLEN``: entries each stream keeps (``MAXLEN ~``); readers
#: that fall further behind get an EventGapError.
DEFAULT_STREAM_MAXLEN = 10_000
#: Default of ``AGENT_RUNNER_EVENT_TTL_S``: seconds a stream lives after its last event.
DEFAULT_EVENT_TTL_S = 3600
#: Default of ``AGENT_RUNNER_MAX_MESSAGE_CHARS``: the JSON size of a run's message(s); the
#: producer checks it before sending, the worker again on receipt.
DEFAULT_MAX_MESSAGE_CHARS = 100_000
#: Seconds a cancel request is remembered when the run has not picked it up (client and worker
#: write it through workers.bus.CancelScript).
CANCEL_TTL_S = 3600
#: Seconds an invocation ID stays bound to its owner after its last claim or event (at least as
#: long as the stream and the task result it protects; workers.bus and workers.session_lock).
OWNER_TTL_S = 86_400
#: Seconds the submitted marker lives (workers.client): longer than a run should sit queued.
SUBMITTED_TTL_S = 86_400
#: Seconds the attempts counter lives (workers.session_lock); readers use it to know a run.
ATTEMPTS_TTL_S = 86_400
