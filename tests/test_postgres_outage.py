"""A PostgreSQL outage of several seconds, with calls failing meanwhile: every call fails
with an error that names the server and why, and the very first call after the server is back
succeeds (issue 12: runs kept failing with ``PoolTimeout`` for seconds after an outage, while
the pool's own reconnection attempts backed off).

At the store and through real workers: a run submitted right after the restart completes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from runner_core.errors import SessionBackendError
from runner_core.testing import ScriptedModelServer
from session_backends import PostgresSessionService, from_url
from tests.celery_workers import StartWorker, wait_for_completion
from tests.services import PostgresServer
from tests.test_session_conformance import assistant_event, user_event

pytestmark = pytest.mark.postgres

APP = "support-bot"
USER = "alice"
#: Long enough for psycopg_pool's reconnection backoff (1, 2, 4, 8 s between attempts) to leave
#: a gap of several seconds around the moment the server comes back.
OUTAGE_S = 10.0
#: The outage of the issue. A worker's pool waits 5 s for a connection (``connect_timeout``), so
#: the gap between two reconnection attempts must be longer than that: 8 then 16 s here.
WORKER_OUTAGE_S = 20.0
#: Calls in flight at once during the outage, like runs of several sessions.
CALLERS = 3
#: Only keeps a hang from blocking the suite; nothing here is a speed check.
GUARD_S = 60.0


async def test_the_first_call_after_postgresql_is_back_succeeds(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    # Given a store in use, its pool holding connections
    svc = PostgresSessionService(postgres_dsn, connect_timeout=2)
    try:
        session = await svc.create_session(APP, USER, "s1")
        await svc.append_event(session, user_event(session, "before the outage"))

        # When PostgreSQL is down for several seconds while calls keep coming
        failures: list[SessionBackendError] = []

        async def call() -> None:
            with pytest.raises(SessionBackendError) as info:
                await asyncio.wait_for(svc.get_session(APP, USER, "s1"), timeout=GUARD_S)
            failures.append(info.value)

        postgres_server.stop()
        try:
            end = time.monotonic() + OUTAGE_S
            while time.monotonic() < end:
                await asyncio.gather(*(call() for _ in range(CALLERS)))
                await asyncio.sleep(0.2)
        finally:
            postgres_server.start()

        # Then the very first call after it is back succeeds
        reply = assistant_event(session, "after the outage")
        assert await asyncio.wait_for(svc.append_event(session, reply), timeout=GUARD_S)
        loaded = await svc.get_session(APP, USER, "s1")
        assert loaded is not None
        assert [e.message.text for e in loaded.events if getattr(e, "message", None)] == [
            "before the outage",
            "after the outage",
        ]
    finally:
        await svc.close()

    # And every call during the outage failed naming the server and why (the connection was
    # refused), not only that no pooled connection came
    assert len(failures) >= CALLERS
    for failure in failures:
        message = str(failure)
        assert f"127.0.0.1:{postgres_server.port}" in message
        assert "Connection refused" in message, message
        assert "AGENT_RUNNER_SESSION_URL" in message


async def test_a_store_started_while_postgresql_is_down_works_once_it_is_up(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    # Given a store whose first call finds PostgreSQL down
    svc = PostgresSessionService(postgres_dsn, connect_timeout=2)
    try:
        postgres_server.stop()
        try:
            end = time.monotonic() + OUTAGE_S
            while time.monotonic() < end:
                with pytest.raises(SessionBackendError, match="Connection refused"):
                    await asyncio.wait_for(svc.get_session(APP, USER, "s1"), timeout=GUARD_S)
                await asyncio.sleep(0.2)
        finally:
            postgres_server.start()

        # When it is back, then the first call succeeds (and creates the tables)
        created = await asyncio.wait_for(svc.create_session(APP, USER, "s1"), timeout=GUARD_S)
        assert created.id == "s1"
    finally:
        await svc.close()


@pytest.fixture
def model_server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as server:
        server.set_default("ok")
        yield server


@pytest.mark.redis
@pytest.mark.celery
def test_a_run_submitted_right_after_postgresql_is_back_completes(
    producer: Any,
    start_worker: StartWorker,
    model_server: ScriptedModelServer,
    postgres_server: PostgresServer,
    postgres_dsn: str,
    redis_url: str,
) -> None:
    # Given a worker whose sessions live in PostgreSQL, with a run behind it
    start_worker(OPENAI_BASE_URL=model_server.url, AGENT_RUNNER_SESSION_URL=postgres_dsn)
    from workers.tasks import submit_run

    def run(session_id: str) -> dict[str, Any]:
        result = submit_run.delay("assistant", USER, session_id, "hello")
        return wait_for_completion(redis_url, result.id, timeout=GUARD_S)[-1]

    assert run("warm")["status"] == "completed"

    # When PostgreSQL is down for 20 s while runs keep coming (and failing)
    failed: list[dict[str, Any]] = []
    postgres_server.stop()
    try:
        end = time.monotonic() + WORKER_OUTAGE_S
        while time.monotonic() < end:
            failed.append(run(f"during-{len(failed)}"))
    finally:
        postgres_server.start()

    # Then the run submitted right after it is back completes
    after = run("after")
    assert after["status"] == "completed", after
    assert _stored_texts(postgres_dsn, "after") == ["hello", "ok"]
    # And each run during the outage failed, saying the session store was unreachable
    assert failed
    for completion in failed:
        assert completion["status"] == "failed"
        assert completion["error"]["type"] == "session_backend_error", completion
        assert f"127.0.0.1:{postgres_server.port}" in completion["error"]["message"]


def _stored_texts(dsn: str, session_id: str) -> list[str]:
    async def load() -> list[str]:
        store = from_url(dsn)
        try:
            session = await store.get_session("assistant", USER, session_id)
        finally:
            await store.close()
        assert session is not None
        return [e.message.text for e in session.events if getattr(e, "message", None)]

    return asyncio.run(load())
