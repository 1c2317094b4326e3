"""The public names of each package are a contract: sorted, importable, and what we document."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

EXPECTED = {
    "runner_core": {
        "AgentRunnerError", "ConfigurationError", "CorruptSessionDataError", "ErrorEvent",
        "Event", "EventError", "EventType", "FunctionCall", "FunctionTool", "MessageDeltaEvent",
        "MessageEvent", "RunCompletionEvent", "RunPausedEvent", "RunQueuedEvent",
        "RunRestartedEvent", "StateUpdateEvent", "ToolResultEvent",
        "GenerationConfig", "InvalidRequestError", "LLMAgent", "Message", "Model",
        "ModelConnectionError", "ModelError", "ModelHTTPError", "ModelPrice", "ModelRequest",
        "ModelResponse", "ModelTimeoutError", "OpenAIModel", "RunFailedError", "RunStatus",
        "RunStream", "Runner", "Session", "SessionBackendError", "SessionKey",
        "SessionNotFoundError", "SessionService", "Summarizer", "Summary", "SummaryCheck",
        "TextDelta", "ToolArgumentsError", "ToolCall", "ToolContext", "ToolError",
        "ToolExecutionError", "ToolNotFoundError", "UnknownToolCallError", "Usage",
        "check_event_count", "check_idle_time", "check_token_count", "create_session_summary",
        "get_session_summary_text", "tool",
        # In-process summaries (issue 16).
        "BackgroundSummaries",
        # The extension contract (issue 14).
        "BaseAgent", "CallResult", "CallbackError", "Guardrail", "GuardrailTripped",
        "InMemorySessionService", "InvocationContext", "Plugin", "RunConfig", "RunOutcome",
        # Trees of agents (issue 15).
        "AgentTool", "AgentTransferEvent", "LoopAgent", "ParallelAgent", "SequentialAgent",
        "transfer_targets",
        # Artifacts (issue 20).
        "Artifact", "ArtifactBackendError", "ArtifactService", "ArtifactVersion",
        "InMemoryArtifactService", "load_artifacts",
        # Execution traces (issue 17).
        "InMemoryTraceStore", "Step", "Trace", "TraceNotFoundError", "TraceRecorder",
        "TraceStore", "read_trace",
        # Long-term memory and feedback (issue 18).
        "Experience", "Fact", "FeedbackResult", "InMemoryMemoryService", "MemoryBackendError",
        "MemoryHit", "MemoryInjectedEvent", "MemoryInjection", "MemoryService", "Skill",
        "add_feedback", "agent_scope", "load_memory", "user_scope",
    },
}


@pytest.mark.parametrize("package", sorted(EXPECTED))
def test_public_names(package: str) -> None:
    module = importlib.import_module(package)
    names = list(module.__all__)
    assert names == sorted(names), "keep __all__ sorted"
    assert EXPECTED[package] <= set(names)
    for name in names:
        assert hasattr(module, name), name


def test_runner_core_imports_no_infrastructure() -> None:
    # runner_core must stay importable without Celery, Redis or PostgreSQL drivers.
    code = (
        "import sys, runner_core, runner_core.testing\n"
        "bad = [m for m in ('celery', 'kombu', 'redis', 'psycopg', 'workers', 'session_backends')"
        " if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("bad", ["alice\n", "alice\r\n", "\nalice", "al ice", "a" * 129])
def test_ids_are_matched_in_full(bad: str) -> None:
    """A trailing newline is not a distinct ID: every ID check matches the whole string."""
    from runner_core.errors import InvalidRequestError
    from runner_core.session import validate_identifier
    from workers.client import validate_invocation_id

    with pytest.raises(InvalidRequestError):
        validate_identifier(bad, "user_id")
    with pytest.raises(InvalidRequestError):
        validate_invocation_id(bad)
