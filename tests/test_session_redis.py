"""What only the Redis store does: key layout, native TTLs, one round trip per append, and
behaviour when the server goes away. Shared behaviour is in test_session_conformance.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from runner_core.errors import ConfigurationError, CorruptSessionDataError, SessionBackendError
from runner_core.session import Session
from session_backends import RedisSessionService, from_url
from tests.services import RedisServer, free_port
from tests.test_session_conformance import assistant_event, summary_of, user_event

pytestmark = pytest.mark.redis

APP = "support-bot"
USER = "alice"


def text(key: bytes | str) -> str:
    return key.decode() if isinstance(key, bytes) else key


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client on the same DB, to look behind the service's back."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def service(redis_url: str) -> AsyncIterator[RedisSessionService]:
    svc = RedisSessionService(redis_url)
    yield svc
    await svc.close()


async def populate(svc: RedisSessionService) -> Session:
    session = await svc.create_session(APP, USER, "s1", state={"k": 1})
    await svc.append_event(
        session, user_event(session, "hi", state_delta={"app:a": 1, "user:u": 2, "s": 3})
    )
    await svc.put_summary(APP, USER, "s1", summary_of(session, 1))
    return session


async def test_documented_key_layout_with_one_slot_per_user(
    service: RedisSessionService, raw: aioredis.Redis
) -> None:
    await populate(service)
    keys = sorted(text(k) for k in await raw.keys("*"))
    tag = "{support-bot/alice}"
    session_keys = [
        f"agent-runner:{kind}:{tag}/s1"
        for kind in ("event_ids", "events", "session", "state", "summaries", "summary_counts")
    ]
    user_keys = [f"agent-runner:sessions:{tag}", f"agent-runner:user_state:{tag}"]
    assert keys == sorted([*session_keys, *user_keys, "agent-runner:app_state:{support-bot}"])
    assert len({key_slot(k.encode()) for k in session_keys + user_keys}) == 1
    assert await raw.type(f"agent-runner:events:{tag}/s1") == b"list"
    assert await raw.hget(f"agent-runner:state:{tag}/s1", "s") == b"3"


async def test_key_prefix_option(redis_url: str, raw: aioredis.Redis) -> None:
    svc = from_url(redis_url, key_prefix="tenant-a:sessions")
    try:
        await svc.create_session(APP, USER, "s1")
    finally:
        await svc.close()
    assert all(text(k).startswith("tenant-a:sessions:") for k in await raw.keys("*"))
    for bad in ["", "has space", "a{b}", "x" * 65]:
        with pytest.raises(ConfigurationError, match="key_prefix"):
            RedisSessionService(redis_url, key_prefix=bad)


async def test_more_concurrent_calls_than_connections_wait_instead_of_failing(
    redis_url: str,
) -> None:
    svc = RedisSessionService(redis_url, max_connections=2)
    try:
        sessions = await asyncio.gather(
            *(svc.create_session(APP, USER, f"s{i}") for i in range(40))
        )
        # (a pool that refuses calls beyond its size fails here with "Too many connections")
        loaded = await asyncio.gather(*(svc.get_session(APP, USER, s.id) for s in sessions))
    finally:
        await svc.close()
    assert sorted(s.id for s in loaded if s is not None) == sorted(f"s{i}" for i in range(40))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "8"])
def test_a_bad_max_connections_is_refused(redis_url: str, bad: object) -> None:
    with pytest.raises(ConfigurationError, match="max_connections must be a whole number"):
        RedisSessionService(redis_url, max_connections=bad)  # type: ignore[arg-type]


async def test_native_ttls_are_set_on_writes(redis_url: str, raw: aioredis.Redis) -> None:
    svc = RedisSessionService(redis_url, session_ttl=60, app_state_ttl=120, user_state_ttl=180)
    try:
        await populate(svc)
    finally:
        await svc.close()
    tag = "{support-bot/alice}"
    for kind in ("session", "state", "events", "event_ids", "summaries", "summary_counts"):
        assert 0 < await raw.pttl(f"agent-runner:{kind}:{tag}/s1") <= 60_000, kind
    assert 0 < await raw.pttl(f"agent-runner:sessions:{tag}") <= 60_000
    assert 60_000 < await raw.pttl(f"agent-runner:app_state:{{{APP}}}") <= 120_000
    assert 120_000 < await raw.pttl(f"agent-runner:user_state:{tag}") <= 180_000


async def test_no_ttl_means_keys_never_expire(
    service: RedisSessionService, raw: aioredis.Redis
) -> None:
    await populate(service)
    for key in await raw.keys("*"):
        assert await raw.pttl(key) == -1, key


async def test_append_is_one_round_trip(service: RedisSessionService, redis_url: str) -> None:
    session = await service.create_session(APP, USER, "s1")
    await service.append_event(session, user_event(session, "warm up the script cache"))

    watcher = aioredis.Redis.from_url(redis_url)
    seen: list[dict[str, Any]] = []
    try:
        async with watcher.monitor() as monitor:
            listener = monitor.listen()
            await service.append_event(
                session, assistant_event(session, "one trip", state_delta={"user:x": 1, "y": 2})
            )
            await service.ping()  # marks the end
            async for command in listener:
                if command["command"].upper().startswith("PING"):
                    break
                seen.append(command)
    finally:
        await watcher.aclose()
    from_client = [c["command"].split()[0].upper() for c in seen if c["client_type"] != "lua"]
    assert from_client == ["EVALSHA"]
    assert any(c["client_type"] == "lua" for c in seen)  # the script did the work


async def test_corrupt_session_record_raises(
    service: RedisSessionService, raw: aioredis.Redis
) -> None:
    session = await populate(service)
    tag = "{support-bot/alice}"
    await raw.hset(f"agent-runner:session:{tag}/s1", "event_count", "many")
    with pytest.raises(CorruptSessionDataError):
        await service.get_session(APP, USER, "s1")
    await raw.hset(f"agent-runner:session:{tag}/s1", "event_count", "1")
    await raw.hset(f"agent-runner:state:{tag}/s1", "k", "{oops")
    with pytest.raises(CorruptSessionDataError, match="state"):
        await service.get_session(APP, USER, "s1")
    await raw.hset(f"agent-runner:summary_counts:{tag}/s1", "", "NaN?")
    with pytest.raises(CorruptSessionDataError, match="summary"):
        await service.put_summary(APP, USER, "s1", summary_of(session, 5))


async def test_unix_socket_url() -> None:
    with RedisServer(unix_socket=True) as server:
        svc = from_url(f"unix://{server.unix_socket}?db=2")
        try:
            session = await svc.create_session(APP, USER, "s1")
            await svc.append_event(session, user_event(session, "over a socket"))
            loaded = await svc.get_session(APP, USER, "s1")
            assert loaded is not None and len(loaded.events) == 1
        finally:
            await svc.close()


async def test_unreachable_server_fails_in_bounded_time_naming_the_server() -> None:
    port = free_port()
    svc = RedisSessionService(
        f"redis://127.0.0.1:{port}/0", socket_connect_timeout=1, retry_for_s=0
    )
    try:
        with pytest.raises(SessionBackendError) as info:
            # The guard only stops a hang from blocking the suite; it is not a speed check.
            await asyncio.wait_for(svc.create_session(APP, USER, "s1"), timeout=30)
    finally:
        await svc.close()
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "redis-server running" in message and "AGENT_RUNNER_SESSION_URL" in message
    assert info.value.__cause__ is not None


async def test_server_stopped_mid_use_then_restarted() -> None:
    with RedisServer() as server:
        svc = RedisSessionService(
            server.url, socket_timeout=2, socket_connect_timeout=1, retry_for_s=0
        )
        try:
            session = await svc.create_session(APP, USER, "s1")
            await svc.append_event(session, user_event(session, "before the outage"))

            server.kill()
            with pytest.raises(SessionBackendError, match=f"127.0.0.1:{server.port}"):
                await asyncio.wait_for(
                    svc.append_event(session, assistant_event(session, "lost")), timeout=30
                )
            with pytest.raises(SessionBackendError):
                await asyncio.wait_for(svc.get_session(APP, USER, "s1"), timeout=30)

            server.start()  # same port, empty dataset (no persistence)
            again = await svc.create_session(APP, USER, "s1")
            assert await svc.append_event(again, user_event(again, "after")) is True
            loaded = await svc.get_session(APP, USER, "s1")
            assert loaded is not None
            assert [e.message.text for e in loaded.events if e.type == "message"] == ["after"]
        finally:
            await svc.close()


async def test_closed_service_says_so(service: RedisSessionService) -> None:
    await service.close()
    with pytest.raises(SessionBackendError, match="closed"):
        await service.get_session(APP, USER, "s1")


async def test_a_given_client_is_not_closed(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    svc = RedisSessionService(client=client)
    await svc.create_session(APP, USER, "s1")
    await svc.close()
    assert await client.ping() is True
    await client.aclose()
