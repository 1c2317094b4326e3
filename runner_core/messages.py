"""Chat messages, shaped like OpenAI chat-completion messages."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InvalidRequestError, describe_validation_error

__all__ = ["FunctionCall", "Message", "Role", "ToolCall", "coerce_message"]

Role = Literal["system", "user", "assistant", "tool"]

#: Upper bound on one message's text, so a runaway producer cannot fill the session store.
MAX_MESSAGE_CHARS = 1_000_000


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    arguments: str = Field(default="{}", description="JSON-encoded arguments, as sent by the model")


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall

    @classmethod
    def make(cls, call_id: str, name: str, arguments: dict[str, Any] | str) -> ToolCall:
        args = arguments if isinstance(arguments, str) else json.dumps(arguments)
        return cls(id=call_id, function=FunctionCall(name=name, arguments=args))


class Message(BaseModel):
    """One chat message: ``role``, ``content``, ``tool_calls``, ``tool_call_id``, ``name``."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @classmethod
    def user(cls, text: str) -> Message:
        return cls(role="user", content=text)

    @classmethod
    def system(cls, text: str) -> Message:
        return cls(role="system", content=text)

    @classmethod
    def assistant(
        cls, text: str | None = None, *, tool_calls: list[ToolCall] | None = None
    ) -> Message:
        return cls(role="assistant", content=text, tool_calls=tool_calls or None)

    @classmethod
    def tool(cls, tool_call_id: str, content: str, *, name: str | None = None) -> Message:
        return cls(role="tool", content=content, tool_call_id=tool_call_id, name=name)

    @property
    def text(self) -> str:
        return self.content or ""

    def to_openai(self) -> dict[str, Any]:
        """The dict the chat-completions API expects (unset fields left out)."""
        return self.model_dump(exclude_none=True)


def coerce_message(value: object, *, field: str = "message") -> Message:
    """Turn text, a message dict or a :class:`Message` into a valid message.

    Raises:
        InvalidRequestError: naming ``field``, if the value is none of those or is invalid.
    """
    if isinstance(value, Message):
        msg = value
    elif isinstance(value, str):
        msg = Message.user(value)
    elif isinstance(value, dict):
        try:
            msg = Message.model_validate(value)
        except ValidationError as exc:
            problems = describe_validation_error(exc, whole="message")
            raise InvalidRequestError(
                f"{field} is not a valid chat message ({problems}). Pass text, or a dict like "
                '{"role": "user", "content": "..."}.'
            ) from exc
    else:
        raise InvalidRequestError(
            f"{field} must be text or a chat-message dict, got {type(value).__name__}. "
            'Pass a string, or {"role": "user", "content": "..."}.'
        )
    if msg.role == "user" and not (msg.content or "").strip():
        raise InvalidRequestError(f"{field} is empty. Send a non-empty user message.")
    if msg.content is not None and len(msg.content) > MAX_MESSAGE_CHARS:
        raise InvalidRequestError(
            f"{field} has {len(msg.content)} characters; the limit is {MAX_MESSAGE_CHARS}. "
            "Shorten it or send the content as a file reference."
        )
    return msg
