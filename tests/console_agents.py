"""The app ``console`` the console's browser tests add to the test workers
(``AGENT_RUNNER_AGENTS``): a refund that waits for a person's confirmation, who may change the
amount."""

from __future__ import annotations

import os

from runner_core.agent import LLMAgent
from runner_core.openai_model import OpenAIModel
from runner_core.tools import tool


@tool(requires_confirmation=True, editable_params=["amount"])
def refund(order_id: str, amount: int) -> str:
    """Refund an amount of an order; a person confirms it first and may change the amount.

    Args:
        order_id: the order.
        amount: how much to refund.
    """
    return f"refunded {amount} on {order_id}"


def build_console() -> LLMAgent:
    model = OpenAIModel(
        os.environ.get("AGENT_RUNNER_MODEL", "scripted"),
        base_url=os.environ["OPENAI_BASE_URL"],
        api_key="sk-test",
        max_retries=0,
    )
    return LLMAgent("support", model=model, instruction="console test agent", tools=[refund])
