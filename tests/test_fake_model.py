"""FakeModel: the in-process model double gives the agent loop what the server path gives.

Each contract test runs against both doubles: FakeModel, and ScriptedModelServer through
OpenAIModel (``scripted_model``). The agreement tests feed one script to both and compare
everything the agent loop sees, and the requests each recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from runner_core import (
    GenerationConfig,
    Message,
    Model,
    ModelConnectionError,
    ModelError,
    ModelHTTPError,
    ModelRequest,
    ModelResponse,
    ModelTimeoutError,
    TextDelta,
    ToolCall,
    Usage,
)
from runner_core.testing import FakeModel, ScriptedModelServer, ScriptedReply, scripted_model

Item = TextDelta | ModelResponse
Scripted = FakeModel | ScriptedModelServer

ADD_SCHEMA = {
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


@dataclass
class Double:
    """A scripted model double: where the script goes, and how to build the model."""

    kind: str
    script: Scripted
    make_model: Callable[..., Model]


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as srv:
        yield srv


@pytest.fixture
def fresh_server(server: ScriptedModelServer) -> ScriptedModelServer:
    server.reset()
    return server


@pytest.fixture(params=["fake", "server"])
async def double(
    request: pytest.FixtureRequest, fresh_server: ScriptedModelServer
) -> AsyncIterator[Double]:
    models: list[Model] = []
    if request.param == "fake":
        fake = FakeModel()

        def make_fake(timeout: float | None = 60.0) -> Model:
            fake.timeout = timeout
            return fake

        yield Double("fake", fake, make_fake)
    else:

        def make_client(timeout: float | None = 60.0) -> Model:
            models.append(scripted_model(fresh_server, timeout=timeout))
            return models[-1]

        yield Double("server", fresh_server, make_client)
    for model in models:
        await model.close()


@pytest.fixture
async def pair(fresh_server: ScriptedModelServer) -> AsyncIterator[tuple[Model, FakeModel]]:
    """The server path and a FakeModel, for one script fed to both."""
    client = scripted_model(fresh_server)
    yield client, FakeModel()
    await client.close()


def ask(text: str = "hi", *, stream: bool = True, **options: Any) -> ModelRequest:
    return ModelRequest(
        [Message.system("Be brief."), Message.user(text)],
        generation=GenerationConfig(stream=stream, **options),
    )


async def turn(model: Model, request: ModelRequest | None = None) -> list[Item]:
    return [item async for item in model.generate(request or ask())]


async def outcome(model: Model, request: ModelRequest) -> list[Item] | ModelError:
    try:
        return await turn(model, request)
    except ModelError as exc:
        return exc


async def until_received(script: Scripted) -> None:
    """Wait until a call has reached the script (and waits there on its reply)."""
    for _ in range(1000):
        if script.requests:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no call reached the script within 10 s")


# -- the contract, for each double ------------------------------------------------------------


def test_fake_model_is_a_model() -> None:
    assert isinstance(FakeModel(), Model)


@pytest.mark.parametrize("stream", [True, False])
async def test_a_text_answer_with_the_default_usage(double: Double, stream: bool) -> None:
    double.script.add_text("Hello there friend")

    items = await turn(double.make_model(), ask(stream=stream))

    assert items[-1] == ModelResponse(
        message=Message.assistant("Hello there friend"),
        usage=Usage(prompt_tokens=10, completion_tokens=3, total_tokens=13, model_calls=1),
        finish_reason="stop",
    )


async def test_streamed_deltas_join_to_the_text(double: Double) -> None:
    double.script.add_text("Hello there friend", chunks=3)

    items = await turn(double.make_model())

    deltas = [item.text for item in items if isinstance(item, TextDelta)]
    assert deltas == list(ScriptedReply.text("Hello there friend", chunks=3).deltas)
    assert "".join(deltas) == "Hello there friend"
    assert len(items) == len(deltas) + 1 and isinstance(items[-1], ModelResponse)


async def test_a_non_streaming_call_yields_only_the_response(double: Double) -> None:
    double.script.add_text("one two three")

    items = await turn(double.make_model(), ask(stream=False))

    assert len(items) == 1 and isinstance(items[0], ModelResponse)


@pytest.mark.parametrize("stream", [True, False])
async def test_tool_calls(double: Double, stream: bool) -> None:
    double.script.add_tool_calls(
        [("call_1", "add", {"a": 2, "b": 3}), ("call_2", "echo", "{not json")]
    )

    items = await turn(double.make_model(), ask(stream=stream))

    response = items[-1]
    assert isinstance(response, ModelResponse)
    assert response.message == Message.assistant(
        tool_calls=[
            ToolCall.make("call_1", "add", {"a": 2, "b": 3}),
            ToolCall.make("call_2", "echo", "{not json"),
        ]
    )
    assert response.finish_reason == "tool_calls"
    assert response.usage.completion_tokens == 2  # one per call


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500, 503])
async def test_an_error_is_a_model_http_error_with_the_status(double: Double, status: int) -> None:
    double.script.add_error(status, "Scripted failure.")

    with pytest.raises(ModelHTTPError) as caught:
        await turn(double.make_model())

    assert caught.value.code == str(status)
    assert f"HTTP {status}" in str(caught.value)
    assert "Scripted failure." in str(caught.value)


async def test_an_exhausted_script_is_a_clear_error(double: Double) -> None:
    double.script.add_text("only one")
    model = double.make_model()
    await turn(model)

    with pytest.raises(ModelHTTPError, match="no scripted reply left") as caught:
        await turn(model)

    assert caught.value.code == "500"
    assert "set_default()" in str(caught.value)


async def test_set_default_answers_once_the_queue_is_empty(double: Double) -> None:
    double.script.set_default("always")
    double.script.add_text("queued")
    model = double.make_model()

    answers = [(await turn(model))[-1] for _ in range(3)]

    assert [a.message.content for a in answers if isinstance(a, ModelResponse)] == [
        "queued",
        "always",
        "always",
    ]


async def test_a_matching_reply_goes_to_the_request_that_mentions_it(double: Double) -> None:
    double.script.add_text("for alice", match="I am alice")
    double.script.add_text("for anyone")
    model = double.make_model()

    first, second = await turn(model, ask("I am alice")), await turn(model, ask("no name"))

    assert isinstance(first[-1], ModelResponse) and first[-1].message.content == "for alice"
    assert isinstance(second[-1], ModelResponse) and second[-1].message.content == "for anyone"


async def test_requests_are_recorded_as_openai_bodies(double: Double) -> None:
    double.script.add_text("ok")
    request = ModelRequest(
        [Message.system("Be brief."), Message.user("hi")],
        tools=[ADD_SCHEMA],
        generation=GenerationConfig(stream=False, temperature=0.5),
    )

    await turn(double.make_model(), request)

    [body] = double.script.requests
    assert body["model"] == "scripted"
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    assert body["tools"] == [ADD_SCHEMA]
    assert body["temperature"] == 0.5
    assert double.script.pending == 0


async def test_a_hang_past_the_timeout_is_a_model_timeout(double: Double) -> None:
    double.script.add_hang()

    with pytest.raises(ModelTimeoutError):
        await turn(double.make_model(timeout=0.2))


async def test_a_delay_past_the_timeout_is_a_model_timeout_and_the_next_reply_is_on_time(
    double: Double,
) -> None:
    double.script.add_delay(30)
    double.script.add_text("late")
    double.script.add_text("on time")
    model = double.make_model(timeout=0.2)

    with pytest.raises(ModelTimeoutError):
        await turn(model)
    items = await turn(model)

    assert isinstance(items[-1], ModelResponse) and items[-1].message.content == "on time"


async def test_a_short_delay_is_waited_out(double: Double) -> None:
    double.script.add_text("after a pause", delay=0.05, chunk_delay=0.01)

    items = await turn(double.make_model(timeout=5))

    assert isinstance(items[-1], ModelResponse) and items[-1].message.content == "after a pause"


async def test_reset_drops_a_hanging_call(double: Double) -> None:
    double.script.add_hang()
    call = asyncio.create_task(turn(double.make_model(timeout=None)))
    await until_received(double.script)

    double.script.reset()

    with pytest.raises(ModelConnectionError):
        await asyncio.wait_for(call, 10)


async def test_a_hanging_call_is_cancellable(double: Double) -> None:
    double.script.add_hang()
    call = asyncio.create_task(turn(double.make_model(timeout=None)))
    await until_received(double.script)

    call.cancel()

    with pytest.raises(asyncio.CancelledError):
        await call


# -- the two doubles agree -------------------------------------------------------------------


SCRIPTS: dict[str, Callable[[Scripted], None]] = {
    "words": lambda s: s.add_text("Hello there,  friend. "),
    "chunks": lambda s: s.add_text("Hello there friend", chunks=["He", "llo there", " friend"]),
    "empty text": lambda s: s.add_text(""),
    "own usage": lambda s: s.add_text("x", usage={"prompt_tokens": 100, "completion_tokens": 7}),
    "own total": lambda s: s.add_text("x", usage={"prompt_tokens": 1, "total_tokens": 9}),
    "tool calls": lambda s: s.add_tool_calls(
        [("call_1", "add", {"a": 1, "b": 2}), ("call_2", "echo", "{bad")]
    ),
    "text and tool calls": lambda s: s.add_tool_calls(
        [("call_1", "add", {"a": 1, "b": 2})], text="Let me add."
    ),
    "no call id or arguments": lambda s: s.add_tool_calls([("", "add", "")]),
}


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("script", SCRIPTS.values(), ids=SCRIPTS.keys())
async def test_both_doubles_give_the_same_items_for_the_same_script(
    pair: tuple[Model, FakeModel],
    fresh_server: ScriptedModelServer,
    script: Callable[[Scripted], None],
    stream: bool,
) -> None:
    client, fake = pair
    script(fresh_server)
    script(fake)

    over_http = await turn(client, ask(stream=stream))
    in_process = await turn(fake, ask(stream=stream))

    assert in_process == over_http


@pytest.mark.parametrize("status", [400, 401, 403, 404, 408, 409, 422, 429, 500, 502, 503])
async def test_both_doubles_raise_the_same_error_for_the_same_status(
    pair: tuple[Model, FakeModel], fresh_server: ScriptedModelServer, status: int
) -> None:
    client, fake = pair
    fresh_server.add_error(status, "Scripted failure.")
    fake.add_error(status, "Scripted failure.")

    over_http = await outcome(client, ask())
    in_process = await outcome(fake, ask())

    assert isinstance(over_http, ModelError) and isinstance(in_process, ModelError)
    assert type(in_process) is type(over_http)
    assert (in_process.error_type, in_process.code) == (over_http.error_type, over_http.code)


@pytest.mark.parametrize("stream", [True, False])
async def test_both_doubles_record_the_same_request_bodies(
    pair: tuple[Model, FakeModel], fresh_server: ScriptedModelServer, stream: bool
) -> None:
    client, fake = pair
    history = [
        Message.system("Be brief."),
        Message.user("2 + 3?"),
        Message.assistant(tool_calls=[ToolCall.make("call_1", "add", {"a": 2, "b": 3})]),
        Message.tool("call_1", "5", name="add"),
    ]
    generation = GenerationConfig(
        stream=stream,
        temperature=0.2,
        top_p=0.9,
        max_tokens=50,
        stop=["END"],
        parallel_tool_calls=False,
        extra_body={"seed": 7},
    )
    for scripted in (fresh_server, fake):
        scripted.add_text("5")

    for model in (client, fake):
        await turn(model, ModelRequest(history, tools=[ADD_SCHEMA], generation=generation))

    assert fake.requests == fresh_server.requests
