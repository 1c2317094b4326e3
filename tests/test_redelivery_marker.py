"""Redelivery is visible in the stream: a later attempt at a run hands out one ``run.restarted``
event, and readers that follow docs/events.md ("Redelivery") show each reply once.

- the Runner: where the marker goes (after any stored event the dead attempt did not publish,
  before anything new), what it says, and that a first attempt has none;
- ``workers.client.ReplyText``: the reader's bookkeeping of docs/events.md;
- end to end: a worker SIGKILLed mid-reply, another one finishing the run, read by
  ``agent-runner tail`` (live) and by ``stream_events`` + ``ReplyText``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from runner_core import (
    Event,
    EventError,
    InvalidRequestError,
    LLMAgent,
    Message,
    Runner,
    ToolCall,
    tool,
)
from runner_core.testing import ScriptedModelServer, scripted_model
from session_backends import InMemorySessionService
from tests.celery_workers import ROOT, StartWorker, read_events, wait_for_completion
from tests.event_factory import make_event
from workers.client import ReplyText, stream_events

IDS = {"invocation_id": "inv-1", "app_name": "app", "user_id": "u", "session_id": "s"}
#: The reply the killed attempt was streaming, and the one its redelivery gives again.
STORY = "Once upon a time a worker died mid-sentence, and the story started over."


def replies_of(events: list[Event]) -> list[str]:
    """What a reader following docs/events.md shows as complete replies."""
    reply = ReplyText()
    return [text for event in events if (text := reply.feed(event)) is not None]


def joined_deltas(events: list[Event]) -> str:
    """What a reader that ignores run.restarted and concatenates every delta shows."""
    return "".join(e.delta or "" for e in events if e.type == "message.delta")


# --- the Runner ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as srv:
        yield srv


@pytest.fixture
async def service() -> AsyncIterator[InMemorySessionService]:
    svc = InMemorySessionService()
    yield svc
    await svc.close()


@tool
def lookup(term: str) -> str:
    """Look a term up.

    Args:
        term: what to look up.
    """
    return f"{term}: found"


def make_runner(server: ScriptedModelServer, service: InMemorySessionService) -> Runner:
    agent = LLMAgent("teller", model=scripted_model(server), tools=[lookup])
    return Runner("demo", agent, session_service=service)


async def test_a_later_attempt_marks_the_restart_before_it_streams_the_reply_again(
    server: ScriptedModelServer, service: InMemorySessionService
) -> None:
    server.reset()
    runner = make_runner(server, service)
    # Given a first attempt that published the user message and two deltas, then died
    server.add_text(STORY, chunks=6)
    first: list[Event] = []
    stream = runner.run("u", "s1", "tell a story", invocation_id="inv-a")
    async for event in stream:
        first.append(event)
        if sum(e.type == "message.delta" for e in first) == 2:
            break
    await stream.aclose()
    assert "run.restarted" not in [e.type for e in first]  # a first attempt has no marker

    # When the second attempt goes on after the last published event
    server.add_text(STORY, chunks=6)
    second = [
        e
        async for e in runner.run(
            "u", "s1", "tell a story", invocation_id="inv-a", first_seq=first[-1].seq + 1, attempt=2
        )
    ]

    # Then its first event is the marker: next seq, attempt 2, voiding the deltas after the
    # user message
    marker = second[0]
    assert marker.type == "run.restarted"
    assert (marker.seq, marker.attempt, marker.discard_after_seq) == (3, 2, first[0].seq)
    assert not marker.partial
    everything = first + second
    assert [e.seq for e in everything] == list(range(len(everything)))
    # And a reader following docs/events.md shows the story once; a naive one, its start twice
    assert replies_of(everything) == [STORY]
    assert joined_deltas(everything) == joined_deltas(first) + STORY
    assert second[-1].final_text == STORY
    # And the marker is not stored
    session = await service.get_session("demo", "u", "s1")
    assert session is not None
    assert [e.type for e in session.events] == ["message", "message"]


async def test_the_marker_comes_after_a_stored_event_the_dead_attempt_did_not_publish(
    server: ScriptedModelServer, service: InMemorySessionService
) -> None:
    server.reset()
    runner = make_runner(server, service)
    # Given a first attempt that stored a tool result and died before publishing it
    server.add_tool_calls([("c1", "lookup", {"term": "dragons"})])
    server.add_hang()
    first: list[Event] = []
    stream = runner.run("u", "s2", "look it up", invocation_id="inv-b")
    async for event in stream:
        first.append(event)
        if event.type == "tool.result":
            break
    await stream.aclose()
    tool_result = first.pop()  # stored, never published

    # When the second attempt goes on after the last published event
    server.reset()
    server.add_text(STORY)
    second = [
        e
        async for e in runner.run(
            "u", "s2", "look it up", invocation_id="inv-b", first_seq=tool_result.seq, attempt=2
        )
    ]

    # Then the missed tool result comes first, with its own seq, and the marker right after it
    assert second[0] == tool_result
    assert second[1].type == "run.restarted"
    assert (second[1].seq, second[1].discard_after_seq) == (tool_result.seq + 1, tool_result.seq)
    everything = first + second
    assert [e.seq for e in everything] == list(range(len(everything)))
    assert [e.type for e in everything].count("run.restarted") == 1
    assert replies_of(everything) == [STORY]


async def test_a_later_attempt_of_a_run_that_stored_nothing_marks_it_too(
    server: ScriptedModelServer, service: InMemorySessionService
) -> None:
    server.reset()
    server.add_text("hello")
    runner = make_runner(server, service)
    # (a run.queued event at seq 0 was all the first attempt published)
    events = [
        e async for e in runner.run("u", "s3", "hi", invocation_id="inv-c", first_seq=1, attempt=3)
    ]
    assert events[0].type == "run.restarted"
    assert (events[0].seq, events[0].attempt, events[0].discard_after_seq) == (1, 3, 0)
    assert [e.type for e in events[1:3]] == ["message", "message.delta"]
    assert events[-1].status == "completed"


@pytest.mark.parametrize("attempt", [0, -1, True, 2.0, "2"])
async def test_a_bad_attempt_is_refused(
    server: ScriptedModelServer, service: InMemorySessionService, attempt: Any
) -> None:
    runner = make_runner(server, service)
    with pytest.raises(InvalidRequestError, match="attempt"):
        runner.run("u", "s4", "hi", attempt=attempt)


# --- ReplyText -------------------------------------------------------------------------------


def delta(seq: int, text: str) -> Event:
    return make_event(type="message.delta", author="a", partial=True, delta=text, seq=seq, **IDS)


def test_reply_text_drops_what_the_marker_voids_and_trusts_the_message() -> None:
    reply = ReplyText()
    hello = make_event(type="message", author="user", message=Message.user("hi"), **IDS)
    assert reply.feed(hello) is None
    reply.feed(delta(1, "Once "))
    reply.feed(delta(2, "upon"))
    assert reply.partial == "Once upon"
    restart = make_event(
        type="run.restarted", author="a", attempt=2, discard_after_seq=0, seq=3, **IDS
    )
    assert reply.feed(restart) is None
    assert reply.partial == ""
    reply.feed(delta(4, "Once upon a time"))
    assert reply.partial == "Once upon a time"
    story = Message.assistant("Once upon a time.")
    done = make_event(type="message", author="a", message=story, **IDS)
    assert reply.feed(done) == "Once upon a time."  # the message, not the deltas
    assert reply.partial == ""


def test_reply_text_keeps_deltas_up_to_discard_after_seq() -> None:
    # (the Runner never publishes such a marker, but the rule is by seq, and so is ReplyText)
    reply = ReplyText(deltas=[(4, "kept "), (5, "void")])
    reply.feed(make_event(type="run.restarted", author="a", attempt=2, discard_after_seq=4, **IDS))
    assert reply.partial == "kept "


def test_reply_text_ends_a_turn_at_any_complete_event() -> None:
    reply = ReplyText()
    reply.feed(delta(1, "Let me check. "))
    call = ToolCall.make("c1", "lookup", {"term": "x"})
    tool_turn = Message.assistant("Let me check. ", tool_calls=[call])
    assert reply.feed(make_event(type="message", author="a", message=tool_turn, **IDS)) is None
    assert reply.partial == ""
    reply.feed(delta(3, "Bro"))
    error = EventError(type="model_http_error", message="boom")
    assert reply.feed(make_event(type="error", author="a", error=error, **IDS)) is None
    assert reply.partial == ""


# --- end to end: a worker SIGKILLed mid-reply --------------------------------------------------


def wait_until(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout  # only keeps a broken run from hanging the suite
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start_tail(invocation_id: str, worker_env: dict[str, str]) -> subprocess.Popen[str]:
    """``agent-runner tail I``: a reader that prints what docs/events.md says to print."""
    env = {
        **os.environ,
        "AGENT_RUNNER_BROKER_URL": worker_env["AGENT_RUNNER_BROKER_URL"],
        "AGENT_RUNNER_REDIS_URL": worker_env["AGENT_RUNNER_REDIS_URL"],
        "PYTHONPATH": worker_env["PYTHONPATH"],
    }
    return subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "tail", invocation_id, "--wait", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


@pytest.mark.redis
@pytest.mark.celery
def test_a_worker_killed_mid_reply_the_stream_marks_the_restart_and_readers_show_the_answer_once(
    producer: Any,
    start_worker: StartWorker,
    worker_env: dict[str, str],
    redis_url: str,
) -> None:
    with ScriptedModelServer() as model_server:
        # Given a worker streaming a reply slowly (the attempt that dies) and the same reply
        # scripted again for the attempt that takes over
        model_server.add_text(STORY, chunks=6, chunk_delay=2.0)
        model_server.add_text(STORY, chunks=6)
        worker = start_worker(OPENAI_BASE_URL=model_server.url)
        from workers.tasks import submit_run

        result = submit_run.delay("assistant", "una", "s-marker", "tell me a story")
        tail = start_tail(result.id, worker_env)
        try:

            def deltas_published() -> int:
                return sum(e["type"] == "message.delta" for e in read_events(redis_url, result.id))

            # When the worker is SIGKILLed once part of the reply is in the stream
            wait_until(lambda: deltas_published() >= 2, "two deltas of the reply")
            worker.kill()
            # and another worker finishes the run
            start_worker(OPENAI_BASE_URL=model_server.url)
            events = wait_for_completion(redis_url, result.id, timeout=90)
            stdout, stderr = tail.communicate(timeout=60)
        finally:
            if tail.poll() is None:
                tail.kill()
                tail.communicate()
        model_calls = len(model_server.requests)

    # Then the stream is gap-free with one completion, and exactly one marker, from attempt 2
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events].count("runner.completion") == 1
    assert events[-1]["type"] == "runner.completion"
    assert events[-1]["status"] == "completed" and events[-1]["final_text"] == STORY
    assert model_calls == 2
    markers = [i for i, e in enumerate(events) if e["type"] == "run.restarted"]
    assert len(markers) == 1
    marker = events[markers[0]]
    assert marker["attempt"] == 2
    # And it sits between the attempts: before it the dead attempt's partial reply, all of it
    # voided by discard_after_seq; after it the whole reply, once
    before, after = events[: markers[0]], events[markers[0] + 1 :]
    void = [e for e in before if e["type"] == "message.delta"]
    assert len(void) >= 2
    assert all(e["seq"] > marker["discard_after_seq"] for e in void)
    assert marker["discard_after_seq"] == max(
        e["seq"] for e in before if e["type"] != "message.delta"
    )
    partial = "".join(e["delta"] for e in void)
    assert STORY.startswith(partial) and partial != STORY, "the worker died after the reply"
    assert "".join(e["delta"] for e in after if e["type"] == "message.delta") == STORY

    # And `agent-runner tail`, reading live, said so and printed the answer once
    assert tail.returncode == 0, stdout + stderr
    lines = stdout.splitlines()
    note = "  [restarted: attempt 2; the partial reply above is discarded]"
    assert lines.count(note) == 1
    at = lines.index(note)
    assert lines[at - 1] == f"assistant> {partial}"
    assert lines[at + 1] == f"assistant> {STORY}"
    assert stdout.count(STORY) == 1

    # And a Python reader following docs/events.md (ReplyText) gets the answer once, where one
    # that concatenates every delta would show its beginning twice
    read = list(stream_events(result.id, timeout=30, redis_url=redis_url))
    assert replies_of(read) == [STORY]
    assert joined_deltas(read) == partial + STORY
