"""What only the in-memory store does: its background sweep of expired data, and isolation of
what it returns from what it keeps. Shared behaviour is in test_session_conformance.py."""

from __future__ import annotations

import asyncio
import time

from runner_core.session import SessionService
from session_backends import InMemorySessionService
from tests.test_session_conformance import user_event

APP = "support-bot"
USER = "alice"
CLEANUP_TASK = "agent-runner-memory-session-cleanup"


def cleanup_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == CLEANUP_TASK and not t.done()]


async def test_is_a_session_service() -> None:
    assert isinstance(InMemorySessionService(), SessionService)


async def test_background_sweep_runs_only_with_a_ttl_and_close_stops_it() -> None:
    without_ttl = InMemorySessionService()
    await without_ttl.create_session(APP, USER, "s1")
    assert cleanup_tasks() == []
    await without_ttl.close()

    service = InMemorySessionService(session_ttl=0.2, cleanup_interval=0.05)
    await service.create_session(APP, USER, "s1")
    assert len(cleanup_tasks()) == 1
    deadline = time.monotonic() + 15
    while await service.get_session(APP, USER, "s1") is not None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    # Many sweep intervals later the sweep has removed it: nothing is left for a manual call.
    await asyncio.sleep(1.0)
    assert service.remove_expired() == 0
    await service.close()
    assert cleanup_tasks() == []


async def test_returned_sessions_do_not_alias_stored_data() -> None:
    service = InMemorySessionService()
    session = await service.create_session(APP, USER, "s1", state={"items": [1]})
    await service.append_event(session, user_event(session, "hello"))
    loaded = await service.get_session(APP, USER, "s1")
    assert loaded is not None
    loaded.state["items"].append(2)
    assert loaded.events[0].message is not None
    loaded.events[0].message.content = "tampered"
    again = await service.get_session(APP, USER, "s1")
    assert again is not None
    assert again.state == {"items": [1]}
    assert again.events[0].message is not None and again.events[0].message.content == "hello"
