"""Agents that the test workers load through ``AGENT_RUNNER_AGENTS`` (app ``testkit``).

Tools record each execution in Redis (a counter per label), so a test can check from outside
the worker that a tool ran exactly once even when its worker was killed and the run recovered.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import redis
from pydantic import BaseModel

from runner_core import (
    AgentTool,
    BaseAgent,
    Event,
    InvocationContext,
    LoopAgent,
    Message,
    ParallelAgent,
    RunOutcome,
    SequentialAgent,
)
from runner_core.agent import LLMAgent
from runner_core.openai_model import OpenAIModel
from runner_core.tools import ToolContext, tool

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


# --- the extension contract through a worker (tests/test_extensions_worker.py) --------------

#: What the extension tools saw, per invocation ID: a hash per kind (``runtime``, ``temp``).
SEEN_KEY = "test:extension-seen:{kind}"
#: The value ``remember`` writes under a ``temp:`` key: the model never sees it in a call's
#: arguments, so finding it anywhere outside the run can only mean the key leaked.
TEMP_VALUE = "scratch-7f3c9e21"


def _scripted_model() -> OpenAIModel:
    return OpenAIModel(
        os.environ.get("AGENT_RUNNER_MODEL", "scripted"),
        base_url=os.environ["OPENAI_BASE_URL"],
        api_key="sk-test",
        max_retries=0,
    )


def _note_seen(kind: str, invocation_id: str, value: str) -> None:
    client = _redis()
    try:
        client.hset(SEEN_KEY.format(kind=kind), invocation_id, value)
    finally:
        client.close()


@tool
def use_secret(context: ToolContext) -> str:
    """Use the caller's secret (``runtime_state['secret']``) without ever showing it."""
    secret = context.runtime_state.get("secret")
    _note_seen("runtime", context.invocation_id, str(secret))
    return "secret used" if secret else "no secret given"


@tool
def remember(context: ToolContext) -> str:
    """Keep a scratch value for this run only (``temp:``) and a note for the session."""
    context.state["temp:scratch"] = TEMP_VALUE
    context.state["kept"] = "kept for the session"
    return "remembered"


@tool
def recall(context: ToolContext) -> str:
    """Look for the scratch value of this run."""
    scratch = context.state.get("temp:scratch")
    _note_seen("temp", context.invocation_id, str(scratch))
    return "found it" if scratch else "nothing to recall"


def build_extkit() -> LLMAgent:
    tools = [use_secret, remember, recall]
    return LLMAgent("extkit", model=_scripted_model(), instruction="test agent", tools=tools)


class Verdict(BaseModel):
    label: str
    score: int


def build_structured() -> LLMAgent:
    return LLMAgent(
        "structured", model=_scripted_model(), instruction="classify", output_schema=Verdict
    )


def no_passwords(ctx: InvocationContext, text: str) -> str | None:
    return "the message holds a password" if "password" in text.lower() else None


def no_shouting(ctx: InvocationContext, text: str) -> str | None:
    return "the answer shouts" if text.isupper() else None


def build_guarded() -> LLMAgent:
    return LLMAgent(
        "guarded",
        model=_scripted_model(),
        instruction="be polite",
        input_guardrails=[no_passwords],
        output_guardrails=[no_shouting],
    )


class MirrorAgent(BaseAgent):
    """A custom agent with no model: answers with the user's message backwards."""

    async def run(self, ctx: InvocationContext) -> AsyncIterator[Event]:
        text = next(
            e.message.text
            for e in reversed(ctx.session.events)
            if e.type == "message" and e.message.role == "user"
        )
        reply = text[::-1]
        yield ctx.message_event(self.name, Message.assistant(reply))
        ctx.outcome = RunOutcome(status="completed", final_text=reply)


class BrokenAgent(BaseAgent):
    """A custom agent that raises before it says anything."""

    async def run(self, ctx: InvocationContext) -> AsyncIterator[Event]:
        raise RuntimeError("the custom agent broke")
        yield  # an async generator that raises on its first step


def build_mirror() -> BaseAgent:
    return MirrorAgent("mirror")


def build_broken() -> BaseAgent:
    return BrokenAgent("broken")


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


# --- trees of agents through a worker (tests/test_multi_agent_worker.py) -------------------
#
# Each agent's instruction is "You are {name}.", which no other agent's request holds: the
# scripted server routes a reply to one agent with match="You are {name}.".

#: The worker process that ran a tool, per label (``note_worker``, ``refund_here``).
WORKER_PIDS_KEY = "test:worker-pids"


def _note_pid(label: str) -> None:
    client = _redis()
    try:
        client.hset(WORKER_PIDS_KEY, label, os.getpid())
    finally:
        client.close()


def _count(label: str) -> str:
    client = _redis()
    try:
        count = client.hincrby(TOOL_COUNTER_KEY, label, 1)
    finally:
        client.close()
    return f"recorded {label} ({count})"


def _tree_agent(name: str, **options: Any) -> LLMAgent:
    return LLMAgent(name, model=_scripted_model(), instruction=f"You are {name}.", **options)


@tool
def approve(label: str, context: ToolContext) -> str:
    """Approve the draft: the loop around this agent stops (counted under ``label``).

    Args:
        label: what to count.
    """
    context.escalate()
    return _count(label)


@tool
def note_worker(label: str) -> str:
    """Note which worker process runs this call, under ``label``.

    Args:
        label: what to note it under.
    """
    _note_pid(label)
    return f"noted {label}"


@tool(requires_confirmation=True)
def refund_here(label: str, amount: int) -> str:
    """Refund an amount once a person confirmed it; notes the worker process under ``label``.

    Args:
        label: what to note the worker under.
        amount: how much to refund.
    """
    _note_pid(label)
    _count(label)
    return f"refunded {amount}"


def build_desk() -> BaseAgent:
    """A triage agent that can hand the conversation to billing."""
    billing = _tree_agent("billing", description="Answers questions about invoices.")
    return _tree_agent("desk", description="Sends each question on.", sub_agents=[billing])


def build_fanout() -> BaseAgent:
    """Two branches that run at once."""
    return ParallelAgent("fanout", sub_agents=[_tree_agent("left"), _tree_agent("right")])


def build_refine() -> BaseAgent:
    """A writer and a critic in a loop until the critic approves."""
    return LoopAgent(
        "refine",
        sub_agents=[_tree_agent("writer"), _tree_agent("critic", tools=[approve])],
        max_iterations=4,
    )


def build_consult() -> BaseAgent:
    """An agent that calls a helper agent as a tool."""
    helper = _tree_agent("helper", description="Answers one question on its own.")
    return _tree_agent("consultant", tools=[AgentTool(helper)])


def build_approvals() -> BaseAgent:
    """A clerk, then a cashier whose refund waits for a person's confirmation."""
    return SequentialAgent(
        "approvals",
        sub_agents=[_tree_agent("clerk"), _tree_agent("cashier", tools=[note_worker, refund_here])],
    )


def build_chain() -> BaseAgent:
    """Two agents in turn, each with a tool that counts its executions."""
    return SequentialAgent(
        "chain",
        sub_agents=[_tree_agent("first", tools=[record]), _tree_agent("second", tools=[record])],
    )
