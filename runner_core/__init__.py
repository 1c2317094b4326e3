"""The agent runtime: events, messages, models, tools, agents and the Runner.

Importable without Celery, Redis or PostgreSQL.
"""

from .errors import (
    AgentRunnerError,
    ConfigurationError,
    CorruptSessionDataError,
    InvalidRequestError,
    ModelConnectionError,
    ModelError,
    ModelHTTPError,
    ModelTimeoutError,
    RunError,
    SessionBackendError,
    SessionNotFoundError,
    ToolArgumentsError,
    ToolError,
    ToolExecutionError,
    ToolNotFoundError,
    UnknownToolCallError,
)
from .events import Event, EventActions, EventError, EventType, RunStatus, Usage
from .messages import FunctionCall, Message, ToolCall
from .model import GenerationConfig, Model, ModelPrice, ModelRequest, ModelResponse, TextDelta
from .session import Session, SessionKey, SessionService, Summary

__all__ = [
    "AgentRunnerError",
    "ConfigurationError",
    "CorruptSessionDataError",
    "Event",
    "EventActions",
    "EventError",
    "EventType",
    "FunctionCall",
    "GenerationConfig",
    "InvalidRequestError",
    "Message",
    "Model",
    "ModelConnectionError",
    "ModelError",
    "ModelHTTPError",
    "ModelPrice",
    "ModelRequest",
    "ModelResponse",
    "ModelTimeoutError",
    "RunError",
    "RunStatus",
    "Session",
    "SessionBackendError",
    "SessionKey",
    "SessionNotFoundError",
    "SessionService",
    "Summary",
    "TextDelta",
    "ToolArgumentsError",
    "ToolCall",
    "ToolError",
    "ToolExecutionError",
    "ToolNotFoundError",
    "Usage",
    "UnknownToolCallError",
]
