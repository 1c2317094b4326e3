"""The agent the gateway's resource tests load (``AGENT_RUNNER_AGENTS=notes=...``): a tool that
saves a note as an artifact, so a run leaves an artifact and a trace behind."""

from __future__ import annotations

import os

from runner_core import LLMAgent, ToolContext, tool
from runner_core.openai_model import OpenAIModel


@tool
async def save_note(name: str, text: str, context: ToolContext) -> str:
    """Save ``text`` as the artifact ``name``.

    Args:
        name: the artifact's name.
        text: what to save.
    """
    version = await context.save_artifact(name, text)
    return f"saved {name} version {version}"


def build_notes() -> LLMAgent:
    model = OpenAIModel(
        os.environ.get("AGENT_RUNNER_MODEL", "scripted"),
        base_url=os.environ["OPENAI_BASE_URL"],
        api_key="sk-test",
        max_retries=0,
    )
    return LLMAgent("notes", model=model, instruction="test agent", tools=[save_note])
