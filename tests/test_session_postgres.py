"""What only the PostgreSQL store does: soft delete, TTL sweeps, schema and table prefix,
identifier safety, concurrent schema creation, and behaviour when the server goes away.
Shared behaviour is in test_session_conformance.py."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import psycopg_pool
import pytest

from runner_core.errors import ConfigurationError, SessionBackendError
from session_backends import PostgresSessionService, from_url
from tests.services import PostgresServer, free_port
from tests.test_session_conformance import assistant_event, summary_of, user_event

pytestmark = pytest.mark.postgres

APP = "support-bot"
USER = "alice"


async def rows(dsn: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall()


@pytest.fixture
async def service(postgres_dsn: str) -> AsyncIterator[PostgresSessionService]:
    svc = PostgresSessionService(postgres_dsn)
    yield svc
    await svc.close()


async def populate(svc: PostgresSessionService, session_id: str = "s1") -> None:
    session = await svc.create_session(APP, USER, session_id, state={"k": 1})
    await svc.append_event(session, user_event(session, "hi"))
    await svc.append_event(session, assistant_event(session, "hello"))
    await svc.put_summary(APP, USER, session_id, summary_of(session, 2))


COUNT_BY_STATE = (
    "SELECT (SELECT count(*) FROM {t} WHERE deleted_at IS NULL), "
    "(SELECT count(*) FROM {t} WHERE deleted_at IS NOT NULL)"
)


async def live_and_deleted(dsn: str, table: str) -> tuple[int, int]:
    (row,) = await rows(dsn, COUNT_BY_STATE.format(t=table))
    return int(row[0]), int(row[1])


async def test_delete_is_soft_by_default(
    service: PostgresSessionService, postgres_dsn: str
) -> None:
    await populate(service)
    await service.delete_session(APP, USER, "s1")
    assert await service.get_session(APP, USER, "s1") is None
    assert await live_and_deleted(postgres_dsn, "session_states") == (0, 1)
    assert await live_and_deleted(postgres_dsn, "session_events") == (0, 2)
    assert await live_and_deleted(postgres_dsn, "session_summaries") == (0, 1)

    await populate(service)  # the ID is free again: uniqueness holds among live rows only
    assert await live_and_deleted(postgres_dsn, "session_states") == (1, 1)
    loaded = await service.get_session(APP, USER, "s1")
    assert loaded is not None and len(loaded.events) == 2


async def test_soft_delete_false_removes_rows(postgres_dsn: str) -> None:
    svc = from_url(postgres_dsn, soft_delete=False)
    try:
        assert isinstance(svc, PostgresSessionService)
        await populate(svc)
        await svc.delete_session(APP, USER, "s1")
    finally:
        await svc.close()
    for table in ("session_states", "session_events", "session_summaries"):
        assert await live_and_deleted(postgres_dsn, table) == (0, 0), table


@pytest.mark.parametrize("soft_delete", [True, False])
async def test_cleanup_retires_expired_rows(postgres_dsn: str, soft_delete: bool) -> None:
    svc = PostgresSessionService(
        postgres_dsn, soft_delete=soft_delete, session_ttl=1, user_state_ttl=1
    )
    try:
        await populate(svc)
        await svc.update_user_state(APP, USER, {"tier": "gold"})
        await svc.update_app_state(APP, {"kept": True})  # no app TTL: never expires
        deadline = time.monotonic() + 15
        while await svc.get_session(APP, USER, "s1") is not None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        while await svc.get_user_state(APP, USER) != {}:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert await svc.remove_expired() == 2  # one session, one user-state row
    finally:
        await svc.close()
    retired = 1 if soft_delete else 0
    assert await live_and_deleted(postgres_dsn, "session_states") == (0, retired)
    assert await live_and_deleted(postgres_dsn, "session_events") == (0, 2 * retired)
    assert await live_and_deleted(postgres_dsn, "user_states") == (0, retired)
    assert await live_and_deleted(postgres_dsn, "app_states") == (1, 0)


async def test_evicted_events_are_removed(postgres_dsn: str) -> None:
    svc = PostgresSessionService(postgres_dsn, event_limit=2)
    try:
        session = await svc.create_session(APP, USER, "s1")
        for n in range(3):
            await svc.append_event(session, user_event(session, f"u{n}"))
    finally:
        await svc.close()
    assert await live_and_deleted(postgres_dsn, "session_events") == (2, 0)
    positions = await rows(postgres_dsn, "SELECT position FROM session_events ORDER BY position")
    assert positions == [(1,), (2,)]


async def test_concurrent_appends_past_the_limit_read_the_window(postgres_dsn: str) -> None:
    """An append is one statement whose eviction cannot see rows committed after it started
    (appends queued on the session row before it): reads still show only the kept window,
    and the next append removes what was left."""
    svc = PostgresSessionService(postgres_dsn, event_limit=2, max_pool_size=8)
    try:
        await svc.create_session(APP, USER, "s1")
        for round_ in range(5):
            copies = [await svc.get_session(APP, USER, "s1") for _ in range(8)]
            await asyncio.gather(
                *(
                    svc.append_event(c, assistant_event(c, f"r{round_}-{n}"))
                    for n, c in enumerate(copies)
                    if c is not None
                )
            )
            loaded = await svc.get_session(APP, USER, "s1")
            assert loaded is not None and loaded.event_count == 8 * (round_ + 1)
            (row,) = await rows(
                postgres_dsn, "SELECT first_position, event_count FROM session_states"
            )
            kept = await rows(
                postgres_dsn,
                "SELECT event_id FROM session_events WHERE position >= %s ORDER BY position",
                row[0],
            )
            assert [e.id for e in loaded.events] == [k[0] for k in kept]
            assert len(kept) == 2 and row[1] == loaded.event_count
        await svc.append_event(loaded, assistant_event(loaded, "last"))
    finally:
        await svc.close()
    assert await live_and_deleted(postgres_dsn, "session_events") == (2, 0)


async def test_an_append_from_a_stale_session_below_the_limit_leaves_no_row_in_reads(
    postgres_dsn: str,
) -> None:
    """An append evicts in its statement only when the caller's session is at its limit as
    far as it knows: one that is behind (another writer appended meanwhile) moves the window
    without removing rows, and its next append removes them."""
    svc = PostgresSessionService(postgres_dsn, event_limit=3)
    try:
        stale = await svc.create_session(APP, USER, "s1")
        current = await svc.get_session(APP, USER, "s1")
        assert current is not None
        for n in range(4):  # another writer fills the session past its limit
            await svc.append_event(current, assistant_event(current, f"a{n}"))

        # When the stale copy (0 events, as it knows) appends
        await svc.append_event(stale, assistant_event(stale, "late"))

        # Then reads show the window of 3, though one row outside it is still stored
        loaded = await svc.get_session(APP, USER, "s1")
        assert loaded is not None and [e.message.text for e in loaded.events] == [
            "a2", "a3", "late"
        ]  # fmt: skip
        assert stale.event_count == 5  # the append told the copy the stored count
        assert await live_and_deleted(postgres_dsn, "session_events") == (4, 0)

        # ... and the copy's next append, now knowing the count, removes it
        await svc.append_event(stale, assistant_event(stale, "next"))
    finally:
        await svc.close()
    assert await live_and_deleted(postgres_dsn, "session_events") == (3, 0)


async def test_schema_and_table_prefix(postgres_dsn: str) -> None:
    tenant = PostgresSessionService(postgres_dsn, schema="tenant_a", table_prefix="app1_")
    plain = PostgresSessionService(postgres_dsn)
    try:
        await populate(tenant)
        await plain.create_session(APP, USER, "plain")
        assert await plain.get_session(APP, USER, "s1") is None
        assert await tenant.get_session(APP, USER, "plain") is None
    finally:
        await tenant.close()
        await plain.close()
    tables = await rows(
        postgres_dsn,
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_schema IN ('public', 'tenant_a') ORDER BY 1, 2",
    )
    names = [
        "app_states",
        "session_events",
        "session_fences",
        "session_states",
        "session_summaries",
        "user_states",
    ]
    assert tables == [("public", n) for n in names] + [("tenant_a", "app1_" + n) for n in names]


@pytest.mark.parametrize(
    "options",
    [
        {"schema": "x; DROP TABLE session_states; --"},
        {"schema": 'a"b'},
        {"schema": ""},
        {"schema": "s" * 41},
        {"table_prefix": "p'); DELETE FROM session_events; --"},
        {"table_prefix": "tenant-a_"},
        {"table_prefix": "1abc"},
    ],
)
def test_injection_in_options_is_refused(postgres_dsn: str, options: dict[str, str]) -> None:
    option = next(iter(options))
    with pytest.raises(ConfigurationError, match=option):
        PostgresSessionService(postgres_dsn, **options)  # type: ignore[arg-type]


async def test_sql_in_values_is_stored_as_data(
    service: PostgresSessionService, postgres_dsn: str
) -> None:
    nasty = "'); DROP TABLE session_states; --"
    session = await service.create_session(APP, USER, "s1", state={nasty: nasty})
    await service.append_event(
        session, user_event(session, nasty, state_delta={"user:" + nasty: 1})
    )
    await service.update_app_state(APP, {nasty: nasty})
    loaded = await service.get_session(APP, USER, "s1")
    assert loaded is not None
    assert loaded.state == {nasty: nasty, "user:" + nasty: 1, "app:" + nasty: nasty}
    assert loaded.events[0].message is not None and loaded.events[0].message.text == nasty
    assert await live_and_deleted(postgres_dsn, "session_states") == (1, 0)


async def test_skip_db_init_expects_existing_tables(postgres_dsn: str) -> None:
    bare = PostgresSessionService(postgres_dsn, skip_db_init=True)
    try:
        with pytest.raises(SessionBackendError, match="session_states"):
            await bare.create_session(APP, USER, "s1")
        initializer = PostgresSessionService(postgres_dsn)
        await initializer.get_app_state(APP)  # first use creates the tables
        await initializer.close()
        await bare.create_session(APP, USER, "s1")
    finally:
        await bare.close()


def _init_and_create(dsn: str, worker: int, barrier: Any) -> None:
    async def main() -> None:
        svc = PostgresSessionService(dsn, schema="shared_schema", table_prefix="race_")
        try:
            barrier.wait(timeout=60)
            await svc.create_session(APP, USER, f"worker-{worker}")
        finally:
            await svc.close()

    asyncio.run(main())


async def test_many_workers_create_the_schema_at_once(postgres_dsn: str) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    processes = [
        context.Process(target=_init_and_create, args=(postgres_dsn, n, barrier)) for n in range(4)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=90)
    assert [p.exitcode for p in processes] == [0, 0, 0, 0]
    svc = PostgresSessionService(postgres_dsn, schema="shared_schema", table_prefix="race_")
    try:
        listed = await svc.list_sessions(APP, USER)
    finally:
        await svc.close()
    assert sorted(s.id for s in listed) == [f"worker-{n}" for n in range(4)]


async def test_pool_opens_lazily_and_unreachable_server_fails_in_bounded_time() -> None:
    port = free_port()
    svc = PostgresSessionService(f"postgresql://nobody@127.0.0.1:{port}/db", connect_timeout=2)
    try:
        with pytest.raises(SessionBackendError) as info:
            # The guard only stops a hang from blocking the suite; it is not a speed check.
            await asyncio.wait_for(svc.get_session(APP, USER, "s1"), timeout=60)
    finally:
        await svc.close()
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "PostgreSQL running" in message and "AGENT_RUNNER_SESSION_URL" in message
    assert info.value.__cause__ is not None


async def test_a_given_pool_is_not_closed(postgres_dsn: str) -> None:
    pool = psycopg_pool.AsyncConnectionPool(
        postgres_dsn, min_size=1, max_size=2, open=False, kwargs={"autocommit": True}
    )
    await pool.open()
    svc = PostgresSessionService(pool=pool)
    await svc.create_session(APP, USER, "s1")
    await svc.close()
    async with pool.connection() as conn:
        await conn.execute("SELECT 1")
    await pool.close()


async def test_server_stopped_mid_use_then_restarted(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    svc = PostgresSessionService(postgres_dsn, connect_timeout=2)
    try:
        session = await svc.create_session(APP, USER, "s1")
        await svc.append_event(session, user_event(session, "before the outage"))

        postgres_server.stop()
        try:
            with pytest.raises(SessionBackendError, match=f"127.0.0.1:{postgres_server.port}"):
                await asyncio.wait_for(
                    svc.append_event(session, assistant_event(session, "lost")), timeout=60
                )
        finally:
            postgres_server.start()

        assert await svc.append_event(session, assistant_event(session, "after")) is True
        loaded = await svc.get_session(APP, USER, "s1")
        assert loaded is not None
        assert [e.message.text for e in loaded.events if getattr(e, "message", None)] == [
            "before the outage",
            "after",
        ]
    finally:
        await svc.close()
