"""The producer API in-process: ``submit`` validates, then a real worker runs the request and
``stream_events`` / ``astream_events`` read it back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from runner_core.errors import InvalidRequestError
from runner_core.messages import Message
from workers import client

NO_MODEL = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}


def test_invalid_request_is_refused_before_sending(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[Any] = []
    from workers.app import app

    monkeypatch.setattr(app, "send_task", lambda *a, **k: sent.append((a, k)))

    with pytest.raises(InvalidRequestError, match="user_id"):
        client.submit("assistant", "no spaces allowed", "s1", "hi")
    with pytest.raises(InvalidRequestError, match="multitask_strategy"):
        client.submit("assistant", "alice", "s1", "hi", multitask_strategy="sometimes")
    with pytest.raises(InvalidRequestError, match="surprise"):
        client.submit("assistant", "alice", "s1", "hi", surprise=True)
    assert sent == []


@pytest.mark.celery
async def test_submit_and_read_back_through_a_real_worker(
    start_worker: Callable[..., Any], producer: Any, redis_url: str
) -> None:
    start_worker(**NO_MODEL)

    invocation_id = client.submit("assistant", "alice", "s1", Message.user("what is 12*7"))
    events = list(client.stream_events(invocation_id, timeout=30))

    assert [e.seq for e in events] == list(range(len(events)))
    assert events[-1].is_runner_completion() and events[-1].status == "completed"
    assert events[-1].final_text == "12*7 = 84."
    calls = [c for e in events if e.message for c in e.message.tool_calls or []]
    assert [c.function.name for c in calls] == ["calculator"]

    replayed = [e async for e in client.astream_events(invocation_id, after_seq=1, timeout=30)]
    assert replayed == events[2:]
