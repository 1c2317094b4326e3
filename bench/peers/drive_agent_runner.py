"""Driver for agent-runner itself, in the project's interpreter (see driver_protocol.py).

Run as ``python -m bench.peers.drive_agent_runner`` from the repository root.

- ``framework``: ``Runner`` + ``LLMAgent`` with ``InMemorySessionService``, streaming, on the
  same ``AsyncOpenAI`` client as the raw baseline.
- ``framework_db``: the same with ``PostgresSessionService``.
- ``framework_mysql``: the same with ``MySQLSessionService`` (a MariaDB server).
- ``distributed``: ``submit_run.delay`` to a real ``celery worker`` (threads pool, started by
  the orchestrator, Redis session store), then ``workers.client.stream_events`` until the
  ``runner.completion`` event: enqueue, worker pick-up, the run, every event published on Redis
  and read back by this process.

Events: the ``Event`` objects a run yields (``message.delta`` included), ``runner.completion``
last.
"""

from __future__ import annotations

from typing import Any

from bench.peers.agent_runner_app import APP, build_agent
from bench.peers.driver_protocol import PROMPT, Case, Driver, serve
from runner_core import Event, RunCompletionEvent, Runner
from session_backends import InMemorySessionService, MySQLSessionService, PostgresSessionService

ANSWER = "The answer is 5."


def _check(last: Event) -> None:
    if not isinstance(last, RunCompletionEvent):
        raise RuntimeError(f"run ended with a {last.type} event, not runner.completion")
    if last.status != "completed" or last.final_text != ANSWER:
        raise RuntimeError(f"run ended {last.status} with {last.final_text!r}, not {ANSWER!r}")


class AgentRunnerDriver(Driver):
    def __init__(self) -> None:
        self.runners: dict[str, Runner] = {}

    async def setup(self, config: dict[str, Any]) -> tuple[dict[str, Case], dict[str, str]]:
        agent = build_agent(self.client)
        self.runners["framework"] = Runner(APP, agent, session_service=InMemorySessionService())
        cases: dict[str, Case] = {"framework": self.framework}
        unsupported: dict[str, str] = {}
        dsn = config.get("pg_dsn")
        if dsn:
            service = PostgresSessionService(dsn)
            self.runners["framework_db"] = Runner(APP, agent, session_service=service)
            cases["framework_db"] = self.framework_db
        else:
            unsupported["framework_db"] = config.get("pg_missing", "no PostgreSQL")
        mysql_url = config.get("mysql_url")
        if mysql_url:
            mysql = MySQLSessionService(mysql_url)
            self.runners["framework_mysql"] = Runner(APP, agent, session_service=mysql)
            cases["framework_mysql"] = self.framework_mysql
        else:
            unsupported["framework_mysql"] = config.get("mysql_missing") or "no MariaDB"
        if config.get("distributed"):
            cases["distributed"] = self.distributed
        else:
            unsupported["distributed"] = config.get("distributed_missing", "no worker")
        return cases, unsupported

    async def _run(self, runner: Runner, session: str) -> int:
        events = 0
        last: Event | None = None
        async for event in runner.run("user", session, PROMPT):
            events += 1
            last = event
        assert last is not None
        _check(last)
        return events

    async def framework(self, session: str) -> int:
        return await self._run(self.runners["framework"], session)

    async def framework_db(self, session: str) -> int:
        return await self._run(self.runners["framework_db"], session)

    async def framework_mysql(self, session: str) -> int:
        return await self._run(self.runners["framework_mysql"], session)

    def distributed(self, session: str) -> int:
        # Imported here: workers.app reads the broker settings from the environment.
        from workers.client import stream_events
        from workers.tasks import submit_run

        result = submit_run.delay(APP, "user", session, PROMPT)
        events = 0
        last: Event | None = None
        for event in stream_events(result.id, timeout=30):
            events += 1
            last = event
        assert last is not None
        _check(last)
        return events

    async def close(self) -> None:
        for runner in self.runners.values():
            await runner.close()
            await runner.session_service.close()
        await super().close()


if __name__ == "__main__":
    serve(AgentRunnerDriver())
