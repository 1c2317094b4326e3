"""Driver for LangGraph (runs in its own venv; see driver_protocol.py).

- ``framework``: ``create_react_agent`` (langgraph.prebuilt) over
  ``ChatOpenAI(streaming=True, stream_usage=True)`` with the ``InMemorySaver`` checkpointer, one
  thread per session, driven with ``astream(stream_mode=["messages", "updates"])``.
- ``framework_db``: the same graph with ``AsyncPostgresSaver`` (langgraph-checkpoint-postgres,
  one psycopg connection from ``from_conn_string``; ``setup()`` runs once at driver setup).

Events: the ``(mode, chunk)`` pairs ``astream`` yields: one per streamed message chunk
(``messages``) and one per node update (``updates``).
"""

from __future__ import annotations

import warnings
from contextlib import AsyncExitStack
from typing import Any

from driver_protocol import API_KEY, INSTRUCTION, MODEL, PROMPT, Case, Driver, add, serve
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

with warnings.catch_warnings():
    # create_react_agent is deprecated for langchain.agents.create_agent (a separate package);
    # it is still LangGraph's own prebuilt ReAct agent.
    warnings.simplefilter("ignore")
    from langgraph.prebuilt import create_react_agent

ANSWER = "The answer is 5."


class LangGraphDriver(Driver):
    def __init__(self) -> None:
        self.exit_stack = AsyncExitStack()
        self.graphs: dict[str, Any] = {}

    async def setup(self, config: dict[str, Any]) -> tuple[dict[str, Case], dict[str, str]]:
        llm = ChatOpenAI(
            model=MODEL, base_url=config["model_url"], api_key=API_KEY,  # type: ignore[arg-type]
            streaming=True, stream_usage=True, max_retries=0,
        )  # fmt: skip
        tools = [tool(add)]

        def graph(checkpointer: Any) -> Any:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return create_react_agent(llm, tools, prompt=INSTRUCTION, checkpointer=checkpointer)

        self.graphs["framework"] = graph(InMemorySaver())
        cases: dict[str, Case] = {"framework": self.framework}
        unsupported: dict[str, str] = {}
        dsn = config.get("pg_dsn")
        if dsn:
            saver = await self.exit_stack.enter_async_context(
                AsyncPostgresSaver.from_conn_string(dsn)
            )
            await saver.setup()
            self.graphs["framework_db"] = graph(saver)
            cases["framework_db"] = self.framework_db
        else:
            unsupported["framework_db"] = config.get("pg_missing", "no PostgreSQL")
        return cases, unsupported

    async def _run(self, graph: Any, session: str) -> int:
        events = 0
        last_update: Any = None
        async for mode, chunk in graph.astream(
            {"messages": [("user", PROMPT)]},
            config={"configurable": {"thread_id": session}},
            stream_mode=["messages", "updates"],
        ):
            events += 1
            if mode == "updates":
                last_update = chunk
        text = last_update["agent"]["messages"][-1].content if last_update else None
        if text != ANSWER:
            raise RuntimeError(f"final message {text!r}, not {ANSWER!r}")
        return events

    async def framework(self, session: str) -> int:
        return await self._run(self.graphs["framework"], session)

    async def framework_db(self, session: str) -> int:
        return await self._run(self.graphs["framework_db"], session)

    async def close(self) -> None:
        await self.exit_stack.aclose()
        await super().close()


if __name__ == "__main__":
    serve(LangGraphDriver())
