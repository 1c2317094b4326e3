"""Driver for Google ADK (runs in its own venv; see driver_protocol.py).

- ``framework``: ``Runner`` + ``LlmAgent`` over ``OpenAILlm`` (google.adk.integrations.openai)
  on the benchmark's client, ``InMemorySessionService``, ``RunConfig(streaming_mode=SSE)``, and
  ``auto_create_session=True`` so a run on a new session creates it, as agent-runner's does.
- ``framework_db``: the same with ``DatabaseSessionService`` on PostgreSQL
  (SQLAlchemy async engine, asyncpg driver); its tables are created by the warm-up runs.

Events: the ``Event`` objects ``Runner.run_async`` yields (partial text events included).
"""

from __future__ import annotations

from typing import Any

from driver_protocol import INSTRUCTION, MODEL, PROMPT, Case, Driver, add, serve
from google.adk.agents import LlmAgent
from google.adk.agents.run_config import RunConfig, StreamingMode
from google.adk.integrations.openai import OpenAILlm
from google.adk.runners import Runner
from google.adk.sessions import BaseSessionService, DatabaseSessionService, InMemorySessionService
from google.genai import types

ANSWER = "The answer is 5."


class AdkDriver(Driver):
    def __init__(self) -> None:
        self.runners: dict[str, Runner] = {}
        self.services: list[BaseSessionService] = []
        self.message = types.Content(role="user", parts=[types.Part(text=PROMPT)])
        self.run_config = RunConfig(streaming_mode=StreamingMode.SSE)

    async def setup(self, config: dict[str, Any]) -> tuple[dict[str, Case], dict[str, str]]:
        agent = LlmAgent(
            name="bench",
            model=OpenAILlm(model=MODEL, client=self.client),
            instruction=INSTRUCTION,
            tools=[add],
        )

        def runner(service: BaseSessionService) -> Runner:
            self.services.append(service)
            return Runner(
                app_name="bench", agent=agent, session_service=service, auto_create_session=True
            )

        self.runners["framework"] = runner(InMemorySessionService())
        cases: dict[str, Case] = {"framework": self.framework}
        unsupported: dict[str, str] = {}
        dsn = config.get("pg_dsn")
        if dsn:
            url = dsn.replace("postgresql://", "postgresql+asyncpg://")
            self.runners["framework_db"] = runner(DatabaseSessionService(db_url=url))
            cases["framework_db"] = self.framework_db
        else:
            unsupported["framework_db"] = config.get("pg_missing", "no PostgreSQL")
        return cases, unsupported

    async def _run(self, runner: Runner, session: str) -> int:
        events = 0
        text = ""
        async for event in runner.run_async(
            user_id="user", session_id=session, new_message=self.message,
            run_config=self.run_config,
        ):  # fmt: skip
            events += 1
            if not event.partial and event.content and event.content.parts:
                text = "".join(part.text or "" for part in event.content.parts)
        if text != ANSWER:
            raise RuntimeError(f"final text {text!r}, not {ANSWER!r}")
        return events

    async def framework(self, session: str) -> int:
        return await self._run(self.runners["framework"], session)

    async def framework_db(self, session: str) -> int:
        return await self._run(self.runners["framework_db"], session)

    async def close(self) -> None:
        for runner in self.runners.values():
            await runner.close()
        for service in self.services:
            close = getattr(service, "close", None)
            if close is not None:
                await close()
        await super().close()


if __name__ == "__main__":
    serve(AdkDriver())
