"""`ScriptedModelServer`: a scripted OpenAI-compatible HTTP server, for end-to-end tests.

Use it to drive an agent through the real ``openai`` client without reaching an LLM, also from
other processes (Celery worker subprocesses pointed at ``server.url``)::

    from runner_core.testing import ScriptedModelServer, scripted_model

    def test_agent() -> None:
        with ScriptedModelServer() as server:
            server.add_tool_calls([("call_1", "add", {"a": 2, "b": 3})])
            server.add_text("2 + 3 = 5")
            model = scripted_model(server)
            ...  # run the agent with `model`
            assert server.requests[1]["messages"][-1]["role"] == "tool"

Replies are queued first in, first out (see :class:`~runner_core.testing.script.Script`); each
chat-completions request consumes one. Every bit of state lives in the server object of the
test process, so requests from other processes consume the same script. The server itself is
standard library only.
"""

from __future__ import annotations

import itertools
import json
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from ..openai_model import OpenAIModel
from .script import Script, ScriptedReply, reply_usage, split_text

__all__ = ["ScriptedModelServer", "scripted_model"]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


class ScriptedModelServer(Script):
    """An OpenAI-compatible chat-completions server answering from a script (the ``add_*``
    methods of :class:`~runner_core.testing.script.Script`).

    Serves ``POST /v1/chat/completions`` (JSON, or server-sent events when ``stream`` is set,
    with a final usage chunk when ``stream_options.include_usage`` is set) and
    ``GET /v1/models``, on 127.0.0.1 in a background thread, with HTTP/1.1 keep-alive.

    Args:
        port: the port to bind; default a free one.
        latency: seconds added to every chat-completions call (for load benchmarks).
        models: the names ``GET /v1/models`` lists.

    The usage each reply reports is :func:`~runner_core.testing.script.reply_usage`.
    """

    def __init__(
        self, *, port: int = 0, latency: float = 0.0, models: Sequence[str] = ("scripted",)
    ) -> None:
        super().__init__()
        self.latency = latency
        self.models = tuple(models)
        self._port = port
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
        self._release_for_good()
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

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-reply (a test cutting its connection, a cancelled run)
        # is expected: say nothing. Anything else is a bug of the fake, printed as usual.
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)

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
        "usage": reply_usage(reply),
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
    fragments = [split_text(args, 3) for _, _, args in reply.calls]
    for round_ in range(max((len(f) for f in fragments), default=0)):
        for index, pieces in enumerate(fragments):
            if round_ < len(pieces):
                call = {"index": index, "function": {"arguments": pieces[round_]}}
                events.append(chunk({"tool_calls": [call]}))
    events.append(chunk({}, "tool_calls" if reply.calls else "stop"))
    if include_usage:
        events.append({**head, "choices": [], "usage": reply_usage(reply)})
    return events
