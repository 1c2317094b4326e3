"""`OpenAIModel`: the :class:`~runner_core.model.Model` protocol over ``openai.AsyncOpenAI``.

Works with any OpenAI-compatible chat-completions endpoint. Streaming turns yield text deltas as
they arrive and assemble tool calls from their streamed fragments; usage comes from the final
chunk (``stream_options.include_usage``). ``openai`` errors are translated here, at the boundary,
into the :class:`~runner_core.errors.ModelError` branch; retries are the client's own.

Streaming turns go through the client's public ``post`` (same endpoint, auth, retries, timeouts
and error mapping as ``chat.completions.create``) with the request body built here and the
chunks read as plain JSON: ``create`` walks every message and tool schema to transform it and
builds a pydantic model per chunk, which together cost more CPU per call than the whole rest of
a run (see docs/benchmarks.md).

The endpoint and key are resolved here, not by the client: an empty ``OPENAI_BASE_URL`` or
``OPENAI_API_KEY`` counts as unset (the client would call an empty URL), and an endpoint other
than the OpenAI API that is given without a key gets :data:`NO_API_KEY` (a local server that
needs no key; the client refuses to start without one). The OpenAI API itself never gets it.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any
from urllib.parse import urlsplit

import openai
from openai import AsyncOpenAI, AsyncStream, RequestOptions

from .errors import (
    ConfigurationError,
    ModelConnectionError,
    ModelError,
    ModelHTTPError,
    ModelTimeoutError,
)
from .events import Usage
from .messages import FunctionCall, Message, ToolCall
from .model import GenerationConfig, ModelPrice, ModelRequest, ModelResponse, TextDelta

__all__ = ["DEFAULT_BASE_URL", "NO_API_KEY", "OpenAIModel"]

#: The endpoint when neither ``base_url`` nor ``OPENAI_BASE_URL`` is given.
DEFAULT_BASE_URL = "https://api.openai.com/v1"

#: The key sent to an endpoint given without one (servers that need no key ignore it).
NO_API_KEY = "no-key"

#: Longest provider error text carried into a ModelHTTPError message.
_MAX_PROVIDER_MESSAGE = 500


class OpenAIModel:
    """A chat model behind an OpenAI-compatible endpoint.

    Args:
        name: the model name sent in each request (``gpt-4o-mini``, ...).
        base_url: the endpoint (``http://host:port/v1``); default ``OPENAI_BASE_URL``, then
            the OpenAI API. Ignored when ``client`` is given.
        api_key: default ``OPENAI_API_KEY``; an endpoint other than the OpenAI API needs
            none (a server without auth ignores the :data:`NO_API_KEY` sent then). Empty
            values, here or in the environment, count as unset. Ignored when ``client`` is
            given.
        client: an ``AsyncOpenAI`` to use as is. The model never closes a client it was given.
        price: per-million-token prices, for the cost on run completions.
        timeout: seconds per attempt (``None``: no limit); 600 as in the ``openai`` client, so
            a slow model (a long reasoning step before its first token) is not cut off and
            asked again. Ignored when ``client`` is given.
        max_retries: the client's own retries on connection errors, 408, 409, 429 and 5xx.
            Ignored when ``client`` is given.
        default_headers: headers sent with every request. Ignored when ``client`` is given.

    Without ``client``, the ``AsyncOpenAI`` is created on the first :meth:`generate`, on the
    event loop running it (an HTTP connection pool belongs to one loop), so building a model does
    no I/O and needs no loop. A call from another loop gets its own client. Call :meth:`close`
    before the loop ends (e.g. at the end of each ``asyncio.run``); the next call on a new
    loop creates a new client.
    """

    def __init__(
        self,
        name: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        client: AsyncOpenAI | None = None,
        price: ModelPrice | None = None,
        timeout: float | None = 600.0,
        max_retries: int = 2,
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        if not name:
            raise ConfigurationError(
                "OpenAIModel needs a model name, e.g. OpenAIModel('gpt-4o-mini')."
            )
        self.name = name
        self.price = price
        self._base_url = base_url
        self._api_key = api_key
        self._timeout = timeout
        self._max_retries = max_retries
        self._default_headers = dict(default_headers) if default_headers else None
        self._given_client = client
        # The clients this model made, one per event loop (a connection pool belongs to one).
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncOpenAI] = (
            weakref.WeakKeyDictionary()
        )
        # Learned from the first client: what OPENAI_BASE_URL / OPENAI_API_KEY resolved to.
        self._resolved_base_url = client.base_url if client is not None else _non_empty(base_url)
        self._resolved_api_key = client.api_key if client is not None else _non_empty(api_key)

    def __repr__(self) -> str:
        # Never the API key.
        return f"OpenAIModel(name={self.name!r}, base_url={self.base_url!r})"

    @property
    def base_url(self) -> str:
        """The endpoint this model calls (resolved from the environment once a client exists)."""
        if self._resolved_base_url is None:
            return "the OPENAI_BASE_URL default"
        return str(self._resolved_base_url).rstrip("/")

    async def generate(self, request: ModelRequest) -> AsyncIterator[TextDelta | ModelResponse]:
        """Run one model turn. See :meth:`runner_core.model.Model.generate`.

        Raises:
            ModelHTTPError: the endpoint answered 4xx/5xx (``code`` is the status).
            ModelTimeoutError: no answer within ``timeout``.
            ModelConnectionError: the endpoint could not be reached.
            ModelError: anything else the endpoint got wrong (e.g. an empty stream).
        """
        client = self._get_client()
        options = _request_options(request)
        try:
            if request.generation.stream:
                # aclosing: a consumer that stops early releases the HTTP response now, not at GC.
                async with aclosing(self._stream(client, options)) as items:
                    async for item in items:
                        yield item
            else:
                yield await self._complete(client, options)
        except openai.APIError as exc:
            raise self._translate(exc) from exc

    async def close(self) -> None:
        """Close the client this model created on the running loop (never one it was given).
        Idempotent; a later :meth:`generate` creates a new client.
        """
        client = self._clients.pop(asyncio.get_running_loop(), None)
        # Clients of loops that have ended cannot be closed from here; just let them go.
        for loop in [loop for loop in self._clients if loop.is_closed()]:
            del self._clients[loop]
        if client is not None:
            await client.close()

    # -- internals ---------------------------------------------------------------------------

    def _get_client(self) -> AsyncOpenAI:
        if self._given_client is not None:
            return self._given_client
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            base_url, api_key = self._endpoint()
            try:
                client = AsyncOpenAI(
                    api_key=api_key,
                    base_url=base_url,
                    timeout=self._timeout,
                    max_retries=self._max_retries,
                    default_headers=self._default_headers,
                    # Not openai's default wrapper: when it is garbage-collected unclosed (its
                    # loop ended without close()), it schedules its close on whatever loop runs
                    # then, which fails there with "Event loop is closed".
                    http_client=openai.DefaultAsyncHttpxClient(),
                )
            except openai.OpenAIError as exc:
                raise ModelError(
                    f"Cannot create the OpenAI client for model {self.name!r}: "
                    f"{self._redact(str(exc))}"
                ) from exc
            self._clients[loop] = client
            self._resolved_base_url = client.base_url
            self._resolved_api_key = api_key
        return client

    def _endpoint(self) -> tuple[str, str]:
        """The base URL and API key to call: the arguments, else ``OPENAI_BASE_URL`` and
        ``OPENAI_API_KEY``, an empty value counting as unset.

        Raises:
            ModelError: the base URL is not http(s), or the OpenAI API has no key.
        """
        given_url = _non_empty(self._base_url)
        base_url = given_url or _non_empty(os.environ.get("OPENAI_BASE_URL")) or DEFAULT_BASE_URL
        source = "base_url" if given_url else "OPENAI_BASE_URL"
        try:
            parts = urlsplit(base_url)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ModelError(
                f"{source}={base_url!r} for model {self.name!r} is not an http(s) URL; use "
                f"one like http://127.0.0.1:8000/v1 (or unset it for {DEFAULT_BASE_URL})."
            )
        api_key = _non_empty(self._api_key) or _non_empty(os.environ.get("OPENAI_API_KEY"))
        if api_key is None:
            if _is_openai_api(parts.hostname):
                raise ModelError(
                    f"Model {self.name!r} at {base_url} needs an API key: pass api_key= or set "
                    "OPENAI_API_KEY. For a server that needs no key, set OPENAI_BASE_URL (or "
                    "base_url=) to it."
                )
            api_key = NO_API_KEY
        return base_url, api_key

    async def _stream(
        self, client: AsyncOpenAI, options: dict[str, Any]
    ) -> AsyncGenerator[TextDelta | ModelResponse, None]:
        request_options: RequestOptions = {"security": {"bearer_auth": True}}
        extra_body = options.pop("extra_body", None)
        if extra_body:
            request_options["extra_json"] = extra_body
        body = {
            "model": self.name,
            "stream": True,
            "stream_options": {"include_usage": True},
            **options,
        }
        stream = await client.post(
            "/chat/completions",
            body=body,
            options=request_options,
            cast_to=object,
            stream=True,
            stream_cls=AsyncStream[object],
        )
        text_parts: list[str] = []
        calls = _ToolCallAssembler(self.name)
        finish_reason: str | None = None
        saw_choice = False
        usage: Usage | None = None
        try:
            async for chunk in stream:
                if not isinstance(chunk, dict):
                    raise ModelError(
                        f"The stream from {self.base_url} for model {self.name!r} sent a chunk "
                        f"that is not a JSON object: {str(chunk)[:200]!r}"
                    )
                if chunk.get("usage"):
                    usage = _usage(chunk["usage"])
                choices = chunk.get("choices")
                if not choices:
                    continue
                saw_choice = True
                choice = choices[0]
                delta = choice.get("delta") or {}
                text = delta.get("content") or delta.get("refusal")
                if text:
                    text_parts.append(text)
                    yield TextDelta(text)
                if delta.get("tool_calls"):
                    calls.add(delta["tool_calls"])
                if choice.get("finish_reason") is not None:
                    finish_reason = choice["finish_reason"]
        finally:
            await stream.close()
        if not saw_choice:
            raise ModelError(
                f"The stream from {self.base_url} for model {self.name!r} ended without any "
                "choices. Check that the endpoint implements streaming chat completions."
            )
        tool_calls = calls.tool_calls()
        yield ModelResponse(
            message=Message.assistant("".join(text_parts) or None, tool_calls=tool_calls),
            usage=usage or Usage(model_calls=1),
            finish_reason=finish_reason,
        )

    async def _complete(self, client: AsyncOpenAI, options: dict[str, Any]) -> ModelResponse:
        completion = await client.chat.completions.create(**{"model": self.name, **options})
        if not completion.choices:
            raise ModelError(
                f"The response from {self.base_url} for model {self.name!r} has no choices."
            )
        choice = completion.choices[0]
        message = choice.message
        tool_calls = []
        for index, call in enumerate(message.tool_calls or ()):
            function = getattr(call, "function", None)
            if function is None:
                raise ModelError(
                    f"Model {self.name!r} returned a {call.type!r} tool call; only function "
                    "tool calls are supported."
                )
            tool_calls.append(
                _tool_call(self.name, index, call.id, function.name, function.arguments)
            )
        return ModelResponse(
            message=Message.assistant(
                message.content or message.refusal or None, tool_calls=tool_calls
            ),
            usage=(
                _usage(completion.usage.model_dump()) if completion.usage else Usage(model_calls=1)
            ),
            finish_reason=choice.finish_reason,
        )

    def _translate(self, exc: openai.APIError) -> ModelError:
        where = f"model {self.name!r} at {self.base_url}"
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            detail = _provider_message(exc)
            return ModelHTTPError(
                self._redact(f"The endpoint answered HTTP {status} for {where}: {detail}"),
                code=str(status),
            )
        if isinstance(exc, openai.APITimeoutError):
            own = self._given_client is None
            limit = f" within {self._timeout:g} s" if own and self._timeout else ""
            return ModelTimeoutError(
                self._redact(
                    f"No answer from {where}{limit}. The server may be overloaded; raise "
                    "timeout= or check the server."
                )
            )
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__
            reason = f" ({type(cause).__name__}: {cause})" if cause else ""
            return ModelConnectionError(
                self._redact(
                    f"Cannot connect to {where}{reason}. Check that the server is running and "
                    "that base_url (or OPENAI_BASE_URL) is right."
                )
            )
        return ModelError(self._redact(f"The endpoint failed for {where}: {exc.message}"))

    def _redact(self, text: str) -> str:
        key = self._resolved_api_key or os.environ.get("OPENAI_API_KEY")
        if key and len(key) >= 4 and key != NO_API_KEY:
            text = text.replace(key, "[redacted]")
        return text


def _non_empty(value: str | None) -> str | None:
    """``value`` stripped, or None when it is None or blank (an empty variable is unset)."""
    if value is None or not value.strip():
        return None
    return value.strip()


def _is_openai_api(host: str) -> bool:
    host = host.lower().rstrip(".")
    return host == "openai.com" or host.endswith(".openai.com")


class _ToolCallAssembler:
    """Tool calls put together from streamed fragments, keyed by their ``index``.

    The first fragment of a call carries its ID and name; the arguments arrive as pieces of a
    JSON string, possibly interleaved with other calls' pieces.
    """

    __slots__ = ("_calls", "_model_name")

    def __init__(self, model_name: str) -> None:
        self._model_name = model_name
        self._calls: dict[int, tuple[list[str | None], list[str]]] = {}

    def add(self, fragments: list[dict[str, Any]]) -> None:
        for position, fragment in enumerate(fragments):
            index = fragment.get("index", position)
            entry = self._calls.get(index)
            if entry is None:
                entry = self._calls[index] = ([None, None], [])
            head, arguments = entry
            if fragment.get("id"):
                head[0] = fragment["id"]
            function = fragment.get("function")
            if function:
                if function.get("name"):
                    head[1] = function["name"]
                if function.get("arguments"):
                    arguments.append(function["arguments"])

    def tool_calls(self) -> list[ToolCall]:
        return [
            _tool_call(self._model_name, index, head[0], head[1], "".join(arguments))
            for index, (head, arguments) in sorted(self._calls.items())
        ]


def _tool_call(
    model_name: str, index: int, call_id: str | None, name: str | None, arguments: str
) -> ToolCall:
    if not name:
        raise ModelError(f"Model {model_name!r} sent tool call #{index} without a function name.")
    # Some OpenAI-compatible servers omit IDs; a tool result still needs one to refer to.
    return ToolCall(
        id=call_id or f"call_{index}",
        function=FunctionCall(name=name, arguments=arguments or "{}"),
    )


def _request_options(request: ModelRequest) -> dict[str, Any]:
    """The keyword arguments of ``chat.completions.create`` for one request, unset ones left out."""
    options: dict[str, Any] = {"messages": [message.to_openai() for message in request.messages]}
    if request.model:
        options["model"] = request.model
    if request.response_format is not None:
        options["response_format"] = request.response_format
    if request.tools:
        options["tools"] = request.tools
    config: GenerationConfig = request.generation
    if config.temperature is not None:
        options["temperature"] = config.temperature
    if config.top_p is not None:
        options["top_p"] = config.top_p
    if config.max_tokens is not None:
        options["max_tokens"] = config.max_tokens
    if config.stop:
        options["stop"] = config.stop
    if config.parallel_tool_calls is not None and request.tools:
        # The API rejects parallel_tool_calls without tools.
        options["parallel_tool_calls"] = config.parallel_tool_calls
    if config.extra_body:
        options["extra_body"] = config.extra_body
    return options


def _usage(usage: Mapping[str, Any]) -> Usage:
    """Usage from the ``usage`` object of a completion or of a stream's last chunk."""
    prompt = usage.get("prompt_tokens") or 0
    completion = usage.get("completion_tokens") or 0
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=usage.get("total_tokens") or prompt + completion,
        model_calls=1,
    )


def _provider_message(exc: openai.APIStatusError) -> str:
    """The provider's own error text: ``error.message`` of the body, else the raw body."""
    body = exc.body
    message: object = None
    if isinstance(body, Mapping):
        message = body.get("message")
    elif isinstance(body, str):
        message = body
    text = message.strip() if isinstance(message, str) and message.strip() else exc.message
    if len(text) > _MAX_PROVIDER_MESSAGE:
        text = text[:_MAX_PROVIDER_MESSAGE] + "..."
    return text
