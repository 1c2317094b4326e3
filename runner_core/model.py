"""The model interface the agent loop talks to.

A model turns a :class:`ModelRequest` into an async stream: zero or more :class:`TextDelta`
items (streaming only) followed by exactly one :class:`ModelResponse`. Failures raise a
:class:`~runner_core.errors.ModelError` subclass. :class:`~runner_core.openai_model.OpenAIModel`
is the implementation over the ``openai`` client; anything with the same shape works.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from .errors import ModelError
from .events import Usage
from .messages import Message

__all__ = [
    "GenerationConfig",
    "Model",
    "ModelPrice",
    "ModelRequest",
    "ModelResponse",
    "TextDelta",
    "complete_response",
]


class GenerationConfig(BaseModel):
    """Sampling and transport options for each model call."""

    model_config = ConfigDict(extra="forbid")

    stream: bool = True
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: list[str] | None = None
    parallel_tool_calls: bool | None = None
    #: Extra fields sent as-is in the request body (provider-specific options).
    extra_body: dict[str, Any] = Field(default_factory=dict)


class ModelPrice(BaseModel):
    """Price in a currency of your choice per one million tokens."""

    model_config = ConfigDict(extra="forbid")

    prompt_per_million: float = Field(ge=0)
    completion_per_million: float = Field(ge=0)

    def cost(self, usage: Usage) -> float:
        return (
            usage.prompt_tokens * self.prompt_per_million
            + usage.completion_tokens * self.completion_per_million
        ) / 1_000_000


@dataclass(slots=True)
class ModelRequest:
    messages: list[Message]
    tools: list[dict[str, Any]] = field(default_factory=list)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    #: The model name for this call (a run's ``RunConfig.model``); None: the model's own.
    model: str | None = None
    #: The chat-completions ``response_format`` (structured output), as sent.
    response_format: dict[str, Any] | None = None


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ModelResponse:
    """A complete model turn: assistant text and/or tool calls, with the call's usage."""

    message: Message
    usage: Usage
    finish_reason: str | None = None


@runtime_checkable
class Model(Protocol):
    name: str
    price: ModelPrice | None

    def generate(self, request: ModelRequest) -> AsyncIterator[TextDelta | ModelResponse]:
        """Stream one model turn.

        Yields:
            ``TextDelta`` items as text arrives (when ``request.generation.stream``), then one
            ``ModelResponse``.

        Raises:
            ModelError: the endpoint failed (HTTP error, timeout, connection refused).
        """
        ...

    async def close(self) -> None:
        """Release the client if the model created it. Idempotent."""
        ...


async def complete_response(model: Model, request: ModelRequest) -> ModelResponse:
    """The complete response of one model call, its text deltas (if any) skipped.

    Raises:
        ModelError: the model failed, or its stream ended without a complete response.
    """
    response: ModelResponse | None = None
    async for item in model.generate(request):
        if isinstance(item, ModelResponse):
            response = item
    if response is None:
        raise ModelError("the model stream ended without a complete response")
    return response
