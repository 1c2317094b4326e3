"""OpenAIModel against a real HTTP server through the real ``openai`` client (no mocks)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from openai import AsyncOpenAI

from runner_core.errors import ModelConnectionError, ModelError, ModelHTTPError, ModelTimeoutError
from runner_core.messages import Message, ToolCall
from runner_core.model import (
    GenerationConfig,
    Model,
    ModelPrice,
    ModelRequest,
    ModelResponse,
    TextDelta,
)
from runner_core.openai_model import DEFAULT_BASE_URL, NO_API_KEY, OpenAIModel
from runner_core.runner import Runner
from runner_core.testing import ScriptedModelServer, scripted_model
from workers.agents import build_assistant
from workers.demo_model import DemoModel
from workers.settings import Settings

SECRET_KEY = "sk-live-0123456789abcdefSECRET"

ADD_TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


@pytest.fixture
def server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as scripted:
        yield scripted


@pytest.fixture
async def model(server: ScriptedModelServer) -> AsyncIterator[OpenAIModel]:
    scripted = scripted_model(server, "gpt-test")
    yield scripted
    await scripted.close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def request(text: str = "hi", **generation: Any) -> ModelRequest:
    return ModelRequest(messages=[Message.user(text)], generation=GenerationConfig(**generation))


async def collect(model: Model, req: ModelRequest) -> tuple[list[str], ModelResponse]:
    deltas: list[str] = []
    responses: list[ModelResponse] = []
    async for item in model.generate(req):
        if isinstance(item, TextDelta):
            assert not responses, "a text delta came after the response"
            deltas.append(item.text)
        else:
            responses.append(item)
    assert len(responses) == 1, "exactly one ModelResponse ends a turn"
    return deltas, responses[0]


# -- streaming ---------------------------------------------------------------------------------


async def test_streaming_yields_text_deltas_then_the_response(
    server: ScriptedModelServer, model: OpenAIModel
) -> None:
    server.add_text("The answer is five.", chunks=["The ", "answer ", "is ", "five."])

    deltas, response = await collect(model, request("What is 2 + 3?"))

    assert deltas == ["The ", "answer ", "is ", "five."]
    assert response.message == Message.assistant("The answer is five.")
    assert response.finish_reason == "stop"
    body = server.requests[0]
    assert body["model"] == "gpt-test"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": "What is 2 + 3?"}]


async def test_streaming_usage_comes_from_the_final_usage_chunk(
    server: ScriptedModelServer, model: OpenAIModel
) -> None:
    server.add_text("ok", usage={"prompt_tokens": 42, "completion_tokens": 7})

    _, response = await collect(model, request())

    assert response.usage.prompt_tokens == 42
    assert response.usage.completion_tokens == 7
    assert response.usage.total_tokens == 49
    assert response.usage.model_calls == 1


async def test_parallel_tool_calls_are_assembled_from_streamed_fragments(
    server: ScriptedModelServer, model: OpenAIModel
) -> None:
    server.add_tool_calls(
        [
            ("call_1", "add", {"a": 1, "b": 2}),
            ("call_2", "add", {"a": 30, "b": 12}),
            ("call_3", "lookup", '{"city": "Par'),  # invalid JSON is passed on as sent
        ],
        text="Let me compute that.",
    )

    deltas, response = await collect(model, request())

    assert "".join(deltas) == "Let me compute that."
    assert response.message.content == "Let me compute that."
    assert response.message.tool_calls == [
        ToolCall.make("call_1", "add", {"a": 1, "b": 2}),
        ToolCall.make("call_2", "add", {"a": 30, "b": 12}),
        ToolCall.make("call_3", "lookup", '{"city": "Par'),
    ]
    assert response.finish_reason == "tool_calls"


async def test_tool_calls_without_text_give_an_assistant_message_without_content(
    server: ScriptedModelServer, model: OpenAIModel
) -> None:
    server.add_tool_calls([("call_9", "add", {"a": 4, "b": 5})])

    deltas, response = await collect(model, request())

    assert deltas == []
    assert response.message.content is None
    assert response.message.tool_calls == [ToolCall.make("call_9", "add", {"a": 4, "b": 5})]


async def test_stopping_early_releases_the_stream(
    server: ScriptedModelServer, model: OpenAIModel
) -> None:
    server.add_text("one two three four five")
    server.add_text("again")

    stream = model.generate(request())
    first = await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    _, response = await collect(model, request())

    assert first == TextDelta("one ")
    assert response.message.content == "again"


class _RawStreamServer:
    """An endpoint that answers every streaming request with ``body`` (raw SSE bytes) and
    remembers the request headers."""

    def __init__(self, body: bytes) -> None:
        self.headers: list[dict[str, str]] = []
        seen = self.headers

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                seen.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


async def _stream_from(body: bytes) -> tuple[list[str], ModelResponse, list[dict[str, str]]]:
    endpoint = _RawStreamServer(body)
    model = OpenAIModel("gpt-test", base_url=endpoint.url, api_key="sk-raw-key")
    try:
        deltas, response = await collect(model, request())
        return deltas, response, endpoint.headers
    finally:
        await model.close()
        endpoint.close()


async def test_a_stream_without_any_choice_is_a_model_error() -> None:
    # Given an endpoint that answers a streaming request with nothing but [DONE]
    with pytest.raises(ModelError, match="without any choices"):
        await _stream_from(b"data: [DONE]\n\n")


async def test_a_streamed_call_sends_the_api_key_as_a_bearer_token() -> None:
    chunk = b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n'

    deltas, response, headers = await _stream_from(chunk + b"data: [DONE]\n\n")

    assert headers[0]["authorization"] == "Bearer sk-raw-key"
    assert deltas == ["hi"]
    assert response.message.content == "hi"


async def test_a_chunk_that_is_not_a_json_object_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="not a JSON object"):
        await _stream_from(b'data: ["what"]\n\ndata: [DONE]\n\n')


async def test_an_error_inside_the_stream_is_a_model_error_with_its_message() -> None:
    body = b'data: {"error": {"message": "overloaded, try later"}}\n\n'

    with pytest.raises(ModelError, match="overloaded, try later"):
        await _stream_from(body)


# -- non-streaming -----------------------------------------------------------------------------


async def test_non_streaming_yields_one_response(
    server: ScriptedModelServer, model: OpenAIModel
) -> None:
    server.add_text("Plain answer.", usage={"prompt_tokens": 3, "completion_tokens": 2})

    deltas, response = await collect(model, request(stream=False))

    assert deltas == []
    assert response.message == Message.assistant("Plain answer.")
    assert response.usage.prompt_tokens == 3
    assert response.usage.completion_tokens == 2
    assert response.usage.total_tokens == 5
    assert response.usage.model_calls == 1
    assert response.finish_reason == "stop"
    assert "stream" not in server.requests[0]
    assert "stream_options" not in server.requests[0]


async def test_non_streaming_tool_calls(server: ScriptedModelServer, model: OpenAIModel) -> None:
    server.add_tool_calls([("call_1", "add", {"a": 1, "b": 2}), ("call_2", "add", "not json")])

    _, response = await collect(model, request(stream=False))

    assert response.message.tool_calls == [
        ToolCall.make("call_1", "add", {"a": 1, "b": 2}),
        ToolCall.make("call_2", "add", "not json"),
    ]
    assert response.finish_reason == "tool_calls"


# -- request mapping ---------------------------------------------------------------------------


async def test_generation_config_and_tools_are_sent(
    server: ScriptedModelServer, model: OpenAIModel
) -> None:
    server.add_text("ok")
    generation = GenerationConfig(
        temperature=0.2,
        top_p=0.9,
        max_tokens=128,
        stop=["END"],
        parallel_tool_calls=False,
        extra_body={"seed": 7, "reasoning_effort": "low"},
    )

    await collect(
        model,
        ModelRequest(messages=[Message.user("hi")], tools=[ADD_TOOL], generation=generation),
    )

    body = server.requests[0]
    assert body["temperature"] == 0.2
    assert body["top_p"] == 0.9
    assert body["max_tokens"] == 128
    assert body["stop"] == ["END"]
    assert body["parallel_tool_calls"] is False
    assert body["seed"] == 7
    assert body["reasoning_effort"] == "low"
    assert body["tools"] == [ADD_TOOL]


async def test_unset_options_and_empty_tools_are_left_out(
    server: ScriptedModelServer, model: OpenAIModel
) -> None:
    server.add_text("ok")

    await collect(model, request())

    assert set(server.requests[0]) == {"model", "messages", "stream", "stream_options"}


async def test_a_tool_call_history_is_sent_in_openai_shape(
    server: ScriptedModelServer, model: OpenAIModel
) -> None:
    server.add_text("3")
    call = ToolCall.make("call_1", "add", {"a": 1, "b": 2})
    history = [
        Message.system("Be brief."),
        Message.user("1 + 2?"),
        Message.assistant(tool_calls=[call]),
        Message.tool("call_1", "3", name="add"),
    ]

    await collect(model, ModelRequest(messages=history, tools=[ADD_TOOL]))

    assert server.requests[0]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "1 + 2?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'},
                }
            ],
        },
        {"role": "tool", "content": "3", "tool_call_id": "call_1", "name": "add"},
    ]


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("status", [400, 429, 500])
async def test_http_errors_become_model_http_errors(
    server: ScriptedModelServer, model: OpenAIModel, status: int, stream: bool
) -> None:
    server.add_error(status, "The provider says no.")

    with pytest.raises(ModelHTTPError) as caught:
        await collect(model, request(stream=stream))

    assert caught.value.code == str(status)
    assert str(status) in caught.value.message
    assert "The provider says no." in caught.value.message
    assert "gpt-test" in caught.value.message


async def test_the_clients_own_retries_are_used(server: ScriptedModelServer) -> None:
    server.add_error(503, "busy", retry_after=0)
    server.add_text("second attempt")
    model = OpenAIModel("gpt-test", base_url=server.url, api_key="sk-x", max_retries=1)

    try:
        _, response = await collect(model, request())
    finally:
        await model.close()

    assert response.message.content == "second attempt"
    assert len(server.requests) == 2


async def test_no_answer_in_time_is_a_model_timeout_error(server: ScriptedModelServer) -> None:
    server.add_hang()
    model = OpenAIModel("gpt-test", base_url=server.url, api_key="sk-x", timeout=0.5, max_retries=0)

    try:
        with pytest.raises(ModelTimeoutError) as caught:
            await collect(model, request())
    finally:
        await model.close()

    assert server.url in caught.value.message


async def test_connection_refused_is_a_model_connection_error_naming_the_url() -> None:
    url = closed_port_url()
    model = OpenAIModel("gpt-test", base_url=url, api_key="sk-x", max_retries=0)

    try:
        with pytest.raises(ModelConnectionError) as caught:
            await collect(model, request())
    finally:
        await model.close()

    assert url in caught.value.message
    assert "OPENAI_BASE_URL" in caught.value.message


# -- endpoint and key: arguments, then the environment; empty means unset ----------------------


async def test_a_server_that_needs_no_key_works_with_OPENAI_BASE_URL_alone(
    monkeypatch: pytest.MonkeyPatch, server: ScriptedModelServer
) -> None:
    # Given a local OpenAI-compatible server and no key anywhere
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    server.add_text("no key needed")
    model = OpenAIModel("scripted", max_retries=0)

    try:
        _, response = await collect(model, request())
    finally:
        await model.close()

    assert response.message.content == "no key needed"
    assert model.base_url == server.url


async def test_a_base_url_without_a_key_sends_the_placeholder_not_a_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    endpoint = _RawStreamServer(
        b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n'
    )
    model = OpenAIModel("gpt-test", base_url=endpoint.url)
    try:
        await collect(model, request())
    finally:
        await model.close()
        endpoint.close()

    assert endpoint.headers[0]["authorization"] == f"Bearer {NO_API_KEY}"


@pytest.mark.parametrize("empty", ["", "  "])
async def test_empty_variables_count_as_unset(
    monkeypatch: pytest.MonkeyPatch, server: ScriptedModelServer, empty: str
) -> None:
    # Given OPENAI_API_KEY set but empty (compose files write such values), a keyless server
    monkeypatch.setenv("OPENAI_API_KEY", empty)
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    server.add_text("reached")
    model = OpenAIModel("scripted", base_url=empty, api_key=empty, max_retries=0)

    try:
        _, response = await collect(model, request())
    finally:
        await model.close()

    assert response.message.content == "reached"
    assert server.requests[0]["model"] == "scripted"


async def test_an_empty_OPENAI_BASE_URL_means_the_openai_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given both variables empty: the endpoint is the OpenAI API, which needs a key, so the
    # model says so before sending anything (not "Request URL is missing a protocol").
    # (A context, so the suite's guard sees its loopback URL again at teardown.)
    with monkeypatch.context() as env:
        env.setenv("OPENAI_BASE_URL", "")
        env.setenv("OPENAI_API_KEY", "")
        model = OpenAIModel("gpt-test")

        with pytest.raises(ModelError) as caught:
            await collect(model, request())

    assert DEFAULT_BASE_URL in caught.value.message
    assert "OPENAI_API_KEY" in caught.value.message
    assert "protocol" not in caught.value.message


@pytest.mark.parametrize(
    "where", ["argument", "environment", "default"], ids=lambda where: f"base_url_from_{where}"
)
async def test_the_openai_api_never_gets_a_placeholder_key(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    with monkeypatch.context() as env:
        env.delenv("OPENAI_API_KEY")
        env.delenv("OPENAI_BASE_URL")
        if where == "environment":
            env.setenv("OPENAI_BASE_URL", "https://api.openai.com/v1")
        base_url = "https://api.openai.com/v1/" if where == "argument" else None
        model = OpenAIModel("gpt-test", base_url=base_url)

        with pytest.raises(ModelError, match="needs an API key: pass api_key= or set OPENAI_API"):
            await collect(model, request())


async def test_a_base_url_that_is_not_http_is_a_model_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with monkeypatch.context() as env:
        env.setenv("OPENAI_BASE_URL", "127.0.0.1:8000/v1")
        model = OpenAIModel("gpt-test")

        with pytest.raises(ModelError, match=r"OPENAI_BASE_URL='127.0.0.1:8000/v1' .* http\(s\)"):
            await collect(model, request())


def test_worker_settings_use_a_keyless_server_with_OPENAI_BASE_URL_alone(
    monkeypatch: pytest.MonkeyPatch, server: ScriptedModelServer
) -> None:
    # Given a worker environment naming only the endpoint
    monkeypatch.delenv("OPENAI_API_KEY")
    settings = Settings.from_env({"OPENAI_BASE_URL": server.url, "AGENT_RUNNER_MODEL": "scripted"})
    server.add_text("from the keyless server")

    # When the built-in assistant runs
    runner = Runner("assistant", build_assistant(settings))
    try:
        completion = runner.run_sync("alice", "s1", "hello")
    finally:
        runner.close_sync()

    # Then it called that server, not the offline demo model
    assert settings.uses_openai
    assert completion.status == "completed", completion.error
    assert completion.final_text == "from the keyless server"
    assert server.requests[0]["model"] == "scripted"


def test_worker_settings_treat_empty_openai_variables_as_unset() -> None:
    settings = Settings.from_env({"OPENAI_BASE_URL": "", "OPENAI_API_KEY": " "})

    assert not settings.uses_openai
    assert isinstance(build_assistant(settings).model, DemoModel)


async def test_the_api_key_never_appears_in_errors_or_repr(server: ScriptedModelServer) -> None:
    # Given a provider that echoes the key back, as some do on 401
    server.add_error(401, f"Incorrect API key provided: {SECRET_KEY}.")
    server.add_hang()
    model = OpenAIModel(
        "gpt-test", base_url=server.url, api_key=SECRET_KEY, timeout=0.5, max_retries=0
    )
    refused = OpenAIModel("gpt-test", base_url=closed_port_url(), api_key=SECRET_KEY, max_retries=0)
    messages: list[str] = []
    try:
        for candidate in (model, model, refused):
            with pytest.raises(ModelError) as caught:
                await collect(candidate, request())
            messages += [caught.value.message, str(caught.value)]
    finally:
        await model.close()
        await refused.close()

    assert "Incorrect API key provided" in messages[0]
    for text in [*messages, repr(model), repr(refused)]:
        assert SECRET_KEY not in text


async def test_the_api_key_from_the_environment_never_appears_either(
    monkeypatch: pytest.MonkeyPatch, server: ScriptedModelServer
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET_KEY)
    server.add_error(401, f"Incorrect API key provided: {SECRET_KEY}.")
    model = OpenAIModel("gpt-test", base_url=server.url, max_retries=0)

    try:
        with pytest.raises(ModelHTTPError) as caught:
            await collect(model, request())
    finally:
        await model.close()

    assert SECRET_KEY not in caught.value.message
    assert SECRET_KEY not in repr(model)


# -- client ownership and lifecycle ------------------------------------------------------------


def test_a_model_is_built_without_an_event_loop_or_io() -> None:
    model = OpenAIModel(
        "gpt-test",
        base_url=closed_port_url(),
        price=ModelPrice(prompt_per_million=1, completion_per_million=2),
    )

    assert isinstance(model, Model)
    assert model.name == "gpt-test"
    assert model.price is not None


def test_a_model_works_on_successive_event_loops(server: ScriptedModelServer) -> None:
    # Celery tasks may each run their own loop with the same model object; each closes it at
    # the end of its loop, and the next call makes a new client on the new loop.
    server.add_text("first")
    server.add_text("second")
    model = scripted_model(server)

    async def turn() -> str | None:
        try:
            _, response = await collect(model, request())
        finally:
            await model.close()
        return response.message.content

    assert asyncio.run(turn()) == "first"
    assert asyncio.run(turn()) == "second"


async def test_a_client_passed_in_is_used_and_not_closed(server: ScriptedModelServer) -> None:
    server.add_text("via your client")
    server.add_text("still open")
    client = AsyncOpenAI(base_url=server.url, api_key="sk-x", max_retries=0)
    model = OpenAIModel("gpt-test", client=client)

    _, response = await collect(model, request())
    await model.close()

    assert response.message.content == "via your client"
    assert not client.is_closed()
    completion = await client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == "still open"
    await client.close()


async def test_close_is_idempotent(server: ScriptedModelServer) -> None:
    server.add_text("ok")
    model = scripted_model(server)
    await model.close()  # before any call

    await collect(model, request())
    await model.close()
    await model.close()
