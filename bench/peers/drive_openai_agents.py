"""Driver for the OpenAI Agents SDK (runs in its own venv; see driver_protocol.py).

- ``framework``: ``Runner.run_streamed`` with ``OpenAIChatCompletionsModel`` on the benchmark's
  client, tracing disabled, usage requested (``ModelSettings(include_usage=True)``: the SDK asks
  for it by default only from api.openai.com). No session: the SDK keeps no history unless it is
  given a ``Session``, and its default in-process sessions are SQLite, not memory, so this is
  the SDK's cheapest configuration.
- ``framework_db``: the same with ``SQLAlchemySession`` on PostgreSQL (asyncpg); its tables are
  created once at setup, then each run opens a session object with ``create_tables=False``.

Events: the items ``RunResultStreaming.stream_events()`` yields (raw response deltas, run
items such as tool called / tool output / message output, agent updates).
"""

from __future__ import annotations

from typing import Any

from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from agents.extensions.memory.sqlalchemy_session import SQLAlchemySession
from driver_protocol import INSTRUCTION, MODEL, PROMPT, Case, Driver, add, serve
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

ANSWER = "The answer is 5."


class OpenAIAgentsDriver(Driver):
    agent: Agent[Any]
    engine: AsyncEngine | None = None

    async def setup(self, config: dict[str, Any]) -> tuple[dict[str, Case], dict[str, str]]:
        set_tracing_disabled(True)
        self.agent = Agent(
            name="bench",
            instructions=INSTRUCTION,
            model=OpenAIChatCompletionsModel(model=MODEL, openai_client=self.client),
            model_settings=ModelSettings(include_usage=True),
            tools=[function_tool(add)],
        )
        cases: dict[str, Case] = {"framework": self.framework}
        unsupported: dict[str, str] = {}
        dsn = config.get("pg_dsn")
        if dsn:
            self.engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://"))
            await SQLAlchemySession("setup", engine=self.engine, create_tables=True).get_items()
            cases["framework_db"] = self.framework_db
        else:
            unsupported["framework_db"] = config.get("pg_missing", "no PostgreSQL")
        return cases, unsupported

    async def _run(self, session: SQLAlchemySession | None) -> int:
        result = Runner.run_streamed(self.agent, PROMPT, session=session)
        events = 0
        async for _ in result.stream_events():
            events += 1
        if result.final_output != ANSWER:
            raise RuntimeError(f"final output {result.final_output!r}, not {ANSWER!r}")
        return events

    async def framework(self, session: str) -> int:
        return await self._run(None)

    async def framework_db(self, session: str) -> int:
        assert self.engine is not None
        return await self._run(SQLAlchemySession(session, engine=self.engine))

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.dispose()
        await super().close()


if __name__ == "__main__":
    serve(OpenAIAgentsDriver())
