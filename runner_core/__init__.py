"""The agent runtime: events, messages, models, tools, agents and the Runner.

Importable without Celery, Redis or PostgreSQL.
"""

from .agent import LLMAgent
from .errors import (
    AgentRunnerError,
    ConfigurationError,
    CorruptSessionDataError,
    FencedError,
    InvalidRequestError,
    InvocationOwnedError,
    ModelConnectionError,
    ModelError,
    ModelHTTPError,
    ModelTimeoutError,
    RunFailedError,
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
from .openai_model import OpenAIModel
from .runner import Runner, RunStream
from .session import Session, SessionKey, SessionService, Summary
from .summarizer import (
    Summarizer,
    SummaryCheck,
    check_event_count,
    check_idle_time,
    check_token_count,
    create_session_summary,
    get_session_summary_text,
)
from .tools import FunctionTool, ToolContext, tool

__all__ = [
    "AgentRunnerError",
    "ConfigurationError",
    "CorruptSessionDataError",
    "Event",
    "EventActions",
    "EventError",
    "EventType",
    "FencedError",
    "FunctionCall",
    "FunctionTool",
    "GenerationConfig",
    "InvalidRequestError",
    "InvocationOwnedError",
    "LLMAgent",
    "Message",
    "Model",
    "ModelConnectionError",
    "ModelError",
    "ModelHTTPError",
    "ModelPrice",
    "ModelRequest",
    "ModelResponse",
    "ModelTimeoutError",
    "OpenAIModel",
    "RunFailedError",
    "RunStatus",
    "RunStream",
    "Runner",
    "Session",
    "SessionBackendError",
    "SessionKey",
    "SessionNotFoundError",
    "SessionService",
    "Summarizer",
    "Summary",
    "SummaryCheck",
    "TextDelta",
    "ToolArgumentsError",
    "ToolCall",
    "ToolContext",
    "ToolError",
    "ToolExecutionError",
    "ToolNotFoundError",
    "UnknownToolCallError",
    "Usage",
    "check_event_count",
    "check_idle_time",
    "check_token_count",
    "create_session_summary",
    "get_session_summary_text",
    "tool",
]
