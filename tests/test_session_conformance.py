"""One conformance suite for every session store: memory, Redis, PostgreSQL and MySQL.

Each test runs against each backend (the ``session_service`` / ``make_service`` fixtures); the
Redis and PostgreSQL servers are real ones started by tests/services.py, the MariaDB server by
tests/mariadb.py. Backend-only behaviour (key layout, soft-deleted rows, ...) lives in
test_session_redis.py, test_session_postgres.py and test_session_mysql.py.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import asyncmy
import psycopg
import pytest

import session_backends
from runner_core.errors import (
    ConfigurationError,
    CorruptSessionDataError,
    FencedError,
    InvalidRequestError,
    SessionNotFoundError,
)
from runner_core.events import (
    Event,
    MessageDeltaEvent,
    MessageEvent,
    RunRestartedEvent,
    StateUpdateEvent,
)
from runner_core.messages import Message
from runner_core.session import (
    Session,
    SessionOpener,
    SessionService,
    Summary,
    first_kept_position,
    open_session,
    summary_replaces,
)
from session_backends import (
    InMemorySessionService,
    PostgresSessionService,
    RedisSessionService,
    from_url,
)
from session_backends.redis_target import async_client

APP = "support-bot"
USER = "alice"

MakeService = Callable[..., Awaitable[SessionService]]

BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    # The Redis store on a three-node Redis Cluster (tests/redis_cluster.py).
    pytest.param("redis-cluster", id="redis-cluster", marks=pytest.mark.redis),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    pytest.param("mysql", id="mysql", marks=pytest.mark.mysql),
]

#: The fixture giving each server-backed store's URL (a clean database or DB per test).
URL_FIXTURES = {
    "redis": "redis_url",
    "redis-cluster": "redis_cluster_url",
    "postgres": "postgres_dsn",
    "mysql": "mysql_url",
}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def backend_url(backend: str, request: pytest.FixtureRequest) -> str:
    if backend == "memory":
        return "memory://"
    url: str = request.getfixturevalue(URL_FIXTURES[backend])
    return url


@pytest.fixture
async def make_service(backend_url: str) -> AsyncIterator[MakeService]:
    """Build a service of this backend with options; all are closed after the test."""
    built: list[SessionService] = []

    async def make(**options: Any) -> SessionService:
        service = from_url(backend_url, **options)
        built.append(service)
        return service

    yield make
    for service in built:
        await service.close()


@pytest.fixture
async def session_service(make_service: MakeService) -> SessionService:
    return await make_service()


_SEQ = itertools.count()


def _ids(fields: dict[str, Any]) -> dict[str, Any]:
    """An event's ID is "{invocation_id}:{seq}": give each event of a test its own seq."""
    return {"invocation_id": "inv-1", "seq": next(_SEQ), **fields}


def user_event(session: Session, text: str, **fields: Any) -> Event:
    return MessageEvent(author="user", message=Message.user(text), **_ids(fields))


def assistant_event(session: Session, text: str, **fields: Any) -> Event:
    return MessageEvent(author="assistant", message=Message.assistant(text), **_ids(fields))


def state_event(session: Session, delta: dict[str, Any]) -> Event:
    return StateUpdateEvent(author="agent", state_delta=delta, **_ids({}))


def texts(session: Session) -> list[str]:
    return [e.message.text if e.type == "message" else e.type for e in session.events]


async def wait_until(check: Callable[[], Awaitable[bool]], limit: float = 15.0) -> None:
    """Poll ``check`` until it holds (TTL tests never assert on timing)."""
    deadline = time.monotonic() + limit
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not reached within {limit} s")
        await asyncio.sleep(0.1)


# --- the package's public face --------------------------------------------------------------


def test_public_names() -> None:
    assert session_backends.__all__ == sorted(session_backends.__all__)
    # The session stores and their factory (other kinds of store live beside them).
    assert {
        "InMemorySessionService",
        "MySQLSessionService",
        "PostgresSessionService",
        "RedisSessionService",
        "from_url",
    } <= set(session_backends.__all__)
    for name in session_backends.__all__:
        assert getattr(session_backends, name) is not None


@pytest.mark.parametrize(
    ("url", "cls"),
    [
        ("memory://", InMemorySessionService),
        ("redis://127.0.0.1:6379/0", RedisSessionService),
        ("rediss://127.0.0.1:6380/0", RedisSessionService),
        ("unix:///tmp/redis.sock?db=1", RedisSessionService),
        ("postgresql://agent@127.0.0.1:5432/sessions", PostgresSessionService),
        ("postgres://agent@127.0.0.1:5432/sessions", PostgresSessionService),
        ("mysql://agent:secret@127.0.0.1:3306/sessions", session_backends.MySQLSessionService),
    ],
)
async def test_from_url_picks_the_backend_without_connecting(url: str, cls: type[Any]) -> None:
    service = from_url(url)
    assert isinstance(service, cls)
    assert isinstance(service, SessionService)
    await service.close()


@pytest.mark.parametrize("url", ["mongodb://x@127.0.0.1/db", "http://127.0.0.1", "nonsense"])
def test_from_url_rejects_unknown_schemes_naming_the_accepted_ones(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        from_url(url)
    message = str(info.value)
    assert "redis://" in message and "postgresql://" in message and "memory://" in message
    assert "mysql://" in message


def test_from_url_rejects_unknown_and_invalid_options() -> None:
    with pytest.raises(ConfigurationError, match="no_such_option"):
        from_url("memory://", no_such_option=1)
    with pytest.raises(ConfigurationError, match="session_ttl"):
        from_url("redis://127.0.0.1/0", session_ttl=-5)
    with pytest.raises(ConfigurationError, match="event_limit"):
        from_url("postgresql://a@127.0.0.1/db", event_limit="many")
    with pytest.raises(ConfigurationError, match="table_prefix"):
        from_url("mysql://a@127.0.0.1/db", table_prefix="x`; DROP TABLE session_states; --")


# --- create / get -----------------------------------------------------------------------------


async def test_create_routes_initial_state_to_its_scopes(session_service: SessionService) -> None:
    created = await session_service.create_session(
        APP,
        USER,
        "s1",
        state={"topic": "billing", "app:plan": "pro", "user:lang": "fr", "temp:scratch": 1},
    )
    expected = {"topic": "billing", "app:plan": "pro", "user:lang": "fr"}
    assert created.state == expected
    assert (created.id, created.app_name, created.user_id) == ("s1", APP, USER)
    assert created.events == [] and created.event_count == 0

    loaded = await session_service.get_session(APP, USER, "s1")
    assert loaded is not None
    assert loaded.state == expected
    assert loaded.created_at == created.created_at
    assert await session_service.get_app_state(APP) == {"plan": "pro"}
    assert await session_service.get_user_state(APP, USER) == {"lang": "fr"}


@pytest.mark.parametrize("session_id", [None, ""])
async def test_create_generates_an_id(session_service: SessionService, session_id: Any) -> None:
    first = await session_service.create_session(APP, USER, session_id)
    second = await session_service.create_session(APP, USER, session_id)
    assert first.id and second.id and first.id != second.id
    assert await session_service.get_session(APP, USER, first.id) is not None


async def test_create_refuses_an_existing_session(session_service: SessionService) -> None:
    await session_service.create_session(APP, USER, "s1", state={"kept": True})
    with pytest.raises(InvalidRequestError, match="already exists"):
        await session_service.create_session(APP, USER, "s1", state={"kept": False})
    loaded = await session_service.get_session(APP, USER, "s1")
    assert loaded is not None and loaded.state == {"kept": True}


async def test_get_missing_session_is_none(session_service: SessionService) -> None:
    assert await session_service.get_session(APP, USER, "nope") is None
    assert await session_service.get_summary(APP, USER, "nope") is None


async def test_same_session_id_under_other_users_and_apps_is_another_session(
    session_service: SessionService,
) -> None:
    a = await session_service.create_session(APP, "alice", "shared-id")
    await session_service.create_session(APP, "bob", "shared-id")
    await session_service.create_session("other-app", "alice", "shared-id")
    await session_service.append_event(a, user_event(a, "only alice's"))
    bob = await session_service.get_session(APP, "bob", "shared-id")
    other = await session_service.get_session("other-app", "alice", "shared-id")
    assert bob is not None and bob.events == []
    assert other is not None and other.events == []


# --- append ---------------------------------------------------------------------------------


async def test_append_stores_events_in_order_and_updates_the_session_in_place(
    session_service: SessionService,
) -> None:
    session = await session_service.create_session(APP, USER, "s1")
    before = session.updated_at
    question = user_event(session, "What is 2 + 3?")
    answer = assistant_event(session, "5", state_delta={"answered": True})

    assert await session_service.append_event(session, question) is True
    assert await session_service.append_event(session, answer) is True

    assert [e.id for e in session.events] == [question.id, answer.id]
    assert session.state == {"answered": True}
    assert session.event_count == 2
    assert session.updated_at >= before
    loaded = await session_service.get_session(APP, USER, "s1")
    assert loaded is not None
    assert [e.id for e in loaded.events] == [question.id, answer.id]
    assert loaded.events[0] == question and loaded.events[1] == answer
    assert loaded.state == {"answered": True}
    assert loaded.event_count == 2


# --- fencing -------------------------------------------------------------------------------


async def test_the_fence_holder_appends_and_an_older_owner_writes_nothing(
    session_service: SessionService,
) -> None:
    # Given a session fenced by its first owner (token 5), which appended an event
    await session_service.take_fence(APP, USER, "s1", 5)
    stale = await session_service.create_session(APP, USER, "s1")
    assert await session_service.append_event(stale, user_event(stale, "hi"), fence=5) is True

    # When a newer owner takes the session (token 9) and the old one appends again
    await session_service.take_fence(APP, USER, "s1", 9)
    with pytest.raises(FencedError, match="newer owner"):
        await session_service.append_event(
            stale, assistant_event(stale, "late", state_delta={"late": True}), fence=5
        )

    # Then nothing of it was stored, and the newer owner appends
    loaded = await session_service.get_session(APP, USER, "s1")
    assert loaded is not None
    assert [e.message.content for e in loaded.events if getattr(e, "message", None)] == ["hi"]
    assert "late" not in loaded.state and loaded.event_count == 1
    assert await session_service.append_event(loaded, assistant_event(loaded, "ok"), fence=9)


async def test_a_fence_is_only_ever_raised(session_service: SessionService) -> None:
    await session_service.take_fence(APP, USER, "s1", 9)
    await session_service.take_fence(APP, USER, "s1", 9)  # the same owner again: no-op

    with pytest.raises(FencedError):
        await session_service.take_fence(APP, USER, "s1", 5)
    session = await session_service.create_session(APP, USER, "s1")
    assert await session_service.append_event(session, user_event(session, "hi"), fence=9)


async def test_a_fenced_append_needs_the_fence_taken(session_service: SessionService) -> None:
    session = await session_service.create_session(APP, USER, "s1")

    with pytest.raises(FencedError):
        await session_service.append_event(session, user_event(session, "hi"), fence=3)
    assert await session_service.append_event(session, user_event(session, "hi")) is True
    with pytest.raises(InvalidRequestError, match="token must be an int >= 1"):
        await session_service.take_fence(APP, USER, "s1", 0)


async def test_a_takeover_waits_for_an_append_in_flight_and_then_sees_it(
    session_service: SessionService,
) -> None:
    # Given many appends of an old owner racing a new owner taking the session
    await session_service.take_fence(APP, USER, "s1", 1)
    session = await session_service.create_session(APP, USER, "s1")

    async def old_owner(n: int) -> bool:
        try:
            return await session_service.append_event(
                session, assistant_event(session, f"a{n}", id=f"old-{n}"), fence=1
            )
        except FencedError:
            return False

    appends = [asyncio.create_task(old_owner(n)) for n in range(20)]
    await asyncio.sleep(0)
    await session_service.take_fence(APP, USER, "s1", 2)
    taken_over = await session_service.get_session(APP, USER, "s1")
    stored = await asyncio.gather(*appends)

    # Then what the new owner read is all the old owner ever stored
    assert taken_over is not None
    loaded = await session_service.get_session(APP, USER, "s1")
    assert loaded is not None
    assert [e.id for e in loaded.events] == [e.id for e in taken_over.events]
    assert len(loaded.events) == sum(stored)


# --- open_session: what a run does first (one round trip where the store can) -------------


def test_redis_and_postgres_open_a_session_in_one_call(
    backend: str, session_service: SessionService
) -> None:
    # The fast path exists where the store has it; the others take the generic sequence.
    assert isinstance(session_service, SessionOpener) == (
        backend in ("redis", "redis-cluster", "postgres")
    )


async def test_open_creates_a_missing_session_and_reads_an_existing_one(
    session_service: SessionService,
) -> None:
    await session_service.update_user_state(APP, USER, {"plan": "pro"})
    await session_service.update_app_state(APP, {"motd": "hi"})

    created = await open_session(session_service, APP, USER, "s1")
    assert created is not None
    assert (created.id, created.events, created.event_count) == ("s1", [], 0)
    assert created.state == {"user:plan": "pro", "app:motd": "hi"}
    assert await session_service.append_event(created, user_event(created, "hi"))

    opened = await open_session(session_service, APP, USER, "s1")
    assert opened is not None
    assert texts(opened) == ["hi"] and opened.event_count == 1
    assert opened.created_at == created.created_at
    assert opened.state == {"user:plan": "pro", "app:motd": "hi"}
    assert [s.id for s in await session_service.list_sessions(APP, USER)] == ["s1"]


async def test_open_without_create_leaves_a_missing_session_missing(
    session_service: SessionService,
) -> None:
    assert await open_session(session_service, APP, USER, "s1", create=False) is None
    assert await open_session(session_service, APP, USER, "s1", fence=4, create=False) is None
    assert await session_service.get_session(APP, USER, "s1") is None
    assert await session_service.list_sessions(APP, USER) == []


async def test_open_takes_the_fence_before_reading(session_service: SessionService) -> None:
    # Given a session opened by its first owner (token 5), which appended an event
    first = await open_session(session_service, APP, USER, "s1", fence=5)
    assert first is not None
    assert await session_service.append_event(first, user_event(first, "hi"), fence=5)

    # When a newer owner opens it (token 9)
    second = await open_session(session_service, APP, USER, "s1", fence=9)

    # Then it reads what the first stored, and the first owner can write no more
    assert second is not None and texts(second) == ["hi"]
    with pytest.raises(FencedError, match="newer owner"):
        await session_service.append_event(first, assistant_event(first, "late"), fence=5)
    assert await session_service.append_event(second, assistant_event(second, "ok"), fence=9)
    # The same owner opening again is a no-op for the fence
    again = await open_session(session_service, APP, USER, "s1", fence=9)
    assert again is not None and texts(again) == ["hi", "ok"]


async def test_open_with_an_older_fence_creates_nothing(session_service: SessionService) -> None:
    await session_service.take_fence(APP, USER, "s1", 9)

    with pytest.raises(FencedError):
        await open_session(session_service, APP, USER, "s1", fence=5)

    assert await session_service.get_session(APP, USER, "s1") is None
    session = await open_session(session_service, APP, USER, "s1", fence=9)
    assert session is not None
    assert await session_service.append_event(session, user_event(session, "hi"), fence=9)
    with pytest.raises(InvalidRequestError, match="int >= 1"):
        await open_session(session_service, APP, USER, "s1", fence=0)


async def test_concurrent_opens_of_a_missing_session_all_get_the_one_session(
    make_service: MakeService,
) -> None:
    # Each caller on its own store (its own connection; in memory, one store), all at once
    first = await make_service()
    shared = isinstance(first, InMemorySessionService)
    services = [first, *[first if shared else await make_service() for _ in range(5)]]
    opened = await asyncio.gather(
        *(open_session(service, APP, USER, "s1") for service in services for _ in range(2))
    )
    assert all(session is not None for session in opened)
    assert len({session.created_at for session in opened if session is not None}) == 1
    assert [s.id for s in await services[0].list_sessions(APP, USER)] == ["s1"]


async def test_open_replaces_an_expired_session_with_a_fresh_one(
    make_service: MakeService,
) -> None:
    # No sweeper: the open itself must find the expired session and retire it
    service = await make_service(session_ttl=1, cleanup_interval=3600)
    old = await service.create_session(APP, USER, "s1", state={"old": True})
    await service.append_event(old, user_event(old, "old message"))

    async def expired() -> bool:
        return await service.get_session(APP, USER, "s1") is None

    await wait_until(expired)
    fresh = await open_session(service, APP, USER, "s1", fence=3)
    assert fresh is not None
    assert (fresh.events, fresh.event_count, fresh.state) == ([], 0, {})
    assert await service.append_event(fresh, user_event(fresh, "new"), fence=3)
    loaded = await service.get_session(APP, USER, "s1")
    assert loaded is not None and texts(loaded) == ["new"] and loaded.state == {}


async def test_append_is_idempotent_by_event_id(session_service: SessionService) -> None:
    session = await session_service.create_session(APP, USER, "s1")
    event = user_event(session, "hello", state_delta={"n": 1})
    assert await session_service.append_event(session, event) is True

    redelivered = await session_service.get_session(APP, USER, "s1")
    assert redelivered is not None
    replay = event.model_copy(update={"state_delta": {"n": 2}})
    assert await session_service.append_event(redelivered, replay) is False

    assert len(redelivered.events) == 1 and redelivered.state == {"n": 1}
    loaded = await session_service.get_session(APP, USER, "s1")
    assert loaded is not None
    assert [e.id for e in loaded.events] == [event.id]
    assert loaded.event_count == 1
    assert loaded.state == {"n": 1}


async def test_temp_keys_are_never_stored(session_service: SessionService) -> None:
    session = await session_service.create_session(APP, USER, "s1")
    await session_service.append_event(
        session, state_event(session, {"temp:draft": "x", "kept": 1})
    )
    assert session.state == {"kept": 1}
    loaded = await session_service.get_session(APP, USER, "s1")
    assert loaded is not None and loaded.state == {"kept": 1}


async def test_app_and_user_scopes_are_shared_across_sessions(
    session_service: SessionService,
) -> None:
    mine = await session_service.create_session(APP, USER, "mine")
    await session_service.create_session(APP, USER, "my-other")
    await session_service.create_session(APP, "bob", "bobs")
    await session_service.create_session("other-app", USER, "elsewhere")

    await session_service.append_event(
        mine, state_event(mine, {"app:motd": "hi", "user:tier": "gold", "local": 1})
    )
    assert mine.state == {"app:motd": "hi", "user:tier": "gold", "local": 1}

    my_other = await session_service.get_session(APP, USER, "my-other")
    bobs = await session_service.get_session(APP, "bob", "bobs")
    elsewhere = await session_service.get_session("other-app", USER, "elsewhere")
    assert my_other is not None and my_other.state == {"app:motd": "hi", "user:tier": "gold"}
    assert bobs is not None and bobs.state == {"app:motd": "hi"}
    assert elsewhere is not None and elsewhere.state == {}
    assert await session_service.get_app_state(APP) == {"motd": "hi"}
    assert await session_service.get_user_state(APP, USER) == {"tier": "gold"}
    assert await session_service.get_user_state(APP, "bob") == {}


async def test_update_app_and_user_state(session_service: SessionService) -> None:
    await session_service.update_app_state(APP, {"a": 1, "nested": {"x": [1, 2]}})
    await session_service.update_app_state(APP, {"a": 2})
    await session_service.update_app_state(APP, {})
    await session_service.update_user_state(APP, USER, {"b": None})
    assert await session_service.get_app_state(APP) == {"a": 2, "nested": {"x": [1, 2]}}
    assert await session_service.get_user_state(APP, USER) == {"b": None}
    session = await session_service.create_session(APP, USER, "s1")
    assert session.state == {"app:a": 2, "app:nested": {"x": [1, 2]}, "user:b": None}


async def test_event_limit_evicts_oldest_but_keeps_the_latest_user_message(
    make_service: MakeService,
) -> None:
    service = await make_service(event_limit=3)
    session = await service.create_session(APP, USER, "s1")
    await service.append_event(session, user_event(session, "u1"))
    for n in range(1, 6):
        await service.append_event(session, assistant_event(session, f"a{n}"))

    # Only one user message: the window widens back to it, nothing can be evicted.
    loaded = await service.get_session(APP, USER, "s1")
    assert loaded is not None
    assert texts(loaded) == ["u1", "a1", "a2", "a3", "a4", "a5"]

    await service.append_event(session, user_event(session, "u2"))
    await service.append_event(session, assistant_event(session, "a6"))
    loaded = await service.get_session(APP, USER, "s1")
    assert loaded is not None
    assert texts(loaded) == ["a5", "u2", "a6"]
    assert loaded.event_count == 8
    assert texts(session) == ["a5", "u2", "a6"]
    assert session.event_count == 8


@pytest.mark.parametrize("seed", range(4))
async def test_eviction_follows_the_one_rule(make_service: MakeService, seed: int) -> None:
    """Every store keeps what runner_core.session.first_kept_position says, whether the rule
    runs in Python (memory, MySQL) or in a copy on the server (Redis's script, PostgreSQL's
    append statement)."""
    rng = random.Random(seed)
    limit = rng.randint(1, 5)
    service = await make_service(event_limit=limit)
    session = await service.create_session(APP, USER, "s1")
    appended: list[str] = []
    first, last_user = 0, -1
    for position in range(24):
        # Some histories open with a run of non-user events; user messages come now and then.
        is_user = position > 3 * seed and rng.random() < 0.2
        make = user_event if is_user else assistant_event
        event = make(session, f"{'u' if is_user else 'a'}{position}")
        assert await service.append_event(session, event) is True
        appended.append(event.id)
        if is_user:
            last_user = position
        first = first_kept_position(
            first=first, count=position + 1, last_user=last_user, limit=limit
        )
        kept = appended[first:]
        assert [e.id for e in session.events] == kept, f"caller's session after {position}"
        loaded = await service.get_session(APP, USER, "s1")
        assert loaded is not None
        assert [e.id for e in loaded.events] == kept, f"stored session after {position}"
        assert loaded.event_count == position + 1


async def test_summaries_follow_the_one_rule(session_service: SessionService) -> None:
    """Every store replaces a summary exactly when runner_core.session.summary_replaces says,
    whether it compares in Python or on the server (Redis's script, the SQL upserts)."""
    session = await session_service.create_session(APP, USER, "s1")
    rng = random.Random(7)
    stored: dict[str, Summary] = {}
    for n in range(30):
        filter_key = rng.choice(["", "branch:a"])
        candidate = summary_of(session, rng.randint(1, 12), text=f"s{n}", filter_key=filter_key)
        expected = summary_replaces(stored.get(filter_key), candidate)
        assert await session_service.put_summary(APP, USER, "s1", candidate) is expected, n
        if expected:
            stored[filter_key] = candidate
        assert await session_service.get_summary(APP, USER, "s1", filter_key=filter_key) == (
            stored.get(filter_key)
        )


async def test_event_limit_none_keeps_everything(make_service: MakeService) -> None:
    service = await make_service(event_limit=None)
    session = await service.create_session(APP, USER, "s1")
    for n in range(30):
        await service.append_event(session, user_event(session, f"u{n}"))
    loaded = await service.get_session(APP, USER, "s1")
    assert loaded is not None and len(loaded.events) == 30


async def test_num_events_and_since_windows_keep_the_latest_user_message(
    session_service: SessionService,
) -> None:
    session = await session_service.create_session(APP, USER, "s1")
    base = datetime(2025, 1, 1, tzinfo=UTC)
    script = [("u", "u1"), ("a", "a1"), ("u", "u2"), ("a", "a2"), ("a", "a3")]
    for n, (kind, text) in enumerate(script):
        make = user_event if kind == "u" else assistant_event
        await session_service.append_event(
            session, make(session, text, created_at=base + timedelta(minutes=n))
        )

    async def window(**kw: Any) -> list[str]:
        loaded = await session_service.get_session(APP, USER, "s1", **kw)
        assert loaded is not None
        assert loaded.event_count == 5
        return texts(loaded)

    assert await window() == ["u1", "a1", "u2", "a2", "a3"]
    assert await window(num_events=4) == ["a1", "u2", "a2", "a3"]
    assert await window(num_events=2) == ["u2", "a2", "a3"]
    assert await window(since=base + timedelta(minutes=2)) == ["u2", "a2", "a3"]
    assert await window(since=base + timedelta(minutes=4)) == ["u2", "a2", "a3"]
    assert await window(since=base + timedelta(minutes=1)) == ["a1", "u2", "a2", "a3"]
    assert await window(num_events=10, since=base - timedelta(days=1)) == [
        "u1",
        "a1",
        "u2",
        "a2",
        "a3",
    ]
    with pytest.raises(InvalidRequestError, match="num_events"):
        await session_service.get_session(APP, USER, "s1", num_events=-1)


# --- list / delete ----------------------------------------------------------------------------


async def test_list_sessions_of_one_user_with_state_without_events(
    session_service: SessionService,
) -> None:
    one = await session_service.create_session(APP, USER, "one", state={"k": 1})
    await session_service.create_session(APP, USER, "two", state={"user:shared": True})
    await session_service.create_session(APP, "bob", "bobs")
    await session_service.create_session("other-app", USER, "elsewhere")
    await session_service.append_event(one, user_event(one, "hi"))

    listed = await session_service.list_sessions(APP, USER)
    by_id = {s.id: s for s in listed}
    assert set(by_id) == {"one", "two"}
    assert all(s.events == [] for s in listed)
    assert by_id["one"].state == {"k": 1, "user:shared": True}
    assert by_id["one"].event_count == 1
    assert by_id["two"].state == {"user:shared": True}
    assert await session_service.list_sessions(APP, "nobody") == []


async def test_delete_removes_the_session_events_and_summaries(
    session_service: SessionService,
) -> None:
    session = await session_service.create_session(APP, USER, "s1", state={"k": 1})
    await session_service.append_event(session, user_event(session, "hi"))
    await session_service.put_summary(APP, USER, "s1", summary_of(session, 1))
    await session_service.create_session(APP, USER, "s2")

    await session_service.delete_session(APP, USER, "s1")
    await session_service.delete_session(APP, USER, "s1")  # deleting a missing one: no-op
    await session_service.delete_session(APP, USER, "never-existed")

    assert await session_service.get_session(APP, USER, "s1") is None
    assert await session_service.get_summary(APP, USER, "s1") is None
    assert [s.id for s in await session_service.list_sessions(APP, USER)] == ["s2"]
    with pytest.raises(SessionNotFoundError):
        await session_service.append_event(session, assistant_event(session, "late"))

    again = await session_service.create_session(APP, USER, "s1")
    assert again.state == {}
    loaded = await session_service.get_session(APP, USER, "s1")
    assert loaded is not None and loaded.events == [] and loaded.event_count == 0
    assert loaded.summaries == {}


# --- summaries --------------------------------------------------------------------------------


def summary_of(session: Session, count: int, *, text: str = "", filter_key: str = "") -> Summary:
    now = datetime.now(UTC)
    return Summary(
        text=text or f"summary of {count}",
        filter_key=filter_key,
        last_event_id=f"e{count}",
        event_count=count,
        last_event_at=now,
        created_at=now,
    )


async def test_summaries_are_stored_only_if_newer(session_service: SessionService) -> None:
    session = await session_service.create_session(APP, USER, "s1")
    assert await session_service.put_summary(APP, USER, "s1", summary_of(session, 4)) is True
    assert await session_service.put_summary(APP, USER, "s1", summary_of(session, 4)) is False
    stale = summary_of(session, 3, text="stale")
    assert await session_service.put_summary(APP, USER, "s1", stale) is False
    newer = summary_of(session, 9, text="newer")
    assert await session_service.put_summary(APP, USER, "s1", newer) is True
    branch = summary_of(session, 2, filter_key="agent/tools")
    assert await session_service.put_summary(APP, USER, "s1", branch) is True

    assert await session_service.get_summary(APP, USER, "s1") == newer
    assert await session_service.get_summary(APP, USER, "s1", filter_key="agent/tools") == branch
    assert await session_service.get_summary(APP, USER, "s1", filter_key="none") is None
    loaded = await session_service.get_session(APP, USER, "s1")
    assert loaded is not None
    assert loaded.summaries == {"": newer, "agent/tools": branch}


async def test_summary_for_a_missing_session_is_refused(session_service: SessionService) -> None:
    session = Session(
        id="ghost",
        app_name=APP,
        user_id=USER,
        created_at=datetime.now(UTC),
        updated_at=datetime.now(UTC),
    )
    with pytest.raises(SessionNotFoundError):
        await session_service.put_summary(APP, USER, "ghost", summary_of(session, 1))


# --- TTL --------------------------------------------------------------------------------------


async def test_expired_sessions_are_hidden_and_can_be_created_again(
    make_service: MakeService,
) -> None:
    service = await make_service(session_ttl=1, cleanup_interval=0.2)
    session = await service.create_session(APP, USER, "s1", state={"old": True})
    await service.append_event(session, user_event(session, "old message"))

    async def gone() -> bool:
        # Reading does not refresh the TTL, so polling with reads lets it run out.
        return await service.get_session(APP, USER, "s1") is None

    await wait_until(gone)
    assert await service.list_sessions(APP, USER) == []
    with pytest.raises(SessionNotFoundError):
        await service.append_event(session, assistant_event(session, "too late"))

    fresh = await service.create_session(APP, USER, "s1")
    assert fresh.state == {}
    loaded = await service.get_session(APP, USER, "s1")
    assert loaded is not None and loaded.events == [] and loaded.event_count == 0


async def test_app_and_user_state_expire(make_service: MakeService) -> None:
    service = await make_service(app_state_ttl=1, user_state_ttl=1, cleanup_interval=0.2)
    await service.update_app_state(APP, {"motd": "hi"})
    await service.update_user_state(APP, USER, {"tier": "gold"})
    assert await service.get_app_state(APP) == {"motd": "hi"}

    async def gone() -> bool:
        return (
            await service.get_app_state(APP) == {} and await service.get_user_state(APP, USER) == {}
        )

    await wait_until(gone)
    await service.update_user_state(APP, USER, {"tier": "silver"})
    assert await service.get_user_state(APP, USER) == {"tier": "silver"}


# --- bad input --------------------------------------------------------------------------------

BAD_IDS = [
    pytest.param("", id="empty"),
    pytest.param("x" * 129, id="too-long"),
    pytest.param("a b", id="space"),
    pytest.param("x'; DROP TABLE session_states; --", id="sql"),
    pytest.param("a{b}", id="hash-tag"),
    pytest.param("a/b", id="slash"),
    pytest.param("é", id="non-ascii"),
]


@pytest.mark.parametrize("bad", BAD_IDS)
async def test_bad_ids_are_refused_everywhere(session_service: SessionService, bad: str) -> None:
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: session_service.create_session(bad, USER, "s1"),
        lambda: session_service.create_session(APP, bad, "s1"),
        lambda: session_service.get_session(APP, USER, bad),
        lambda: session_service.list_sessions(APP, bad),
        lambda: session_service.delete_session(bad, USER, "s1"),
        lambda: session_service.get_app_state(bad),
        lambda: session_service.update_user_state(APP, bad, {"a": 1}),
        lambda: session_service.get_summary(APP, USER, bad),
    ]
    for call in calls:
        with pytest.raises(InvalidRequestError):
            await call()
    if bad:  # an empty session ID asks for a generated one
        with pytest.raises(InvalidRequestError, match="session_id"):
            await session_service.create_session(APP, USER, bad)


async def test_an_append_from_a_session_with_a_bad_id_is_refused_every_time(
    session_service: SessionService,
) -> None:
    session = await session_service.create_session(APP, USER, "s1")
    event = user_event(session, "hi")
    session.id = "a b"  # changed by the caller after the store built it
    for _ in range(2):  # a bad key is never kept as a valid one
        with pytest.raises(InvalidRequestError, match="session_id"):
            await session_service.append_event(session, event)
    session.id = "s1"
    assert await session_service.append_event(session, event)
    stored = await session_service.get_session(APP, USER, "s1")
    assert stored is not None and texts(stored) == ["hi"]


async def test_non_string_ids_are_refused(session_service: SessionService) -> None:
    with pytest.raises(InvalidRequestError, match="user_id must be a string"):
        await session_service.get_session(APP, 42, "s1")  # type: ignore[arg-type]


async def test_partial_events_and_markers_are_refused(session_service: SessionService) -> None:
    session = await session_service.create_session(APP, USER, "s1")
    partial = MessageDeltaEvent(invocation_id="inv-1", seq=1, author="assistant", delta="Hel")
    with pytest.raises(InvalidRequestError, match="partial"):
        await session_service.append_event(session, partial)
    marker = RunRestartedEvent(
        invocation_id="inv-1", seq=2, author="assistant", attempt=2, discard_after_seq=1
    )
    with pytest.raises(InvalidRequestError, match="never stored"):
        await session_service.append_event(session, marker)
    loaded = await session_service.get_session(APP, USER, "s1")
    assert loaded is not None and loaded.events == [] and session.events == []


async def test_append_to_a_missing_session_is_refused(session_service: SessionService) -> None:
    ghost = Session(
        id="ghost",
        app_name=APP,
        user_id=USER,
        created_at=datetime.now(UTC),
        updated_at=datetime.now(UTC),
    )
    with pytest.raises(SessionNotFoundError, match="create_session"):
        await session_service.append_event(ghost, user_event(ghost, "hello?"))


async def test_non_json_state_is_refused_and_nothing_is_written(
    session_service: SessionService,
) -> None:
    session = await session_service.create_session(APP, USER, "s1")
    with pytest.raises(InvalidRequestError, match="JSON"):
        await session_service.create_session(APP, USER, "s2", state={"when": object()})
    with pytest.raises(InvalidRequestError, match="JSON"):
        await session_service.update_app_state(APP, {"nan": float("nan")})
    with pytest.raises(InvalidRequestError):
        await session_service.update_user_state(APP, USER, "not a dict")  # type: ignore[arg-type]
    assert await session_service.get_session(APP, USER, "s2") is None
    assert await session_service.get_app_state(APP) == {}
    loaded = await session_service.get_session(APP, USER, session.id)
    assert loaded is not None and loaded.events == []


async def test_close_is_idempotent(make_service: MakeService) -> None:
    service = await make_service()
    await service.create_session(APP, USER, "s1")
    await service.close()
    await service.close()


# --- corrupt stored data ----------------------------------------------------------------------


async def corrupt_first_event(backend: str, url: str, session: Session) -> None:
    """Damage the stored first event behind the service's back."""
    if backend in ("redis", "redis-cluster"):
        client = async_client(url)
        try:
            key = f"agent-runner:events:{{{session.app_name}/{session.user_id}}}/{session.id}"
            await client.lset(key, 0, "{not json")
        finally:
            await client.aclose()
    elif backend == "mysql":
        parts = urlsplit(url)
        conn = await asyncmy.connect(
            host=parts.hostname, port=parts.port, user=parts.username, database=parts.path[1:]
        )
        try:
            async with conn.cursor() as cur:
                await cur.execute(
                    'UPDATE session_events SET event = \'{"type": "nonsense"}\' '
                    "WHERE session_id = %s AND position = 0",
                    (session.id,),
                )
            await conn.commit()
        finally:
            conn.close()
    else:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(
                'UPDATE session_events SET event = \'{"type": "nonsense"}\'::jsonb '
                "WHERE session_id = %s AND position = 0",
                (session.id,),
            )


async def test_corrupt_stored_events_raise(
    session_service: SessionService, backend: str, backend_url: str
) -> None:
    if backend == "memory":
        pytest.skip("memory holds what it stored; nothing outside the process can damage it")
    session = await session_service.create_session(APP, USER, "s1")
    await session_service.append_event(session, user_event(session, "hello"))
    await session_service.append_event(session, assistant_event(session, "hi"))
    await corrupt_first_event(backend, backend_url, session)
    with pytest.raises(CorruptSessionDataError, match="cannot be decoded"):
        await session_service.get_session(APP, USER, "s1")


# --- many writers -----------------------------------------------------------------------------

WRITERS = 4
APPENDS_PER_WRITER = 200


def _writer(url: str, writer: int) -> None:
    """One process appending its events, in order, to the shared session."""

    async def main() -> None:
        service = from_url(url, event_limit=None)
        try:
            session = await service.get_session(APP, USER, "shared")
            assert session is not None
            for n in range(APPENDS_PER_WRITER):
                event = assistant_event(
                    session,
                    f"w{writer}-{n}",
                    id=f"w{writer}-{n}",
                    state_delta={f"w{writer}": n, f"user:w{writer}": n, f"app:w{writer}": n},
                )
                assert await service.append_event(session, event) is True
            # A redelivered batch changes nothing.
            for n in range(5):
                event = assistant_event(session, f"w{writer}-{n}", id=f"w{writer}-{n}")
                assert await service.append_event(session, event) is False
        finally:
            await service.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    "store",
    [
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis-cluster", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ],
)
async def test_concurrent_writers_from_many_processes(
    store: str, request: pytest.FixtureRequest
) -> None:
    url: str = request.getfixturevalue(URL_FIXTURES[store])
    service = from_url(url, event_limit=None)
    try:
        await service.create_session(APP, USER, "shared")
        context = multiprocessing.get_context("spawn")
        processes = [context.Process(target=_writer, args=(url, w)) for w in range(WRITERS)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=90)
        assert [p.exitcode for p in processes] == [0] * WRITERS

        loaded = await service.get_session(APP, USER, "shared")
        assert loaded is not None
        assert loaded.event_count == WRITERS * APPENDS_PER_WRITER
        ids = [e.id for e in loaded.events]
        assert len(ids) == len(set(ids)) == WRITERS * APPENDS_PER_WRITER
        for w in range(WRITERS):
            mine = [int(i.split("-")[1]) for i in ids if i.startswith(f"w{w}-")]
            assert mine == list(range(APPENDS_PER_WRITER)), f"writer {w} out of order"
        last = APPENDS_PER_WRITER - 1
        for w in range(WRITERS):
            assert loaded.state[f"w{w}"] == last
            assert loaded.state[f"user:w{w}"] == last
            assert loaded.state[f"app:w{w}"] == last
    finally:
        await service.close()
