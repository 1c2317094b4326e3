"""Sessions stored before typed events still load: Redis and PostgreSQL.

The stored bytes are the flat events the previous version wrote (every field on every event,
most of them null): tests/data/events_before_typed.jsonl was written by that version's
``Event.to_json()``. The session is built through the service, then its stored events are
replaced, behind the service's back, by those exact bytes; reading it needs no manual step.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
import redis.asyncio as aioredis

from runner_core.events import Event, decode_event
from runner_core.session import SessionService
from session_backends import PostgresSessionService, RedisSessionService

OLD_EVENTS = Path(__file__).resolve().parent / "data" / "events_before_typed.jsonl"
APP, USER, SID = "app", "u", "s"
STORED_TYPES = {"message", "tool.result", "state.update", "error", "run.paused"}


def old_stored_events() -> list[str]:
    """The old lines of the types a session stores (markers and deltas never are)."""
    lines = OLD_EVENTS.read_text(encoding="utf-8").splitlines()
    return [line for line in lines if json.loads(line)["type"] in STORED_TYPES]


async def build(service: SessionService) -> list[Event]:
    session = await service.create_session(APP, USER, SID)
    events = [decode_event(raw) for raw in old_stored_events()]
    for event in events:
        assert await service.append_event(session, event)
    return events


async def check_reads_back(service: SessionService, expected: list[Event]) -> None:
    loaded = await service.get_session(APP, USER, SID)
    assert loaded is not None
    assert loaded.events == expected
    assert [type(e) for e in loaded.events] == [type(e) for e in expected]
    # The state the old events carried was applied when they were appended
    assert loaded.state == {"user:n": 3, "nested": {"a": [1, 2.5, None]}, "k": "v"}
    # The legacy random ID still names its event (summaries refer to events by ID)
    assert "3b9f0a7c1d2e4f5a8b6c7d8e9f0a1b2c" in [e.id for e in loaded.events]


@pytest.fixture
async def redis_service(redis_url: str) -> AsyncIterator[RedisSessionService]:
    service = RedisSessionService(redis_url)
    yield service
    await service.close()


@pytest.mark.redis
async def test_redis_sessions_written_in_the_old_shape_load(
    redis_service: RedisSessionService, redis_url: str
) -> None:
    expected = await build(redis_service)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        key = f"agent-runner:events:{{{APP}/{USER}}}/{SID}"
        stored = await raw.lrange(key, 0, -1)
        assert len(stored) == len(expected) and b'"partial"' not in stored[0]
        for position, line in enumerate(old_stored_events()):
            await raw.lset(key, position, line)
        assert b'"partial":false' in (await raw.lindex(key, 0) or b"")
    finally:
        await raw.aclose()
    await check_reads_back(redis_service, expected)


@pytest.mark.postgres
async def test_postgres_sessions_written_in_the_old_shape_load(postgres_dsn: str) -> None:
    service = PostgresSessionService(postgres_dsn)
    try:
        expected = await build(service)
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            for event, line in zip(expected, old_stored_events(), strict=True):
                updated = conn.execute(
                    "UPDATE session_events SET event = %s::jsonb WHERE event_id = %s",
                    (line, event.id),
                ).rowcount
                assert updated == 1
            row = conn.execute("SELECT event::text FROM session_events LIMIT 1").fetchone()
            assert row is not None and '"partial": false' in row[0]
        await check_reads_back(service, expected)
    finally:
        await service.close()
