"""What only the MySQL store does: soft delete, TTL sweeps, table prefix, identifier safety,
the live-row unique keys, URL and size checks, concurrent schema creation, and behaviour when
the server goes away. Shared behaviour is in test_session_conformance.py (run on MariaDB)."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import asyncmy
import pytest

from runner_core.errors import ConfigurationError, InvalidRequestError, SessionBackendError
from session_backends import MySQLSessionService, from_url
from tests.mariadb import MAX_ALLOWED_PACKET, MariaDBServer
from tests.services import free_port
from tests.test_session_conformance import assistant_event, summary_of, user_event
from workers.settings import Settings

pytestmark = pytest.mark.mysql

APP = "support-bot"
USER = "alice"


async def rows(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run ``query`` on the test's database behind the store's back."""
    parts = urlsplit(url)
    conn = await asyncmy.connect(
        host=parts.hostname,
        port=parts.port,
        user=parts.username,
        database=parts.path[1:],
        autocommit=True,
    )
    try:
        async with conn.cursor() as cur:
            await cur.execute(query, params or None)
            return list(await cur.fetchall())
    finally:
        conn.close()


@pytest.fixture
async def service(mysql_url: str) -> AsyncIterator[MySQLSessionService]:
    svc = MySQLSessionService(mysql_url)
    yield svc
    await svc.close()


async def populate(svc: MySQLSessionService, session_id: str = "s1") -> None:
    session = await svc.create_session(APP, USER, session_id, state={"k": 1})
    await svc.append_event(session, user_event(session, "hi"))
    await svc.append_event(session, assistant_event(session, "hello"))
    await svc.put_summary(APP, USER, session_id, summary_of(session, 2))


async def live_and_deleted(url: str, table: str) -> tuple[int, int]:
    ((live, deleted),) = await rows(
        url,
        f"SELECT (SELECT count(*) FROM `{table}` WHERE deleted_at IS NULL), "
        f"(SELECT count(*) FROM `{table}` WHERE deleted_at IS NOT NULL)",
    )
    return int(live), int(deleted)


# --- delete, expiry, eviction -----------------------------------------------------------------


async def test_delete_is_soft_by_default(service: MySQLSessionService, mysql_url: str) -> None:
    await populate(service)
    await service.delete_session(APP, USER, "s1")
    assert await service.get_session(APP, USER, "s1") is None
    assert await live_and_deleted(mysql_url, "session_states") == (0, 1)
    assert await live_and_deleted(mysql_url, "session_events") == (0, 2)
    assert await live_and_deleted(mysql_url, "session_summaries") == (0, 1)

    await populate(service)  # the ID is free again: uniqueness holds among live rows only
    await service.delete_session(APP, USER, "s1")
    await populate(service)  # and again: any number of deleted rows may share the key
    assert await live_and_deleted(mysql_url, "session_states") == (1, 2)
    loaded = await service.get_session(APP, USER, "s1")
    assert loaded is not None and len(loaded.events) == 2


async def test_two_live_rows_can_never_share_a_key(
    service: MySQLSessionService, mysql_url: str
) -> None:
    # Given a live session (a unique key over deleted_at itself would let a second one in,
    # since a unique key treats NULLs as distinct)
    await service.create_session(APP, USER, "s1")
    insert = (
        "INSERT INTO session_states (app_name, user_id, session_id, state, created_at, "
        "updated_at) VALUES (%s, %s, %s, '{}', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))"
    )
    # When something inserts another live row under the same key, the server refuses it
    with pytest.raises(asyncmy.errors.IntegrityError):
        await rows(mysql_url, insert, APP, USER, "s1")
    assert await live_and_deleted(mysql_url, "session_states") == (1, 0)


async def test_soft_delete_false_removes_rows(mysql_url: str) -> None:
    svc = from_url(mysql_url, soft_delete=False)
    try:
        assert isinstance(svc, MySQLSessionService)
        await populate(svc)
        await svc.delete_session(APP, USER, "s1")
    finally:
        await svc.close()
    for table in ("session_states", "session_events", "session_summaries"):
        assert await live_and_deleted(mysql_url, table) == (0, 0), table


@pytest.mark.parametrize("soft_delete", [True, False])
async def test_cleanup_retires_expired_rows(mysql_url: str, soft_delete: bool) -> None:
    svc = MySQLSessionService(mysql_url, soft_delete=soft_delete, session_ttl=1, user_state_ttl=1)
    try:
        await populate(svc)
        await svc.take_fence(APP, USER, "s1", 3)
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
        assert await svc.remove_expired() == 0
    finally:
        await svc.close()
    retired = 1 if soft_delete else 0
    assert await live_and_deleted(mysql_url, "session_states") == (0, retired)
    assert await live_and_deleted(mysql_url, "session_events") == (0, 2 * retired)
    assert await live_and_deleted(mysql_url, "session_summaries") == (0, retired)
    assert await live_and_deleted(mysql_url, "user_states") == (0, retired)
    assert await live_and_deleted(mysql_url, "app_states") == (1, 0)
    assert await rows(mysql_url, "SELECT token FROM session_fences") == []


async def test_evicted_events_are_removed(mysql_url: str) -> None:
    svc = MySQLSessionService(mysql_url, event_limit=2)
    try:
        session = await svc.create_session(APP, USER, "s1")
        for n in range(3):
            await svc.append_event(session, user_event(session, f"u{n}"))
    finally:
        await svc.close()
    assert await live_and_deleted(mysql_url, "session_events") == (2, 0)
    positions = await rows(mysql_url, "SELECT position FROM session_events ORDER BY position")
    assert positions == [(1,), (2,)]


# --- names, IDs and values ------------------------------------------------------------------


async def test_table_prefix_keeps_stores_apart(mysql_url: str) -> None:
    tenant = MySQLSessionService(mysql_url, table_prefix="app1_")
    plain = MySQLSessionService(mysql_url)
    try:
        await populate(tenant)
        await plain.create_session(APP, USER, "plain")
        assert await plain.get_session(APP, USER, "s1") is None
        assert await tenant.get_session(APP, USER, "plain") is None
    finally:
        await tenant.close()
        await plain.close()
    tables = await rows(
        mysql_url,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() "
        "ORDER BY 1",
    )
    names = [
        "app_states",
        "session_events",
        "session_fences",
        "session_states",
        "session_summaries",
        "user_states",
    ]
    assert [t[0] for t in tables] == sorted(names + ["app1_" + n for n in names])


@pytest.mark.parametrize(
    "prefix",
    [
        "p`; DELETE FROM session_events; --",
        "x'); DROP TABLE session_states; --",
        "tenant-a_",
        "1abc",
        "p" * 31,
        "é_",
    ],
)
def test_unsafe_table_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="table_prefix"):
        MySQLSessionService("mysql://root@127.0.0.1:3306/db", table_prefix=prefix)


async def test_sql_in_values_is_stored_as_data(
    service: MySQLSessionService, mysql_url: str
) -> None:
    nasty = "'); DROP TABLE session_states; -- \\' \" `x`"
    session = await service.create_session(APP, USER, "s1", state={nasty: nasty})
    await service.append_event(
        session, user_event(session, nasty, state_delta={"user:" + nasty: 1})
    )
    await service.update_app_state(APP, {nasty: nasty})
    loaded = await service.get_session(APP, USER, "s1")
    assert loaded is not None
    assert loaded.state == {nasty: nasty, "user:" + nasty: 1, "app:" + nasty: nasty}
    assert loaded.events[0].message is not None and loaded.events[0].message.text == nasty
    assert await live_and_deleted(mysql_url, "session_states") == (1, 0)


async def test_ids_and_keys_are_case_sensitive(service: MySQLSessionService) -> None:
    # The server's usual collations fold case; the store's columns compare bytes.
    lower = await service.create_session(APP, "alice", "s1")
    upper = await service.create_session(APP, "Alice", "s1")
    await service.append_event(lower, user_event(lower, "lower", state_delta={"k": 1, "K": 2}))
    await service.update_user_state(APP, "Alice", {"tier": "gold"})
    loaded_lower = await service.get_session(APP, "alice", "s1")
    loaded_upper = await service.get_session(APP, "Alice", "s1")
    assert loaded_lower is not None and loaded_upper is not None
    assert loaded_lower.state == {"k": 1, "K": 2}
    assert loaded_upper.state == {"user:tier": "gold"} and loaded_upper.events == []
    assert upper.id == lower.id


async def test_null_state_values_are_kept(service: MySQLSessionService) -> None:
    session = await service.create_session(APP, USER, "s1", state={"a": 1, "b": {"x": 1}})
    await service.append_event(session, user_event(session, "hi", state_delta={"a": None}))
    await service.append_event(session, user_event(session, "ho", state_delta={"b": {"y": 2}}))
    loaded = await service.get_session(APP, USER, "s1")
    assert loaded is not None
    assert loaded.state == {"a": None, "b": {"y": 2}}  # set, not merged or deleted


async def test_too_long_keys_and_event_ids_are_refused(service: MySQLSessionService) -> None:
    session = await service.create_session(APP, USER, "s1")
    with pytest.raises(InvalidRequestError, match="at most 255"):
        await service.update_app_state(APP, {"k" * 256: 1})
    with pytest.raises(InvalidRequestError, match="at most 255"):
        await service.append_event(
            session, user_event(session, "hi", state_delta={"user:" + "k" * 256: 1})
        )
    with pytest.raises(InvalidRequestError, match="event ID"):
        await service.append_event(session, user_event(session, "hi", id="e" * 256))
    loaded = await service.get_session(APP, USER, "s1")
    assert loaded is not None and loaded.events == [] and loaded.event_count == 0
    assert await service.get_app_state(APP) == {}


async def test_an_oversized_event_is_refused_and_nothing_is_written(
    service: MySQLSessionService,
) -> None:
    # Given a server that takes statements of at most MAX_ALLOWED_PACKET bytes
    session = await service.create_session(APP, USER, "s1")
    await service.append_event(session, user_event(session, "before"))
    huge = assistant_event(session, "x" * MAX_ALLOWED_PACKET, state_delta={"big": True})

    # When an event larger than that is appended
    with pytest.raises(InvalidRequestError, match="max_allowed_packet") as info:
        await service.append_event(session, huge)

    # Then the error names the size and the fix, nothing was written, and the store goes on
    assert f"{MAX_ALLOWED_PACKET}" in str(info.value)
    loaded = await service.get_session(APP, USER, "s1")
    assert loaded is not None and len(loaded.events) == 1 and "big" not in loaded.state
    assert await service.append_event(session, assistant_event(session, "after")) is True


# --- URLs and options -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("mysql://root@127.0.0.1:3306", "names no database"),
        ("mysql://root@127.0.0.1:3306/", "names no database"),
        ("mysql://root@127.0.0.1:3306/a/b", "names no database"),
        ("mysql://root@127.0.0.1:99999/db", "bad port"),
        ("mysql://root@127.0.0.1:port/db", "bad port"),
        ("mysql://root@127.0.0.1/db?charset=latin1", "no query parameters"),
    ],
)
def test_bad_urls_are_refused_naming_the_fix(url: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match) as info:
        from_url(url)
    assert "mysql://user:password@host:3306/database" in str(info.value) or "keyword" in str(
        info.value
    )


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"max_pool_size": 0}, "max_pool_size"),
        ({"event_limit": -1}, "event_limit"),
        ({"session_ttl": "soon"}, "session_ttl"),
        ({"schema": "tenant_a"}, "schema"),  # PostgreSQL's option; MySQL has table_prefix
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        from_url("mysql://root@127.0.0.1:3306/db", **options)


def test_worker_settings_accept_a_mysql_url() -> None:
    url = "mysql://agent:s3cret@db.internal:3306/sessions"
    settings = Settings.from_env({"AGENT_RUNNER_SESSION_URL": url})
    assert settings.session_url == url


async def test_unreachable_server_fails_with_a_clear_error_and_no_password() -> None:
    port = free_port()
    svc = MySQLSessionService(f"mysql://agent:s3cret@127.0.0.1:{port}/db", connect_timeout=2)
    try:
        with pytest.raises(SessionBackendError) as info:
            # The guard only stops a hang from blocking the suite; it is not a speed check.
            await asyncio.wait_for(svc.get_session(APP, USER, "s1"), timeout=60)
    finally:
        await svc.close()
    message = str(info.value)
    assert f"127.0.0.1:{port}/db" in message
    assert "MySQL/MariaDB running" in message and "AGENT_RUNNER_SESSION_URL" in message
    assert "s3cret" not in message and "s3cret" not in repr(svc)
    assert info.value.__cause__ is not None


async def test_skip_db_init_expects_existing_tables(mysql_url: str) -> None:
    bare = MySQLSessionService(mysql_url, skip_db_init=True)
    try:
        with pytest.raises(SessionBackendError, match="session_states"):
            await bare.create_session(APP, USER, "s1")
        initializer = MySQLSessionService(mysql_url)
        await initializer.get_app_state(APP)  # first use creates the tables
        await initializer.close()
        await bare.create_session(APP, USER, "s1")
    finally:
        await bare.close()


def _init_and_create(url: str, worker: int, barrier: Any) -> None:
    async def main() -> None:
        svc = MySQLSessionService(url, table_prefix="race_")
        try:
            barrier.wait(timeout=60)
            await svc.create_session(APP, USER, f"worker-{worker}")
        finally:
            await svc.close()

    asyncio.run(main())


async def test_many_workers_create_the_tables_at_once(mysql_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    processes = [
        context.Process(target=_init_and_create, args=(mysql_url, n, barrier)) for n in range(4)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=90)
    assert [p.exitcode for p in processes] == [0, 0, 0, 0]
    svc = MySQLSessionService(mysql_url, table_prefix="race_")
    try:
        listed = await svc.list_sessions(APP, USER)
    finally:
        await svc.close()
    assert sorted(s.id for s in listed) == [f"worker-{n}" for n in range(4)]


async def test_server_stopped_mid_use_then_restarted(
    mysql_server: MariaDBServer, mysql_url: str
) -> None:
    svc = MySQLSessionService(mysql_url, connect_timeout=2)
    try:
        session = await svc.create_session(APP, USER, "s1")
        await svc.append_event(session, user_event(session, "before the outage"))

        mysql_server.stop()
        try:
            with pytest.raises(SessionBackendError, match=f"127.0.0.1:{mysql_server.port}"):
                await asyncio.wait_for(
                    svc.append_event(session, assistant_event(session, "lost")), timeout=60
                )
        finally:
            mysql_server.start()

        assert await svc.append_event(session, assistant_event(session, "after")) is True
        loaded = await svc.get_session(APP, USER, "s1")
        assert loaded is not None
        assert [e.message.text for e in loaded.events if getattr(e, "message", None)] == [
            "before the outage",
            "after",
        ]
    finally:
        await svc.close()
