"""The agent runtime: events, messages, models, tools, agents and the Runner.

Importable without Celery, Redis or PostgreSQL.
"""

from .agent import BaseAgent, CallResult, LLMAgent
from .agent_tool import AgentTool
from .artifact_tool import load_artifacts
from .artifacts import Artifact, ArtifactService, ArtifactVersion
from .background_summaries import BackgroundSummaries
from .errors import (
    AgentRunnerError,
    ArtifactBackendError,
    ConfigurationError,
    CorruptSessionDataError,
    FencedError,
    InvalidRequestError,
    InvocationOwnedError,
    MemoryBackendError,
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
    TraceNotFoundError,
    UnknownToolCallError,
)
from .events import (
    AgentTransferEvent,
    ErrorEvent,
    Event,
    EventError,
    EventType,
    MemoryInjectedEvent,
    MessageDeltaEvent,
    MessageEvent,
    RunCompletionEvent,
    RunPausedEvent,
    RunQueuedEvent,
    RunRestartedEvent,
    RunStatus,
    StateUpdateEvent,
    ToolResultEvent,
    Usage,
)
from .feedback import FeedbackResult, add_feedback
from .invocation import InvocationContext, RunOutcome
from .memory import Experience, Fact, MemoryHit, MemoryService, Skill, agent_scope, user_scope
from .memory_artifacts import InMemoryArtifactService
from .memory_injection import MemoryInjection, load_memory
from .memory_sessions import InMemorySessionService
from .memory_store import InMemoryMemoryService
from .memory_traces import InMemoryTraceStore
from .messages import FunctionCall, Message, ToolCall
from .model import GenerationConfig, Model, ModelPrice, ModelRequest, ModelResponse, TextDelta
from .openai_model import OpenAIModel
from .plugins import CallbackError, Guardrail, GuardrailTripped, Plugin
from .run_config import RunConfig
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
from .traces import Step, Trace, TraceStore, read_trace
from .tracing import TraceRecorder
from .transfer import transfer_targets
from .workflow import LoopAgent, ParallelAgent, SequentialAgent

__all__ = [
    "AgentRunnerError",
    "AgentTool",
    "AgentTransferEvent",
    "Artifact",
    "ArtifactBackendError",
    "ArtifactService",
    "ArtifactVersion",
    "BackgroundSummaries",
    "BaseAgent",
    "CallResult",
    "CallbackError",
    "ConfigurationError",
    "CorruptSessionDataError",
    "ErrorEvent",
    "Event",
    "EventError",
    "EventType",
    "Experience",
    "Fact",
    "FeedbackResult",
    "FencedError",
    "FunctionCall",
    "FunctionTool",
    "GenerationConfig",
    "Guardrail",
    "GuardrailTripped",
    "InMemoryArtifactService",
    "InMemoryMemoryService",
    "InMemorySessionService",
    "InMemoryTraceStore",
    "InvalidRequestError",
    "InvocationContext",
    "InvocationOwnedError",
    "LLMAgent",
    "LoopAgent",
    "MemoryBackendError",
    "MemoryHit",
    "MemoryInjectedEvent",
    "MemoryInjection",
    "MemoryService",
    "Message",
    "MessageDeltaEvent",
    "MessageEvent",
    "Model",
    "ModelConnectionError",
    "ModelError",
    "ModelHTTPError",
    "ModelPrice",
    "ModelRequest",
    "ModelResponse",
    "ModelTimeoutError",
    "OpenAIModel",
    "ParallelAgent",
    "Plugin",
    "RunCompletionEvent",
    "RunConfig",
    "RunFailedError",
    "RunOutcome",
    "RunPausedEvent",
    "RunQueuedEvent",
    "RunRestartedEvent",
    "RunStatus",
    "RunStream",
    "Runner",
    "SequentialAgent",
    "Session",
    "SessionBackendError",
    "SessionKey",
    "SessionNotFoundError",
    "SessionService",
    "Skill",
    "StateUpdateEvent",
    "Step",
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
    "ToolResultEvent",
    "Trace",
    "TraceNotFoundError",
    "TraceRecorder",
    "TraceStore",
    "UnknownToolCallError",
    "Usage",
    "add_feedback",
    "agent_scope",
    "check_event_count",
    "check_idle_time",
    "check_token_count",
    "create_session_summary",
    "get_session_summary_text",
    "load_artifacts",
    "load_memory",
    "read_trace",
    "tool",
    "transfer_targets",
    "user_scope",
]
