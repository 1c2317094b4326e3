"""Test helpers: :class:`ScriptedModelServer`, a scripted OpenAI-compatible HTTP server.

Use it in your own tests to drive an agent through the real ``openai`` client without reaching
an LLM::

    from runner_core.testing import ScriptedModelServer, scripted_model

    def test_agent() -> None:
        with ScriptedModelServer() as server:
            server.add_tool_calls([("call_1", "add", {"a": 2, "b": 3})])
            server.add_text("2 + 3 = 5")
            model = scripted_model(server)
            ...  # run the agent with `model`
            assert server.requests[1]["messages"][-1]["role"] == "tool"

Replies are queued first in, first out; each chat-completions request consumes one. Every bit of
state lives in the server object of the test process, so requests from other processes (Celery
worker subprocesses pointed at ``server.url``) consume the same script. The server itself is
standard library only.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

from .openai_model import OpenAIModel

__all__ = ["ScriptedModelServer", "ScriptedReply", "scripted_model"]

#: ``(call_id, function_name, arguments)``: arguments as a dict, or as a raw (maybe invalid)
#: JSON string.
ToolCallSpec = tuple[str, str, Mapping[str, Any] | str]

#: Usage reported when a reply does not set its own: fixed prompt tokens, one token per word.
DEFAULT_PROMPT_TOKENS = 10

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


@dataclass(frozen=True, slots=True)
class ScriptedReply:
    """One scripted answer. Build it with :meth:`text`, :meth:`tool_calls`, :meth:`error` or
    :meth:`hang`; the ``add_*`` methods of :class:`ScriptedModelServer` do that for you."""

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
            deltas = tuple(re.findall(r"\S+\s*|\s+", text))
        elif isinstance(chunks, int):
            deltas = _split(text, chunks)
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

        Streaming requests get each call's arguments in several fragments, interleaved across
        calls, as a client must assemble them by index.
        """
        if not calls:
            raise ValueError("tool_calls needs at least one (call_id, name, arguments) call.")
        encoded = tuple(
            (call_id, name, args if isinstance(args, str) else json.dumps(args))
            for call_id, name, args in calls
        )
        deltas = tuple(re.findall(r"\S+\s*|\s+", text)) if text else ()
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
        message: str = "ScriptedModelServer: scripted error",
        *,
        error_type: str | None = None,
        retry_after: float | None = None,
        delay: float = 0.0,
        match: str | None = None,
    ) -> ScriptedReply:
        """An HTTP error with an OpenAI-shaped body ``{"error": {"message", "type", ...}}``.

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
        """Never answer; the connection is dropped when the server stops or resets."""
        return cls("hang", match=match)


_NO_REPLY_LEFT = ScriptedReply.error(500, "ScriptedModelServer: no scripted reply left")


@dataclass
class _Script:
    """The mutable state shared by the handler threads; guarded by ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    queue: list[ScriptedReply] = field(default_factory=list)
    default: ScriptedReply = _NO_REPLY_LEFT
    pending_delay: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    #: Set to let hanging and delayed requests go (on stop and reset).
    release: threading.Event = field(default_factory=threading.Event)


class ScriptedModelServer:
    """An OpenAI-compatible chat-completions server answering from a script.

    Serves ``POST /v1/chat/completions`` (JSON, or server-sent events when ``stream`` is set,
    with a final usage chunk when ``stream_options.include_usage`` is set) and
    ``GET /v1/models``, on 127.0.0.1 in a background thread, with HTTP/1.1 keep-alive.

    Args:
        port: the port to bind; default a free one.
        latency: seconds added to every chat-completions call (for load benchmarks).
        models: the names ``GET /v1/models`` lists.

    Usage reported by default: ``prompt_tokens`` 10 and ``completion_tokens`` the number of
    words of the text plus one per tool call.
    """

    def __init__(
        self, *, port: int = 0, latency: float = 0.0, models: Sequence[str] = ("scripted",)
    ) -> None:
        self.latency = latency
        self.models = tuple(models)
        self._port = port
        self._script = _Script()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> ScriptedModelServer:
        """Bind and serve in a background thread. Returns the server, for chaining."""
        if self._httpd is not None or self._stopped:
            raise RuntimeError("ScriptedModelServer.start() can be called once per server.")
        httpd = _HTTPServer(("127.0.0.1", self._port), _Handler)
        httpd.scripted = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"ScriptedModelServer:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections and release hanging requests. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._script.release.set()
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        httpd.drop_connections()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> ScriptedModelServer:
        return self if self._httpd is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("ScriptedModelServer is not running; call start() first.")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The base URL for the ``openai`` client: ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    # -- the script --------------------------------------------------------------------------

    def add(self, reply: ScriptedReply) -> None:
        """Queue a reply (plus any delay from :meth:`add_delay`)."""
        with self._script.lock:
            if self._script.pending_delay:
                reply = replace(reply, delay=reply.delay + self._script.pending_delay)
                self._script.pending_delay = 0.0
            self._script.queue.append(reply)

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
        message: str = "ScriptedModelServer: scripted error",
        *,
        error_type: str | None = None,
        retry_after: float | None = None,
        delay: float = 0.0,
        match: str | None = None,
    ) -> None:
        """Queue an HTTP error. The ``openai`` client retries 408, 409, 429 and 5xx by itself,
        and each retry consumes a reply: build the model with ``max_retries=0`` or script one
        reply per attempt."""
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
        """Queue a request that is never answered (until stop or reset): for timeout tests."""
        self.add(ScriptedReply.hang(match=match))

    def add_delay(self, seconds: float) -> None:
        """Delay the next reply you add by ``seconds`` (on top of its own ``delay=``)."""
        with self._script.lock:
            self._script.pending_delay += seconds

    def set_default(self, reply: ScriptedReply | str | None) -> None:
        """The reply for requests that find the queue empty: a reply, a text, or ``None`` for
        the built-in HTTP 500 "ScriptedModelServer: no scripted reply left"."""
        if isinstance(reply, str):
            reply = ScriptedReply.text(reply)
        with self._script.lock:
            self._script.default = reply or _NO_REPLY_LEFT

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The JSON bodies of the chat-completions requests received so far, oldest first."""
        with self._script.lock:
            return list(self._script.requests)

    @property
    def pending(self) -> int:
        """How many queued replies no request has consumed yet."""
        with self._script.lock:
            return len(self._script.queue)

    def reset(self) -> None:
        """Forget the script, the default and the recorded requests; release hanging requests."""
        script = self._script
        with script.lock:
            script.queue.clear()
            script.requests.clear()
            script.default = _NO_REPLY_LEFT
            script.pending_delay = 0.0
            script.release.set()
            if not self._stopped:
                script.release = threading.Event()

    def _take(self, body: dict[str, Any]) -> tuple[ScriptedReply, threading.Event]:
        """Record a request and take its reply: the first queued one whose ``match`` occurs in
        the request's messages, else the first one without ``match``, else the default."""
        script = self._script
        with script.lock:
            script.requests.append(body)
            chosen: int | None = None
            keyed = [(i, r.match) for i, r in enumerate(script.queue) if r.match is not None]
            if keyed:
                texts = _message_texts(body)
                chosen = next((i for i, match in keyed if match in texts), None)
            if chosen is None:
                chosen = next((i for i, r in enumerate(script.queue) if r.match is None), None)
            reply = script.default if chosen is None else script.queue.pop(chosen)
            return reply, script.release


def scripted_model(
    server: ScriptedModelServer,
    name: str = "scripted",
    *,
    timeout: float | None = 60.0,
    max_retries: int = 0,
) -> OpenAIModel:
    """An :class:`OpenAIModel` calling ``server`` with a fake API key.

    ``max_retries`` defaults to 0 because every retry consumes a scripted reply.
    """
    return OpenAIModel(
        name,
        base_url=server.url,
        api_key="sk-scripted-not-a-real-key",
        timeout=timeout,
        max_retries=max_retries,
    )


# -- HTTP ------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops connections under a load benchmark's burst of clients.
    request_queue_size = 256
    scripted: ScriptedModelServer

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def track(self, connection: socket.socket, *, open_: bool) -> None:
        with self._connections_lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def drop_connections(self) -> None:
        # Keep-alive connections would otherwise outlive the server and still be answered.
        with self._connections_lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Small writes go out at once; otherwise each call can wait ~40 ms on a delayed ACK.
    disable_nagle_algorithm = True
    server: _HTTPServer
    _ids = itertools.count(1)

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, open_=True)

    def finish(self) -> None:
        self.server.track(self.connection, open_=False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read server.requests, not stderr

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            data = [
                {"id": name, "object": "model", "created": 0, "owned_by": "scripted"}
                for name in self.server.scripted.models
            ]
            self._send_json(200, {"object": "list", "data": data})
        else:
            self._send_error(404, f"No route for GET {self.path}.", "not_found_error")

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._send_error(404, f"No route for POST {self.path}.", "not_found_error")
            return
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            self._send_error(400, "The request body is not a JSON object.")
            return
        scripted = self.server.scripted
        reply, release = scripted._take(body)
        wait = scripted.latency + reply.delay
        if reply.kind == "hang" or (wait > 0 and release.wait(wait)):
            release.wait()
            self.close_connection = True  # dropped without an answer
            return
        if reply.kind == "error":
            headers = {}
            if reply.retry_after is not None:
                # The client ignores a zero wait (and backs off): send a tiny one instead.
                headers["retry-after-ms"] = f"{max(reply.retry_after * 1000, 0.001):g}"
            error_type = reply.error_type or _ERROR_TYPES.get(
                reply.status, "server_error" if reply.status >= 500 else "invalid_request_error"
            )
            self._send_error(reply.status, reply.error_message, error_type, headers)
            return
        model = str(body.get("model", "scripted"))
        completion_id = f"chatcmpl-scripted-{next(self._ids)}"
        if body.get("stream"):
            options = body.get("stream_options") or {}
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            events = _stream_events(reply, completion_id, model, include_usage=include_usage)
            self._send_events(events, reply.chunk_delay, release)
        else:
            self._send_json(200, _completion(reply, completion_id, model))

    def _send_json(
        self, status: int, payload: object, headers: Mapping[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(
        self,
        status: int,
        message: str,
        error_type: str = "invalid_request_error",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        error = {"message": message, "type": error_type, "param": None, "code": None}
        self._send_json(status, {"error": error}, headers)

    def _send_events(
        self, events: list[dict[str, Any]], chunk_delay: float, release: threading.Event
    ) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        lines = [f"data: {json.dumps(event)}\n\n".encode() for event in events]
        lines.append(b"data: [DONE]\n\n")
        chunks = [b"%x\r\n%s\r\n" % (len(line), line) for line in lines]
        chunks.append(b"0\r\n\r\n")
        if chunk_delay <= 0:
            self.wfile.write(b"".join(chunks))
            return
        for chunk in chunks:
            self.wfile.write(chunk)
            if release.wait(chunk_delay):
                self.close_connection = True  # stopped mid-stream
                return


def _usage(reply: ScriptedReply) -> dict[str, int]:
    if reply.usage is not None:
        prompt = reply.usage.get("prompt_tokens", 0)
        completion = reply.usage.get("completion_tokens", 0)
        total = reply.usage.get("total_tokens", prompt + completion)
    else:
        prompt = DEFAULT_PROMPT_TOKENS
        completion = len((reply.content or "").split()) + len(reply.calls)
        total = prompt + completion
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


def _completion(reply: ScriptedReply, completion_id: str, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": None}
    if reply.calls:
        message["tool_calls"] = [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
            for call_id, name, args in reply.calls
        ]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if reply.calls else "stop",
                "logprobs": None,
            }
        ],
        "usage": _usage(reply),
    }


def _stream_events(
    reply: ScriptedReply, completion_id: str, model: str, *, include_usage: bool
) -> list[dict[str, Any]]:
    head = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return {**head, "choices": [choice]}

    events = [chunk({"role": "assistant", "content": ""})]
    events.extend(chunk({"content": text}) for text in reply.deltas)
    # Each call opens with its ID and name; its argument fragments follow, interleaved with
    # the other calls' fragments, so only the index ties a fragment to its call.
    for index, (call_id, name, _) in enumerate(reply.calls):
        opening = {"index": index, "id": call_id, "type": "function"}
        events.append(chunk({"tool_calls": [{**opening, "function": {"name": name}}]}))
    fragments = [_split(args, 3) for _, _, args in reply.calls]
    for round_ in range(max((len(f) for f in fragments), default=0)):
        for index, pieces in enumerate(fragments):
            if round_ < len(pieces):
                call = {"index": index, "function": {"arguments": pieces[round_]}}
                events.append(chunk({"tool_calls": [call]}))
    events.append(chunk({}, "tool_calls" if reply.calls else "stop"))
    if include_usage:
        events.append({**head, "choices": [], "usage": _usage(reply)})
    return events


def _split(text: str, parts: int) -> tuple[str, ...]:
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
