"""ScriptedModelServer: the OpenAI-compatible fake server users script in their own tests."""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from openai import APIConnectionError, APITimeoutError, AsyncOpenAI, InternalServerError

from runner_core.messages import Message
from runner_core.model import ModelRequest, ModelResponse
from runner_core.openai_model import OpenAIModel
from runner_core.testing import ScriptedModelServer, ScriptedReply, scripted_model


@pytest.fixture
def server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as scripted:
        yield scripted


@pytest.fixture
async def client(server: ScriptedModelServer) -> AsyncIterator[AsyncOpenAI]:
    openai_client = AsyncOpenAI(base_url=server.url, api_key="sk-x", max_retries=0)
    yield openai_client
    await openai_client.close()


def post(
    conn: http.client.HTTPConnection, body: dict[str, Any]
) -> tuple[http.client.HTTPResponse, bytes]:
    conn.request(
        "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
    )
    response = conn.getresponse()
    return response, response.read()


def connect(server: ScriptedModelServer) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)


def events(raw: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body."""
    return [
        line.removeprefix("data: ")
        for line in raw.decode().split("\n\n")
        if line.startswith("data: ")
    ]


def ask(text: str = "hi", *, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
    return body


async def reply_text(client: AsyncOpenAI, text: str = "hi") -> str | None:
    completion = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": text}]
    )
    return completion.choices[0].message.content


# -- lifecycle ---------------------------------------------------------------------------------


def test_url_points_at_the_v1_api_on_loopback() -> None:
    server = ScriptedModelServer().start()
    try:
        assert server.url == f"http://127.0.0.1:{server.port}/v1"
    finally:
        server.stop()
        server.stop()  # idempotent


def test_a_server_starts_once() -> None:
    with ScriptedModelServer() as server, pytest.raises(RuntimeError, match="once"):
        server.start()


async def test_models_are_listed(server: ScriptedModelServer, client: AsyncOpenAI) -> None:
    page = await client.models.list()

    assert [model.id async for model in page] == ["scripted"]


def test_stop_drops_kept_alive_connections(server: ScriptedModelServer) -> None:
    server.set_default("ok")
    conn = connect(server)
    response, _ = post(conn, ask())
    assert response.status == 200

    server.stop()

    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        post(conn, ask())
    conn.close()


# -- the script --------------------------------------------------------------------------------


async def test_replies_are_consumed_first_in_first_out(
    server: ScriptedModelServer, client: AsyncOpenAI
) -> None:
    server.add_text("first")
    server.add_text("second")
    assert server.pending == 2

    answers = [await reply_text(client, "a"), await reply_text(client, "b")]

    assert answers == ["first", "second"]
    assert server.pending == 0
    assert [body["messages"][0]["content"] for body in server.requests] == ["a", "b"]


async def test_an_empty_queue_answers_500_by_default(
    server: ScriptedModelServer, client: AsyncOpenAI
) -> None:
    with pytest.raises(InternalServerError, match="no scripted reply left"):
        await reply_text(client)


async def test_set_default_answers_every_request_once_the_queue_is_empty(
    server: ScriptedModelServer, client: AsyncOpenAI
) -> None:
    server.set_default("always")
    server.add_text("queued")

    answers = [await reply_text(client) for _ in range(3)]
    server.set_default(None)

    assert answers == ["queued", "always", "always"]
    with pytest.raises(InternalServerError):
        await reply_text(client)


async def test_set_default_takes_any_reply(
    server: ScriptedModelServer, client: AsyncOpenAI
) -> None:
    server.set_default(ScriptedReply.tool_calls([("call_1", "add", {"a": 1})]))

    completion = await client.chat.completions.create(model="m", messages=[])

    calls = completion.choices[0].message.tool_calls
    assert calls is not None
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        ("call_1", "add", '{"a": 1}')
    ]


async def test_a_matching_reply_goes_to_the_request_that_mentions_it(
    server: ScriptedModelServer, client: AsyncOpenAI
) -> None:
    server.add_text("for alice", match="I am alice")
    server.add_text("for anyone")
    server.add_text("for bob", match="I am bob")

    answers = [
        await reply_text(client, "hello, I am bob"),
        await reply_text(client, "no name"),
        await reply_text(client, "hello, I am alice"),
    ]

    assert answers == ["for bob", "for anyone", "for alice"]


async def test_reset_forgets_the_script_and_the_requests(
    server: ScriptedModelServer, client: AsyncOpenAI
) -> None:
    server.add_text("used")
    await reply_text(client)
    server.add_text("never used")
    server.set_default("default")

    server.reset()

    assert server.requests == []
    assert server.pending == 0
    with pytest.raises(InternalServerError):
        await reply_text(client)


def test_requests_from_another_process_consume_the_same_script(
    server: ScriptedModelServer,
) -> None:
    server.add_text("answered across processes")
    code = (
        "import json, sys, urllib.request\n"
        "message = {'role': 'user', 'content': 'from child'}\n"
        "body = json.dumps({'model': 'm', 'messages': [message]})\n"
        "req = urllib.request.Request(sys.argv[1] + '/chat/completions', body.encode(),\n"
        "                             {'Content-Type': 'application/json'})\n"
        "print(json.load(urllib.request.urlopen(req))['choices'][0]['message']['content'])\n"
    )

    child = subprocess.run(
        [sys.executable, "-c", code, server.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    assert child.stdout.strip() == "answered across processes"
    assert server.requests[0]["messages"][0]["content"] == "from child"


# -- wire format -------------------------------------------------------------------------------


def test_streaming_sends_sse_chunks_and_done(server: ScriptedModelServer) -> None:
    server.add_text("a b c")
    conn = connect(server)

    response, raw = post(conn, ask(stream=True))

    assert response.status == 200
    assert response.getheader("Content-Type") == "text/event-stream"
    payloads = events(raw)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "a b c"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in chunks)  # not asked for
    conn.close()


def test_a_client_that_resets_mid_reply_is_not_reported_as_an_error(
    server: ScriptedModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a long streamed reply
    server.set_default("word " * 20000)
    body = json.dumps(ask(stream=True)).encode()
    for _ in range(3):
        # When the client reads its first bytes, then resets the connection
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    # Then the server answers the next request
    server.add_text("still here")
    conn = connect(server)
    response, raw = post(conn, ask())
    conn.close()
    assert response.status == 200 and b"still here" in raw

    # ... and what it reports for a request that failed (in the thread that served it: here,
    # called the way socketserver calls it) says nothing of a client gone mid-reply, while a
    # bug of the fake itself is still printed
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    httpd = server._httpd
    assert httpd is not None
    errors: list[Exception] = [ConnectionResetError(104, "reset"), BrokenPipeError(32, "pipe")]
    for error in [*errors, ValueError("a bug of the fake")]:
        try:
            raise error
        except Exception:
            httpd.handle_error(None, ("127.0.0.1", 1))
        if not isinstance(error, ValueError):
            assert stderr.getvalue() == ""
    assert "ValueError: a bug of the fake" in stderr.getvalue()


def test_a_final_usage_chunk_when_include_usage_is_set(server: ScriptedModelServer) -> None:
    server.add_text("three little words")
    conn = connect(server)

    _, raw = post(conn, {**ask(stream=True), "stream_options": {"include_usage": True}})

    last = json.loads(events(raw)[-2])
    assert last["choices"] == []
    assert last["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
    conn.close()


def test_keep_alive_serves_several_requests_on_one_connection(
    server: ScriptedModelServer,
) -> None:
    server.set_default("ok")
    conn = connect(server)

    post(conn, ask(stream=True))
    sock = conn.sock
    second, _ = post(conn, ask())
    third, _ = post(conn, ask(stream=True))

    assert sock is not None and conn.sock is sock
    assert (second.status, third.status) == (200, 200)
    conn.close()


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [(None, ["one ", "two ", "three"]), (2, ["one two", " three"]), (["o", "ne two three"], None)],
)
def test_text_chunking(chunks: Any, expected: list[str] | None) -> None:
    reply = ScriptedReply.text("one two three", chunks=chunks)

    assert list(reply.deltas) == (expected or chunks)


def test_chunks_must_join_to_the_text() -> None:
    with pytest.raises(ValueError, match="join"):
        ScriptedReply.text("hello", chunks=["he", "lo"])


def test_tool_call_arguments_stream_in_interleaved_fragments(server: ScriptedModelServer) -> None:
    server.add_tool_calls([("call_1", "add", {"a": 1, "b": 2}), ("call_2", "echo", "{bad")])
    conn = connect(server)

    _, raw = post(conn, ask(stream=True))

    fragments = [
        call
        for payload in events(raw)[:-1]
        for call in json.loads(payload)["choices"][0]["delta"].get("tool_calls") or ()
    ]
    per_call = {
        index: "".join(f["function"].get("arguments", "") for f in fragments if f["index"] == index)
        for index in (0, 1)
    }
    assert per_call == {0: '{"a": 1, "b": 2}', 1: "{bad"}
    assert sum(1 for f in fragments if f["index"] == 0) > 2  # really in pieces
    indexes = [f["index"] for f in fragments]
    assert indexes != sorted(indexes)  # interleaved across calls
    conn.close()


def test_errors_have_the_openai_body_shape(server: ScriptedModelServer) -> None:
    server.add_error(429, "Slow down.", retry_after=1.5)
    conn = connect(server)

    response, raw = post(conn, ask())

    assert response.status == 429
    assert response.getheader("retry-after-ms") == "1500"
    assert json.loads(raw)["error"] == {
        "message": "Slow down.",
        "type": "rate_limit_error",
        "param": None,
        "code": None,
    }
    conn.close()


def test_an_unknown_route_is_a_404(server: ScriptedModelServer) -> None:
    conn = connect(server)

    conn.request("POST", "/v1/embeddings", "{}", {"Content-Type": "application/json"})
    response = conn.getresponse()

    assert response.status == 404
    assert "No route" in json.loads(response.read())["error"]["message"]
    assert server.requests == []
    conn.close()


# -- delays and hangs --------------------------------------------------------------------------


async def test_add_delay_delays_the_next_reply(server: ScriptedModelServer) -> None:
    server.add_delay(30)
    server.add_text("late")
    server.add_text("on time")
    client = AsyncOpenAI(base_url=server.url, api_key="sk-x", max_retries=0, timeout=0.3)

    with pytest.raises(APITimeoutError):
        await reply_text(client)
    assert await reply_text(client) == "on time"
    await client.close()


async def test_latency_applies_to_every_call() -> None:
    with ScriptedModelServer(latency=30) as server:
        server.set_default("slow")
        client = AsyncOpenAI(base_url=server.url, api_key="sk-x", max_retries=0, timeout=0.3)

        with pytest.raises(APITimeoutError):
            await reply_text(client)
        await client.close()


def test_a_hanging_request_is_released_by_stop(server: ScriptedModelServer) -> None:
    server.add_hang()
    outcome: list[BaseException | int] = []

    def call() -> None:
        conn = connect(server)
        try:
            response, _ = post(conn, ask())
            outcome.append(response.status)
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            outcome.append(exc)
        finally:
            conn.close()

    caller = threading.Thread(target=call)
    caller.start()
    while not server.requests:  # wait until the request is in
        threading.Event().wait(0.01)

    server.stop()
    caller.join(timeout=10)

    assert not caller.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], BaseException)


async def test_many_concurrent_calls_are_all_answered(server: ScriptedModelServer) -> None:
    server.set_default("ok")
    model = scripted_model(server)

    async def turn(i: int) -> str | None:
        items = [item async for item in model.generate(ModelRequest([Message.user(f"#{i}")]))]
        assert isinstance(items[-1], ModelResponse)
        return items[-1].message.content

    answers = await asyncio.gather(*(turn(i) for i in range(50)))
    await model.close()

    assert answers == ["ok"] * 50
    assert len(server.requests) == 50


# -- scripted_model ----------------------------------------------------------------------------


async def test_scripted_model_calls_the_server(server: ScriptedModelServer) -> None:
    server.add_text("from the script")
    model = scripted_model(server, "my-model")

    items = [item async for item in model.generate(ModelRequest([Message.user("hi")]))]
    await model.close()

    assert isinstance(model, OpenAIModel)
    assert isinstance(items[-1], ModelResponse)
    assert items[-1].message.content == "from the script"
    assert server.requests[0]["model"] == "my-model"


async def test_a_request_to_a_stopped_server_fails() -> None:
    server = ScriptedModelServer().start()
    url = server.url
    server.stop()
    client = AsyncOpenAI(base_url=url, api_key="sk-x", max_retries=0)

    with pytest.raises(APIConnectionError):
        await reply_text(client)
    await client.close()
