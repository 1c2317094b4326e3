"""The script both test doubles answer from: scripted replies, first in, first out.

:class:`Script` owns the rules that :class:`~runner_core.testing.ScriptedModelServer` (over
HTTP) and :class:`~runner_core.testing.FakeModel` (in process) share: which reply a request
takes, the usage a reply reports, how text is cut into streamed deltas, and the record of the
requests received, as the OpenAI-format JSON bodies the endpoint would get.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

__all__ = [
    "DEFAULT_PROMPT_TOKENS",
    "Script",
    "ScriptedReply",
    "ToolCallSpec",
    "reply_usage",
    "split_text",
]

#: ``(call_id, function_name, arguments)``: arguments as a dict, or as a raw (maybe invalid)
#: JSON string.
ToolCallSpec = tuple[str, str, Mapping[str, Any] | str]

#: Usage reported when a reply does not set its own: fixed prompt tokens, one token per word.
DEFAULT_PROMPT_TOKENS = 10

_WORDS = re.compile(r"\S+\s*|\s+")


@dataclass(frozen=True, slots=True)
class ScriptedReply:
    """One scripted answer. Build it with :meth:`text`, :meth:`tool_calls`, :meth:`error` or
    :meth:`hang`; the ``add_*`` methods of :class:`Script` do that for you."""

    kind: Literal["text", "tool_calls", "error", "hang"]
    content: str | None = None
    #: Text deltas for streaming requests; joined, they equal ``content``.
    deltas: tuple[str, ...] = ()
    #: ``(call_id, name, arguments as a JSON string)``
    calls: tuple[tuple[str, str, str], ...] = ()
    status: int = 200
    error_message: str = ""
    error_type: str | None = None
    retry_after: float | None = None
    usage: Mapping[str, int] | None = None
    #: Seconds to wait before answering.
    delay: float = 0.0
    #: Seconds between streamed chunks.
    chunk_delay: float = 0.0
    #: Only a request whose message texts contain this string consumes the reply.
    match: str | None = None

    @classmethod
    def text(
        cls,
        text: str,
        *,
        chunks: int | Sequence[str] | None = None,
        usage: Mapping[str, int] | None = None,
        delay: float = 0.0,
        chunk_delay: float = 0.0,
        match: str | None = None,
    ) -> ScriptedReply:
        """An assistant text answer.

        Args:
            chunks: how streaming requests receive the text: ``None`` one delta per word,
                an int that many deltas of about equal size, or the exact deltas.
        """
        if chunks is None:
            deltas = tuple(_WORDS.findall(text))
        elif isinstance(chunks, int):
            deltas = split_text(text, chunks)
        else:
            deltas = tuple(chunks)
            if "".join(deltas) != text:
                raise ValueError("chunks= must join to exactly the text of the reply.")
        return cls(
            "text",
            content=text,
            deltas=deltas,
            usage=usage,
            delay=delay,
            chunk_delay=chunk_delay,
            match=match,
        )

    @classmethod
    def tool_calls(
        cls,
        calls: Sequence[ToolCallSpec],
        *,
        text: str | None = None,
        usage: Mapping[str, int] | None = None,
        delay: float = 0.0,
        match: str | None = None,
    ) -> ScriptedReply:
        """An assistant turn calling tools (several calls are parallel calls of one turn).

        Streaming requests to the server get each call's arguments in several fragments,
        interleaved across calls, as a client must assemble them by index.
        """
        if not calls:
            raise ValueError("tool_calls needs at least one (call_id, name, arguments) call.")
        encoded = tuple(
            (call_id, name, args if isinstance(args, str) else json.dumps(args))
            for call_id, name, args in calls
        )
        deltas = tuple(_WORDS.findall(text)) if text else ()
        return cls(
            "tool_calls",
            content=text,
            deltas=deltas,
            calls=encoded,
            usage=usage,
            delay=delay,
            match=match,
        )

    @classmethod
    def error(
        cls,
        status: int,
        message: str = "scripted error",
        *,
        error_type: str | None = None,
        retry_after: float | None = None,
        delay: float = 0.0,
        match: str | None = None,
    ) -> ScriptedReply:
        """An HTTP error: the server answers it with an OpenAI-shaped body
        ``{"error": {"message", "type", ...}}``; either way the model raises
        :class:`~runner_core.errors.ModelHTTPError` with ``code`` the status.

        Args:
            retry_after: seconds, sent as ``retry-after-ms``: a client retrying 429/5xx waits
                that long instead of its own back-off (0: retry at once).
        """
        if not 400 <= status <= 599:
            raise ValueError(f"error status must be 4xx or 5xx, got {status}.")
        return cls(
            "error",
            status=status,
            error_message=message,
            error_type=error_type,
            retry_after=retry_after,
            delay=delay,
            match=match,
        )

    @classmethod
    def hang(cls, *, match: str | None = None) -> ScriptedReply:
        """Never answer; the request is dropped when the script is reset or the server stops."""
        return cls("hang", match=match)


_NO_REPLY_LEFT = ScriptedReply.error(
    500,
    "no scripted reply left: queue one reply per model call (add_text, add_tool_calls, "
    "add_error, add_hang) or answer every further call with set_default().",
)


class Script:
    """Replies queued first in, first out; each model call consumes one.

    The base of both test doubles; every method is safe to call from any thread (the server
    answers in handler threads).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[ScriptedReply] = []
        self._default = _NO_REPLY_LEFT
        self._pending_delay = 0.0
        self._requests: list[dict[str, Any]] = []
        # Set to let hanging and delayed requests go (on reset, and for good on stop).
        self._release = threading.Event()
        self._released_for_good = False

    def add(self, reply: ScriptedReply) -> None:
        """Queue a reply (plus any delay from :meth:`add_delay`)."""
        with self._lock:
            if self._pending_delay:
                reply = replace(reply, delay=reply.delay + self._pending_delay)
                self._pending_delay = 0.0
            self._queue.append(reply)

    def add_text(
        self,
        text: str,
        *,
        chunks: int | Sequence[str] | None = None,
        usage: Mapping[str, int] | None = None,
        delay: float = 0.0,
        chunk_delay: float = 0.0,
        match: str | None = None,
    ) -> None:
        """Queue a text answer. See :meth:`ScriptedReply.text`."""
        self.add(
            ScriptedReply.text(
                text, chunks=chunks, usage=usage, delay=delay, chunk_delay=chunk_delay, match=match
            )
        )

    def add_tool_calls(
        self,
        calls: Sequence[ToolCallSpec],
        *,
        text: str | None = None,
        usage: Mapping[str, int] | None = None,
        delay: float = 0.0,
        match: str | None = None,
    ) -> None:
        """Queue a turn calling tools: ``[("call_1", "add", {"a": 1, "b": 2}), ...]``."""
        self.add(ScriptedReply.tool_calls(calls, text=text, usage=usage, delay=delay, match=match))

    def add_error(
        self,
        status: int,
        message: str = "scripted error",
        *,
        error_type: str | None = None,
        retry_after: float | None = None,
        delay: float = 0.0,
        match: str | None = None,
    ) -> None:
        """Queue an HTTP error. The ``openai`` client retries 408, 409, 429 and 5xx by itself,
        and each retry consumes a reply: build the model with ``max_retries=0`` (as
        :func:`~runner_core.testing.scripted_model` does) or script one reply per attempt."""
        self.add(
            ScriptedReply.error(
                status,
                message,
                error_type=error_type,
                retry_after=retry_after,
                delay=delay,
                match=match,
            )
        )

    def add_hang(self, *, match: str | None = None) -> None:
        """Queue a call that is never answered (until reset or stop): for timeout tests."""
        self.add(ScriptedReply.hang(match=match))

    def add_delay(self, seconds: float) -> None:
        """Delay the next reply you add by ``seconds`` (on top of its own ``delay=``)."""
        with self._lock:
            self._pending_delay += seconds

    def set_default(self, reply: ScriptedReply | str | None) -> None:
        """The reply for calls that find the queue empty: a reply, a text, or ``None`` for the
        built-in HTTP 500 "no scripted reply left"."""
        if isinstance(reply, str):
            reply = ScriptedReply.text(reply)
        with self._lock:
            self._default = reply or _NO_REPLY_LEFT

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The JSON bodies of the chat-completions requests received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def pending(self) -> int:
        """How many queued replies no request has consumed yet."""
        with self._lock:
            return len(self._queue)

    def reset(self) -> None:
        """Forget the script, the default and the recorded requests; release hanging requests."""
        with self._lock:
            self._queue.clear()
            self._requests.clear()
            self._default = _NO_REPLY_LEFT
            self._pending_delay = 0.0
            self._release.set()
            if not self._released_for_good:
                self._release = threading.Event()

    def _release_for_good(self) -> None:
        """Release hanging and delayed requests, now and from now on (the server stopped)."""
        with self._lock:
            self._released_for_good = True
            self._release.set()

    def _take(self, body: dict[str, Any]) -> tuple[ScriptedReply, threading.Event]:
        """Record a request and take its reply: the first queued one whose ``match`` occurs in
        the request's messages, else the first one without ``match``, else the default.

        Returns the reply and the event that releases the request if it waits (set on reset).
        """
        with self._lock:
            self._requests.append(body)
            chosen: int | None = None
            keyed = [(i, r.match) for i, r in enumerate(self._queue) if r.match is not None]
            if keyed:
                texts = _message_texts(body)
                chosen = next((i for i, match in keyed if match in texts), None)
            if chosen is None:
                chosen = next((i for i, r in enumerate(self._queue) if r.match is None), None)
            reply = self._default if chosen is None else self._queue.pop(chosen)
            return reply, self._release


def reply_usage(reply: ScriptedReply) -> dict[str, int]:
    """The ``usage`` object reported for ``reply``: its own, else ``prompt_tokens``
    :data:`DEFAULT_PROMPT_TOKENS` and one completion token per word plus one per tool call."""
    if reply.usage is not None:
        prompt = reply.usage.get("prompt_tokens", 0)
        completion = reply.usage.get("completion_tokens", 0)
        total = reply.usage.get("total_tokens", prompt + completion)
    else:
        prompt = DEFAULT_PROMPT_TOKENS
        completion = len((reply.content or "").split()) + len(reply.calls)
        total = prompt + completion
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


def split_text(text: str, parts: int) -> tuple[str, ...]:
    """``text`` in up to ``parts`` non-empty pieces of about equal size."""
    if not text:
        return ()
    size = -(-len(text) // max(parts, 1))
    return tuple(text[i : i + size] for i in range(0, len(text), size))


def _message_texts(body: Mapping[str, Any]) -> str:
    texts: list[str] = []
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(p["text"] for p in content if isinstance(p, dict) and "text" in p)
    return "\n".join(texts)
