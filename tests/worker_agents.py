"""Agents that the test workers load through ``AGENT_RUNNER_AGENTS`` (app ``testkit``).

Tools record each execution in Redis (a counter per label), so a test can check from outside
the worker that a tool ran exactly once even when its worker was killed and the run recovered.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import redis

from runner_core.agent import LLMAgent
from runner_core.openai_model import OpenAIModel
from runner_core.tools import tool

TOOL_COUNTER_KEY = "test:tool-executions"


def _redis() -> redis.Redis:
    return redis.Redis.from_url(os.environ["AGENT_RUNNER_REDIS_URL"])


@tool
def record(label: str) -> str:
    """Record one execution of this tool under ``label``.

    Args:
        label: what to count.
    """
    client = _redis()
    try:
        count = client.hincrby(TOOL_COUNTER_KEY, label, 1)
    finally:
        client.close()
    return f"recorded {label} ({count})"


@tool
def crash_worker() -> str:
    """Kill the worker process running this tool (SIGKILL), like an out-of-memory kill."""
    client = _redis()
    try:
        client.hincrby(TOOL_COUNTER_KEY, "crash_worker", 1)
    finally:
        client.close()
    os.kill(os.getpid(), signal.SIGKILL)
    return "unreachable"


@tool
def hold(label: str) -> str:
    """Wait until the test lets ``label`` go: the file ``label`` appears in the directory
    ``AGENT_RUNNER_TEST_HOLD_DIR``. The file ``label.held`` says the tool is waiting.

    Args:
        label: what to wait for.
    """
    folder = Path(os.environ["AGENT_RUNNER_TEST_HOLD_DIR"])
    (folder / f"{label}.held").touch()
    deadline = time.monotonic() + 120
    while not (folder / label).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return f"released {label}"


@tool(requires_confirmation=True)
def refund(amount: int) -> str:
    """Refund an amount; pauses the run until the caller confirms.

    Args:
        amount: how much to refund.
    """
    return f"refunded {amount}"


def build_testkit() -> LLMAgent:
    model = OpenAIModel(
        os.environ.get("AGENT_RUNNER_MODEL", "scripted"),
        base_url=os.environ["OPENAI_BASE_URL"],
        api_key="sk-test",
        max_retries=0,
    )
    return LLMAgent(
        "testkit", model=model, instruction="test agent", tools=[record, crash_worker, hold, refund]
    )


# --- confirmations through a worker (tests/test_confirmations.py) --------------------------

#: The amount ``transfer`` sent, per account.
TRANSFERS_KEY = "test:transfers"


def _over_100(args: dict[str, object]) -> bool:
    amount = args["amount"]
    return isinstance(amount, int) and amount > 100


@tool(requires_confirmation=_over_100, editable_params=["amount"])
def transfer(account: str, amount: int) -> str:
    """Transfer money; above 100 a person confirms it first and may change the amount.

    Args:
        account: where to.
        amount: how much.
    """
    client = _redis()
    try:
        client.hset(TRANSFERS_KEY, account, amount)
    finally:
        client.close()
    return f"sent {amount} to {account}"


def build_payments() -> LLMAgent:
    model = OpenAIModel(
        os.environ.get("AGENT_RUNNER_MODEL", "scripted"),
        base_url=os.environ["OPENAI_BASE_URL"],
        api_key="sk-test",
        max_retries=0,
    )
    return LLMAgent("payments", model=model, instruction="test agent", tools=[transfer])
