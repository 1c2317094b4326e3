"""The benchmark's agent for agent-runner: the ``add`` tool on the scripted model.

The in-process driver builds it directly; the Celery worker of the distributed case loads it
through ``AGENT_RUNNER_AGENTS=bench=bench.peers.agent_runner_app:build_agent`` (the model's URL
from ``OPENAI_BASE_URL``).
"""

from __future__ import annotations

import os

from openai import AsyncOpenAI

from runner_core import LLMAgent, OpenAIModel, tool

APP = "bench"
INSTRUCTION = "Be brief."


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def build_agent(client: AsyncOpenAI | None = None) -> LLMAgent:
    """The agent on ``client`` (the in-process driver's), else on ``OPENAI_BASE_URL``."""
    if client is not None:
        model = OpenAIModel("scripted", client=client)
    else:
        model = OpenAIModel(
            "scripted", base_url=os.environ["OPENAI_BASE_URL"], api_key="sk-bench", max_retries=0
        )
    return LLMAgent(APP, model=model, instruction=INSTRUCTION, tools=[add])
