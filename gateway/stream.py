"""A run's events as server-sent events, resumable with ``Last-Event-ID``.

Each event of the run is one SSE message whose ``id:`` is the event's ``seq`` and whose
``data:`` is the event's JSON exactly as stored (docs/events.md)::

    id: 3
    data: {"type":"message.delta","seq":3,...}

The events come from the run's Redis stream (``XREAD`` from its start, then ``XREAD BLOCK``),
not from pub/sub, so the same loop serves a client that connected before the run started, one
that joined late and one that reconnects: it skips what the client has seen (``seq`` up to the
``Last-Event-ID``), sends each later event once, in order, and ends after ``runner.completion``.
Any gateway instance can serve the continuation, since the position is the client's.

- On a quiet stream a comment (``: keep-alive``) is sent every ``keepalive_s`` seconds, so
  proxies keep the connection open and the client can tell a quiet run from a dead connection.
- When the events after the client's position are no longer held (the stream is capped at
  ``AGENT_RUNNER_STREAM_MAXLEN`` and expires ``AGENT_RUNNER_EVENT_TTL_S`` after its last
  event), the gateway never skips them silently: it sends ``event: reset`` whose data says from
  which ``seq`` on the stream goes on (``first_seq``) and where to reload the session's history
  (``history``), then the events from ``first_seq``. A stream that expired altogether gets a
  ``reset`` with ``first_seq`` null and the response ends.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis

from runner_core.events import COMPLETION_TYPE
from runner_core.wire import STREAM_FIELD, attempts_key, stream_key
from workers.bus import EventBusError

__all__ = ["KEEPALIVE", "event_frames", "reset_frame"]

#: The comment sent on a quiet stream.
KEEPALIVE = b": keep-alive\n\n"
#: Entries read per XREAD.
_READ_COUNT = 500
#: Quiet periods in a row in which the run looks finished but has no stream, after which the
#: stream is taken to have expired (two, so a run between its claim and its first event is
#: never mistaken for one).
_EXPIRED_AFTER_QUIET = 2


def reset_frame(reason: str, missed_from: int, first_seq: int | None, history: str) -> bytes:
    """The ``reset`` message: events from ``missed_from`` on are gone up to ``first_seq``."""
    data = {
        "reason": reason,
        "missed_from_seq": missed_from,
        "first_seq": first_seq,
        "history": history,
    }
    return f"event: reset\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _seq_and_type(fields: dict[Any, Any], where: str) -> tuple[str, int, str]:
    """The raw JSON, ``seq`` and ``type`` of a stream entry.

    Raises:
        EventBusError: the entry holds no event with an integer ``seq`` (corrupt data is
            reported, never skipped).
    """
    raw = fields.get(STREAM_FIELD.encode(), fields.get(STREAM_FIELD))
    try:
        if not isinstance(raw, bytes | str):
            raise TypeError("no event field")
        text = _text(raw)
        event = json.loads(text)
        seq, kind = event["seq"], event["type"]
    except (TypeError, ValueError, KeyError, AttributeError):
        raise EventBusError(f"stream entry {where} does not hold a valid event") from None
    if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(kind, str):
        raise EventBusError(f"stream entry {where} does not hold a valid event")
    return text, seq, kind


async def _expired(
    redis: aioredis.Redis, invocation_id: str, *, prefix: str, claim_key: str
) -> bool:
    """Whether the run's stream looks expired: it has none, a worker took the run (its
    attempts key), and the run no longer holds its session's claim (it finished)."""
    key = stream_key(invocation_id, prefix)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.exists(key, attempts_key(invocation_id, prefix))
        pipe.exists(key)
        pipe.get(claim_key)
        present, stream, claim = await pipe.execute()
    return not stream and present == 1 and _text(claim or b"") != invocation_id


async def event_frames(
    redis: aioredis.Redis,
    invocation_id: str,
    *,
    prefix: str,
    after_seq: int | None,
    keepalive_s: float,
    history: str,
    claim_key: str,
) -> AsyncIterator[bytes]:
    """The SSE messages of a run after ``after_seq``, up to and including its completion.

    Args:
        redis: the events Redis (its socket timeout must exceed ``keepalive_s``).
        invocation_id: the run.
        after_seq: the last ``seq`` the client has (its ``Last-Event-ID``), or None.
        keepalive_s: the longest quiet time before a keep-alive comment.
        history: the URL of the session's history, named in ``reset`` messages.
        claim_key: the run's session claim (:mod:`workers.session_lock`), held by the run
            until it finishes.

    Raises:
        EventBusError: a stream entry is corrupt.
    """
    key = stream_key(invocation_id, prefix)
    last_entry: bytes | str = b"0-0"
    next_seq = 0 if after_seq is None else after_seq + 1
    block_ms = max(1, int(keepalive_s * 1000))
    quiet_without_stream = 0
    while True:
        response: Any = await redis.xread({key: last_entry}, count=_READ_COUNT, block=block_ms)
        if not response:
            if await _expired(redis, invocation_id, prefix=prefix, claim_key=claim_key):
                quiet_without_stream += 1
                if quiet_without_stream >= _EXPIRED_AFTER_QUIET:
                    yield reset_frame("expired", next_seq, None, history)
                    return
            else:
                quiet_without_stream = 0
            yield KEEPALIVE
            continue
        frames: list[bytes] = []
        for _stream, entries in response:
            for entry_id, fields in entries:
                last_entry = entry_id
                text, seq, kind = _seq_and_type(fields, f"{key} {_text(entry_id)}")
                if seq >= next_seq:
                    if seq > next_seq:
                        frames.append(reset_frame("trimmed", next_seq, seq, history))
                    frames.append(f"id: {seq}\ndata: {text}\n\n".encode())
                    next_seq = seq + 1
                if kind == COMPLETION_TYPE:  # the last event of a run
                    if frames:
                        yield b"".join(frames)
                    return
        if frames:
            yield b"".join(frames)
