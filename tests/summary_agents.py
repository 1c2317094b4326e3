"""An agent with a summarizer, loaded by test workers through ``AGENT_RUNNER_AGENTS``
(``summarized=tests.summary_agents:build_summarized``).

The model is the test's :class:`~runner_core.testing.ScriptedModelServer` at ``OPENAI_BASE_URL``.
``TEST_SUMMARY_MIN_EVENTS`` (default 0) sets the summarizer's event-count check.
"""

from __future__ import annotations

import os

from runner_core import LLMAgent, OpenAIModel, Summarizer, check_event_count


def build_summarized() -> LLMAgent:
    model = OpenAIModel(
        "scripted", base_url=os.environ["OPENAI_BASE_URL"], api_key="sk-test", max_retries=0
    )
    agent = LLMAgent("summarized", model=model, instruction="test agent", add_session_summary=True)
    threshold = int(os.environ.get("TEST_SUMMARY_MIN_EVENTS", "0"))
    agent.summarizer = Summarizer(model, checks_any=[check_event_count(threshold)])  # type: ignore[attr-defined]
    return agent
