"""`FakeModel`: a scripted :class:`~runner_core.model.Model` in process, for unit tests.

It answers from the same script as :class:`~runner_core.testing.ScriptedModelServer` (see
:class:`~runner_core.testing.script.Script`) with no HTTP and no ``openai`` client, so a unit
test of the runtime costs no sockets and no serialization round trips. What the agent loop sees
is what :func:`~runner_core.testing.scripted_model` gives for the same script: the same text
deltas when streaming, the same message, usage and finish reason, and the same
:class:`~runner_core.errors.ModelError` subclass for an error, a hang past the timeout or a
reset. The requests it records are the JSON bodies the server would have received.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from ..errors import ModelConnectionError, ModelHTTPError, ModelTimeoutError
from ..messages import Message
from ..model import ModelPrice, ModelRequest, ModelResponse, TextDelta

# The endpoint path's own rules for the request body, tool calls and usage: one owner, so both
# doubles give the agent loop the same thing.
from ..openai_model import _request_options, _tool_call, _usage
from .script import Script, reply_usage

__all__ = ["FakeModel"]

#: How often a wait looks at the script's release event (a ``threading.Event``, which the
#: loop cannot await).
_RELEASE_POLL = 0.01


class FakeModel(Script):
    """A model answering from a script, in process.

    Queue replies with the ``add_*`` methods of :class:`~runner_core.testing.script.Script`;
    each :meth:`generate` call consumes one and records its request in :attr:`requests`::

        model = FakeModel()
        model.add_tool_calls([("call_1", "add", {"a": 2, "b": 3})])
        model.add_text("2 + 3 = 5")
        agent = LLMAgent("helper", model=model, tools=[add])
        ...
        assert model.requests[1]["messages"][-1]["role"] == "tool"

    Args:
        name: the model name, sent in each recorded request (``"scripted"`` as for
            :func:`~runner_core.testing.scripted_model`).
        price: per-million-token prices, for the cost on run completions.
        timeout: seconds a call waits for a delayed or hanging reply before it raises
            :class:`~runner_core.errors.ModelTimeoutError` (``None``: no limit), like the
            ``timeout`` of :class:`~runner_core.openai_model.OpenAIModel`.
    """

    def __init__(
        self,
        name: str = "scripted",
        *,
        price: ModelPrice | None = None,
        timeout: float | None = 60.0,
    ) -> None:
        super().__init__()
        self.name = name
        self.price = price
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"FakeModel(name={self.name!r})"

    async def generate(self, request: ModelRequest) -> AsyncIterator[TextDelta | ModelResponse]:
        """Answer one model turn with the next scripted reply. See
        :meth:`runner_core.model.Model.generate`.

        Raises:
            ModelHTTPError: the reply is an error (``code`` is its status), or the script is
                exhausted (HTTP 500, "no scripted reply left").
            ModelTimeoutError: the reply hangs or is delayed longer than ``timeout``.
            ModelConnectionError: the script was reset while the call waited.
        """
        reply, release = self._take(_request_body(self.name, request))
        await self._wait(None if reply.kind == "hang" else reply.delay, release)
        if reply.kind == "error":
            raise ModelHTTPError(
                f"The endpoint answered HTTP {reply.status} for FakeModel {self.name!r}: "
                f"{reply.error_message}",
                code=str(reply.status),
            )
        if request.generation.stream:
            for text in reply.deltas:
                await self._wait(reply.chunk_delay, release)
                yield TextDelta(text)
            await self._wait(reply.chunk_delay, release)
        tool_calls = [
            _tool_call(self.name, index, call_id, name, arguments)
            for index, (call_id, name, arguments) in enumerate(reply.calls)
        ]
        yield ModelResponse(
            message=Message.assistant(reply.content or None, tool_calls=tool_calls),
            usage=_usage(reply_usage(reply)),
            finish_reason="tool_calls" if reply.calls else "stop",
        )

    async def close(self) -> None:
        """Nothing to release; here for the :class:`~runner_core.model.Model` protocol."""

    async def _wait(self, seconds: float | None, release: threading.Event) -> None:
        """Wait ``seconds`` (``None``: until released) as the server would before answering.

        Raises:
            ModelTimeoutError: the wait is longer than ``timeout``.
            ModelConnectionError: the script was reset meanwhile (the server drops the call).
        """
        if seconds is not None and seconds <= 0:
            return
        limit = self.timeout
        timed_out = limit is not None and (seconds is None or seconds > limit)
        if await _released(release, limit if timed_out else seconds):
            raise ModelConnectionError(
                f"FakeModel {self.name!r} dropped the call without an answer: its script was "
                "reset while the call waited."
            )
        if timed_out:
            raise ModelTimeoutError(
                f"No answer from FakeModel {self.name!r} within {limit:g} s (a scripted hang "
                "or delay). Raise timeout= or script a shorter delay."
            )


def _request_body(model_name: str, request: ModelRequest) -> dict[str, Any]:
    """The JSON body :class:`~runner_core.openai_model.OpenAIModel` sends for ``request``, as
    the server records it (decoded from JSON, so it shares nothing with the caller's objects)."""
    options = _request_options(request)
    extra_body = options.pop("extra_body", None) or {}
    body: dict[str, Any] = {"model": model_name, **options}
    if request.generation.stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    body |= extra_body
    decoded: dict[str, Any] = json.loads(json.dumps(body))
    return decoded


async def _released(release: threading.Event, seconds: float | None) -> bool:
    """Wait up to ``seconds`` (``None``: forever) for ``release`` without blocking the loop.
    Returns True if it was released. Cancelling the caller ends the wait at once."""
    deadline = None if seconds is None else time.monotonic() + seconds
    while not release.is_set():
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return False
        await asyncio.sleep(_RELEASE_POLL if remaining is None else min(_RELEASE_POLL, remaining))
    return True
