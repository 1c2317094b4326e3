"""The agent the artifact tests' workers load (``AGENT_RUNNER_AGENTS=artkit=...``): a tool that
saves a report as an artifact, and the built-in ``load_artifacts``."""

from __future__ import annotations

import os
import signal

import redis

from runner_core import LLMAgent, ToolContext, load_artifacts, tool
from runner_core.openai_model import OpenAIModel


@tool
async def write_report(title: str, body: str, context: ToolContext) -> str:
    """Save a report as the artifact ``report.md``.

    Args:
        title: the report's title.
        body: its text.
    """
    version = await context.save_artifact("report.md", f"# {title}\n\n{body}\n")
    return f"saved report.md version {version}"


#: How many times ``report_then_crash`` ran (a Redis counter, seen from the test).
CRASH_COUNTER_KEY = "test:artifact-report-then-crash"


@tool
async def report_then_crash(context: ToolContext) -> str:
    """Save the report, then, the first time only, kill this worker (SIGKILL) before the call's
    result is stored: the run is redelivered and the call runs again on another worker."""
    version = await context.save_artifact("report.md", "# Crash report\n")
    client = redis.Redis.from_url(os.environ["AGENT_RUNNER_REDIS_URL"])
    try:
        attempt = client.incr(CRASH_COUNTER_KEY)
    finally:
        client.close()
    if attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return f"saved report.md version {version}"


def build_artkit() -> LLMAgent:
    model = OpenAIModel(
        os.environ.get("AGENT_RUNNER_MODEL", "scripted"),
        base_url=os.environ["OPENAI_BASE_URL"],
        api_key="sk-test",
        max_retries=0,
    )
    return LLMAgent("artkit", model=model, tools=[write_report, report_then_crash, load_artifacts])
