"""The summarizer: checks, prompt placeholders, boundaries, context building, failures.

The store-touching tests run against memory, Redis and PostgreSQL; the model is a
:class:`ScriptedModelServer` reached through the real ``openai`` client.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from runner_core import (
    InvalidRequestError,
    LLMAgent,
    ModelError,
    Runner,
    SessionNotFoundError,
    Summarizer,
    check_event_count,
    check_idle_time,
    check_token_count,
    create_session_summary,
    get_session_summary_text,
    tool,
)
from runner_core.context import NOT_EXECUTED
from runner_core.events import Event, MessageEvent, ToolResultEvent
from runner_core.messages import Message, ToolCall
from runner_core.session import Session, SessionService, Summary
from runner_core.summarizer import summary_cut
from runner_core.testing import ScriptedModelServer, scripted_model
from session_backends import from_url

APP, USER = "app", "alice"


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as srv:
        yield srv


@pytest.fixture(autouse=True)
def _fresh_script(server: ScriptedModelServer) -> None:
    server.reset()


@pytest.fixture(params=["memory", "redis", "postgres"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SessionService]:
    if request.param == "memory":
        url = "memory://"
    elif request.param == "redis":
        url = request.getfixturevalue("redis_url")
    else:
        url = request.getfixturevalue("postgres_dsn")
    service = from_url(url)
    yield service
    await service.close()


@pytest.fixture
async def memory_store() -> AsyncIterator[SessionService]:
    service = from_url("memory://")
    yield service
    await service.close()


def summarizer_for(server: ScriptedModelServer, **options: Any) -> Summarizer:
    return Summarizer(scripted_model(server), **options)


# --- building sessions ------------------------------------------------------------------------


_SEQ = itertools.count()


def event(
    session: Session,
    message: Message,
    *,
    kind: str = "message",
    author: str = "agent",
    invocation: str = "inv1",
    at: datetime | None = None,
) -> Event:
    extra: dict[str, Any] = {}
    if at is not None:
        extra["created_at"] = at
    cls = ToolResultEvent if kind == "tool.result" else MessageEvent
    return cls(
        invocation_id=invocation,
        seq=next(_SEQ),  # an event's ID is "{invocation_id}:{seq}": unique per event
        author="user" if message.role == "user" else author,
        message=message,
        **extra,
    )


def user(session: Session, text: str, **kw: Any) -> Event:
    return event(session, Message.user(text), **kw)


def answer(session: Session, text: str, **kw: Any) -> Event:
    return event(session, Message.assistant(text), **kw)


def calls(session: Session, *call_ids: str, **kw: Any) -> Event:
    tool_calls = [ToolCall.make(call_id, "lookup", {"q": call_id}) for call_id in call_ids]
    return event(session, Message.assistant(tool_calls=tool_calls), **kw)


def result(session: Session, call_id: str, **kw: Any) -> Event:
    return event(
        session,
        Message.tool(call_id, f"result of {call_id}", name="lookup"),
        kind="tool.result",
        **kw,
    )


async def new_session(service: SessionService, session_id: str = "s1") -> Session:
    return await service.create_session(APP, USER, session_id)


async def append(service: SessionService, session: Session, *events: Event) -> None:
    for item in events:
        assert await service.append_event(session, item)


async def reload(service: SessionService, session: Session) -> Session:
    fresh = await service.get_session(APP, USER, session.id)
    assert fresh is not None
    return fresh


def conversation(session: Session, turns: int, *, start: int = 0) -> list[Event]:
    out: list[Event] = []
    for i in range(start, start + turns):
        out += [user(session, f"question {i}"), answer(session, f"answer {i}")]
    return out


def prompt_of(server: ScriptedModelServer, index: int = -1) -> str:
    text = server.requests[index]["messages"][-1]["content"]
    assert isinstance(text, str)
    return text


# --- prompt placeholders ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "options", "complaint"),
    [
        ("Summarize this.", {}, "{conversation_text}"),
        ("{previous_summary} only", {}, "{conversation_text}"),
        ("{conversation_text} in {language}", {}, "{language}"),
        ("{conversation_text}", {"max_summary_words": 50}, "{max_summary_words}"),
        ("   ", {}, "{conversation_text}"),
    ],
)
def test_a_prompt_missing_a_required_placeholder_or_with_an_unknown_one_is_refused(
    server: ScriptedModelServer, prompt: str, options: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(InvalidRequestError, match=complaint.replace("{", r"\{")):
        summarizer_for(server, prompt=prompt, **options)


@pytest.mark.parametrize(
    "options",
    [
        {"max_summary_words": 0},
        {"max_summary_words": "100"},
        {"skip_recent": -1},
        {"checks_any": [20]},
    ],
)
def test_bad_options_are_refused_at_construction(
    server: ScriptedModelServer, options: dict[str, Any]
) -> None:
    with pytest.raises(InvalidRequestError):
        summarizer_for(server, **options)


def test_bad_check_thresholds_are_refused() -> None:
    with pytest.raises(InvalidRequestError, match="check_event_count"):
        check_event_count(-1)
    with pytest.raises(InvalidRequestError, match="check_token_count"):
        check_token_count(-5)
    with pytest.raises(InvalidRequestError, match="check_idle_time"):
        check_idle_time(-1)


async def test_placeholders_are_filled_and_other_braces_are_left_alone(
    server: ScriptedModelServer, memory_store: SessionService
) -> None:
    # Given a custom prompt with every placeholder and a literal JSON example
    prompt = (
        'Reply as {"summary": "..."} in {max_summary_words} words.\n'
        "Before: {previous_summary}\nNow:\n{conversation_text}"
    )
    summarizer = summarizer_for(server, prompt=prompt, max_summary_words=42)
    session = await new_session(memory_store)
    await append(memory_store, session, user(session, "my {previous_summary} text"))
    server.add_text("first")
    # When it summarises
    await create_session_summary(memory_store, summarizer, APP, USER, "s1", force=True)
    # Then the placeholders are filled once, and text from the conversation is not re-read
    assert prompt_of(server) == (
        'Reply as {"summary": "..."} in 42 words.\nBefore: \nNow:\nuser: my {previous_summary} text'
    )


async def test_the_default_prompt_carries_the_word_limit_and_the_previous_summary(
    server: ScriptedModelServer, memory_store: SessionService
) -> None:
    summarizer = summarizer_for(server, max_summary_words=120)
    session = await new_session(memory_store)
    await append(memory_store, session, *conversation(session, 1))
    server.add_text("They said hello.")
    await create_session_summary(memory_store, summarizer, APP, USER, "s1", force=True)
    await append(memory_store, session, *conversation(session, 1, start=1))
    server.add_text("They said hello twice.")
    await create_session_summary(memory_store, summarizer, APP, USER, "s1", force=True)
    assert "under 120 words" in prompt_of(server)
    assert "They said hello." in prompt_of(server)


async def test_without_previous_summary_placeholder_the_summary_goes_before_the_conversation(
    server: ScriptedModelServer, memory_store: SessionService
) -> None:
    summarizer = summarizer_for(server, prompt="Summarize:\n{conversation_text}")
    session = await new_session(memory_store)
    await append(memory_store, session, *conversation(session, 1))
    server.add_text("S1")
    await create_session_summary(memory_store, summarizer, APP, USER, "s1", force=True)
    await append(memory_store, session, *conversation(session, 1, start=1))
    server.add_text("S2")
    await create_session_summary(memory_store, summarizer, APP, USER, "s1", force=True)
    assert prompt_of(server) == (
        "Summarize:\nSummary of the earlier conversation:\nS1\n\nuser: question 1\nagent: answer 1"
    )


# --- checks -----------------------------------------------------------------------------------


async def test_event_count_check_fires_only_above_the_threshold(
    server: ScriptedModelServer, memory_store: SessionService
) -> None:
    summarizer = summarizer_for(server, checks_any=[check_event_count(4)])
    session = await new_session(memory_store)
    await append(memory_store, session, *conversation(session, 2))
    assert not summarizer.should_summarize(session)
    assert await summarizer.summarize(session) is None
    assert server.requests == []
    await append(memory_store, session, user(session, "one more"))
    assert summarizer.should_summarize(session)


async def test_token_count_check_uses_the_estimated_tokens_of_the_waiting_events(
    server: ScriptedModelServer, memory_store: SessionService
) -> None:
    summarizer = summarizer_for(server, checks_any=[check_token_count(100)])
    session = await new_session(memory_store)
    await append(memory_store, session, user(session, "short"))
    assert not summarizer.should_summarize(session)
    await append(memory_store, session, answer(session, "x" * 500))
    assert summarizer.should_summarize(session)


async def test_idle_time_check_fires_after_a_pause(
    server: ScriptedModelServer, memory_store: SessionService
) -> None:
    summarizer = summarizer_for(server, checks_any=[check_idle_time(60)])
    session = await new_session(memory_store)
    now = datetime.now(UTC)
    await append(memory_store, session, user(session, "hi", at=now), answer(session, "hey", at=now))
    assert not summarizer.should_summarize(session, now=now + timedelta(seconds=5))
    # The session sat idle for longer than the limit...
    assert summarizer.should_summarize(session, now=now + timedelta(minutes=2))
    # ...or the user came back after a long pause.
    later = now + timedelta(minutes=10)
    await append(memory_store, session, user(session, "back again", at=later))
    assert summarizer.should_summarize(session, now=later + timedelta(seconds=1))


async def test_checks_any_and_checks_all_combine(
    server: ScriptedModelServer, memory_store: SessionService
) -> None:
    session = await new_session(memory_store)
    await append(memory_store, session, *conversation(session, 3))  # 6 short events
    many, few, big = check_event_count(3), check_event_count(10), check_token_count(10_000)
    assert summarizer_for(server, checks_any=[few, many]).should_summarize(session)
    assert not summarizer_for(server, checks_any=[few, big]).should_summarize(session)
    assert not summarizer_for(server, checks_all=[many, big]).should_summarize(session)
    assert summarizer_for(server, checks_all=[many, check_token_count(1)]).should_summarize(session)
    # both given: any of checks_any AND all of checks_all
    both = summarizer_for(server, checks_any=[few, many], checks_all=[big])
    assert not both.should_summarize(session)
    # no checks: always due when something is waiting
    assert summarizer_for(server).should_summarize(session)


async def test_force_bypasses_the_checks_but_not_an_empty_delta(
    server: ScriptedModelServer, store: SessionService
) -> None:
    summarizer = summarizer_for(server, checks_any=[check_event_count(100)])
    session = await new_session(store)
    await append(store, session, *conversation(session, 1))
    assert await create_session_summary(store, summarizer, APP, USER, "s1") is None
    server.add_text("forced")
    stored = await create_session_summary(store, summarizer, APP, USER, "s1", force=True)
    assert stored is not None and stored.text == "forced"
    # Nothing new since: even forced, no model call and no write.
    assert await create_session_summary(store, summarizer, APP, USER, "s1", force=True) is None
    assert len(server.requests) == 1


# --- incremental boundaries -------------------------------------------------------------------


async def test_summaries_are_incremental_and_record_their_boundary(
    server: ScriptedModelServer, store: SessionService
) -> None:
    # Given a session of two turns summarised once
    summarizer = summarizer_for(server)
    session = await new_session(store)
    first = conversation(session, 2)
    await append(store, session, *first)
    server.add_text("Summary one.")
    one = await create_session_summary(store, summarizer, APP, USER, "s1")
    assert one is not None
    assert (one.event_count, one.last_event_id) == (4, first[-1].id)
    assert one.last_event_at == first[-1].created_at
    # When one more turn arrives and it summarises again
    second = conversation(session, 1, start=2)
    await append(store, session, *second)
    server.add_text("Summary two.")
    two = await create_session_summary(store, summarizer, APP, USER, "s1")
    # Then only the new events were sent, with the previous summary as input
    prompt = prompt_of(server)
    assert "Summary one." in prompt
    assert "question 2" in prompt and "answer 2" in prompt
    assert "question 0" not in prompt and "question 1" not in prompt
    assert two is not None and (two.event_count, two.last_event_id) == (6, second[-1].id)
    # And the events are all still there (non-destructive), the summary is stored
    fresh = await reload(store, session)
    assert len(fresh.events) == 6
    assert await get_session_summary_text(store, APP, USER, "s1") == "Summary two."
    assert fresh.summaries[""].event_count == 6


async def test_the_boundary_counts_evicted_events(server: ScriptedModelServer) -> None:
    # Given a store keeping only 4 events of a session that had 8
    service = from_url("memory://", event_limit=4)
    try:
        session = await new_session(service)
        events = conversation(session, 4)
        await append(service, session, *events)
        fresh = await reload(service, session)
        assert len(fresh.events) == 4 and fresh.event_count == 8
        server.add_text("S")
        summary = await create_session_summary(
            service, summarizer_for(server), APP, USER, "s1", force=True
        )
        # Then the boundary counts every event ever appended
        assert summary is not None and summary.event_count == 8
        assert summary.last_event_id == events[-1].id
    finally:
        await service.close()


async def test_skip_recent_leaves_the_newest_events_out(
    server: ScriptedModelServer, memory_store: SessionService
) -> None:
    summarizer = summarizer_for(server, skip_recent=2)
    session = await new_session(memory_store)
    events = conversation(session, 3)
    await append(memory_store, session, *events)
    server.add_text("S")
    summary = await create_session_summary(memory_store, summarizer, APP, USER, "s1")
    assert summary is not None and summary.last_event_id == events[3].id
    assert "question 2" not in prompt_of(server)


async def test_an_empty_model_answer_stores_nothing(
    server: ScriptedModelServer, memory_store: SessionService
) -> None:
    session = await new_session(memory_store)
    await append(memory_store, session, *conversation(session, 1))
    server.add_text("   ")
    assert (
        await create_session_summary(memory_store, summarizer_for(server), APP, USER, "s1") is None
    )
    assert await memory_store.get_summary(APP, USER, "s1") is None


async def test_a_missing_session_is_reported(
    server: ScriptedModelServer, memory_store: SessionService
) -> None:
    with pytest.raises(SessionNotFoundError, match="nope"):
        await create_session_summary(memory_store, summarizer_for(server), APP, USER, "nope")
    assert await get_session_summary_text(memory_store, APP, USER, "nope") is None


async def test_a_filter_key_summarises_the_user_and_that_agent_only(
    server: ScriptedModelServer, memory_store: SessionService
) -> None:
    session = await new_session(memory_store)
    await append(
        memory_store,
        session,
        user(session, "plan a trip"),
        answer(session, "flights found", author="flights"),
        answer(session, "hotel found", author="hotels"),
    )
    server.add_text("flights summary")
    summary = await create_session_summary(
        memory_store, summarizer_for(server), APP, USER, "s1", filter_key="flights"
    )
    assert summary is not None and summary.filter_key == "flights"
    assert summary.event_count == 2
    assert "flights found" in prompt_of(server) and "hotel" not in prompt_of(server)
    assert await get_session_summary_text(memory_store, APP, USER, "s1") is None
    text = await get_session_summary_text(memory_store, APP, USER, "s1", filter_key="flights")
    assert text == "flights summary"


# --- tool calls and pending confirmations -----------------------------------------------------


def _session() -> Session:
    now = datetime.now(UTC)
    return Session(id="s1", app_name=APP, user_id=USER, created_at=now, updated_at=now)


def test_the_boundary_never_separates_a_tool_call_from_its_results() -> None:
    s = _session()
    u, c, r1, r2, a = (
        user(s, "q"),
        calls(s, "c1", "c2"),
        result(s, "c1"),
        result(s, "c2"),
        answer(s, "done"),
    )
    assert summary_cut([u, c]) == 1
    assert summary_cut([u, c, r1]) == 1
    assert summary_cut([u, c, r1, r2]) == 4
    assert summary_cut([u, c, r1, r2, a]) == 5
    # a result whose call is before the boundary never holds the boundary back
    assert summary_cut([r2, a]) == 2


def test_a_user_message_after_unanswered_calls_lets_the_boundary_pass_them() -> None:
    s = _session()
    assert summary_cut([user(s, "q"), calls(s, "c1"), user(s, "never mind"), answer(s, "ok")]) == 4


async def test_skip_recent_moves_the_boundary_back_to_keep_calls_with_results(
    server: ScriptedModelServer, store: SessionService
) -> None:
    # Given a tool round whose last result falls in the skipped events
    session = await new_session(store)
    q, c, r1, r2 = (
        user(session, "q"),
        calls(session, "c1", "c2"),
        result(session, "c1"),
        result(session, "c2"),
    )
    await append(store, session, q, c, r1, r2)
    server.add_text("S")
    summary = await create_session_summary(
        store, summarizer_for(server, skip_recent=1), APP, USER, "s1"
    )
    # Then the boundary goes back before the call, so call and results stay together
    assert summary is not None and summary.last_event_id == q.id
    assert "called tool" not in prompt_of(server)


@tool(requires_confirmation=True, name="refund")
def refund(amount: int) -> str:
    """Refund money.

    Args:
        amount: how much.
    """
    return f"refunded {amount}"


async def test_a_pending_confirmation_is_never_summarised_away(
    server: ScriptedModelServer, store: SessionService
) -> None:
    # Given a run paused on a tool call waiting for the user's approval
    agent = LLMAgent("agent", model=scripted_model(server), tools=[refund])
    runner = Runner(APP, agent, session_service=store)
    server.add_text("Hello!")
    await runner.run(USER, "s1", "hi").completion()
    server.add_tool_calls([("call_r", "refund", {"amount": 5})])
    paused = await runner.run(USER, "s1", "refund me").completion()
    assert paused.status == "paused"
    session = await store.get_session(APP, USER, "s1")
    assert session is not None
    call_turn = next(e for e in session.events if e.type == "message" and e.message.tool_calls)
    # When a summary is forced
    server.add_text("They greeted; a refund was asked.")
    summary = await create_session_summary(
        store, summarizer_for(server), APP, USER, "s1", force=True
    )
    # Then the boundary stays before the assistant tool-call turn
    assert summary is not None
    positions = {e.id: i for i, e in enumerate(session.events)}
    assert positions[summary.last_event_id] < positions[call_turn.id]
    assert "refund" not in prompt_of(server).split("refund me")[-1]
    # And the confirmation can still be resumed, with the call in the model's context
    server.add_text("Refunded 5.")
    done = await runner.run(USER, "s1", None, tool_confirmations={"call_r": True}).completion()
    assert done.status == "completed"
    server.add_text("S2")
    later = await create_session_summary(store, summarizer_for(server), APP, USER, "s1")
    assert later is not None and later.event_count > summary.event_count


# --- context building -------------------------------------------------------------------------


async def test_context_with_a_summary_is_the_summary_then_every_event_after_its_boundary(
    server: ScriptedModelServer, store: SessionService
) -> None:
    # Given two runs, then a summary of them, then a third run
    agent = LLMAgent(
        "agent", model=scripted_model(server), instruction="Be brief.", add_session_summary=True
    )
    runner = Runner(APP, agent, session_service=store)
    for i in range(2):
        server.add_text(f"answer {i}")
        await runner.run(USER, "s1", f"question {i}").completion()
    server.add_text("The user asked two questions.")
    summary = await create_session_summary(store, summarizer_for(server), APP, USER, "s1")
    assert summary is not None and summary.event_count == 4
    server.add_text("answer 2")
    await runner.run(USER, "s1", "question 2").completion()
    server.add_text("answer 3")
    await runner.run(USER, "s1", "question 3").completion()
    # Then the model got: instruction, summary, events after the boundary, the new question
    messages = server.requests[-1]["messages"]
    assert [m["role"] for m in messages] == ["system", "system", "user", "assistant", "user"]
    assert messages[0]["content"] == "Be brief."
    assert "The user asked two questions." in messages[1]["content"]
    assert [m["content"] for m in messages[2:]] == ["question 2", "answer 2", "question 3"]


async def test_context_without_summary_uses_max_history_runs(
    server: ScriptedModelServer, memory_store: SessionService
) -> None:
    agent = LLMAgent("agent", model=scripted_model(server), max_history_runs=1)
    runner = Runner(APP, agent, session_service=memory_store)
    server.add_text("answer 0")
    await runner.run(USER, "s1", "question 0").completion()
    server.add_text("S")
    await create_session_summary(memory_store, summarizer_for(server), APP, USER, "s1")
    server.add_text("answer 1")
    await runner.run(USER, "s1", "question 1").completion()
    # add_session_summary is off: no summary, only the last run
    messages = server.requests[-1]["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [("user", "question 1")]


async def test_a_boundary_inside_a_tool_round_never_leaves_an_orphan_result_in_context(
    server: ScriptedModelServer, memory_store: SessionService
) -> None:
    # Given a summary whose boundary had to stop before an unanswered call...
    session = await new_session(memory_store)
    q, c = user(session, "look it up"), calls(session, "c1")
    await append(memory_store, session, q, c)
    server.add_text("S")
    summary = await create_session_summary(memory_store, summarizer_for(server), APP, USER, "s1")
    assert summary is not None and summary.last_event_id == q.id
    # ...then the context after it starts with the call, closed as not executed
    agent = LLMAgent("agent", model=scripted_model(server), add_session_summary=True)
    server.add_text("ok")
    await Runner(APP, agent, session_service=memory_store).run(USER, "s1", "next").completion()
    roles = [(m["role"], m.get("content")) for m in server.requests[-1]["messages"]]
    assert roles[0][0] == "system"
    assert roles[1][0] == "assistant" and roles[2] == ("tool", NOT_EXECUTED)
    assert roles[-1] == ("user", "next")


# --- failures and the forward-only rule -------------------------------------------------------


async def test_a_model_failure_raises_and_keeps_the_previous_summary(
    server: ScriptedModelServer, store: SessionService
) -> None:
    summarizer = summarizer_for(server)
    session = await new_session(store)
    await append(store, session, *conversation(session, 1))
    server.add_text("Good summary.")
    await create_session_summary(store, summarizer, APP, USER, "s1")
    await append(store, session, *conversation(session, 1, start=1))
    server.add_error(500, "upstream exploded")
    with pytest.raises(ModelError):
        await create_session_summary(store, summarizer, APP, USER, "s1")
    stored = await store.get_summary(APP, USER, "s1")
    assert stored is not None and (stored.text, stored.event_count) == ("Good summary.", 2)


async def test_a_stored_summary_never_goes_backwards(
    server: ScriptedModelServer, store: SessionService
) -> None:
    # Given two summaries computed from reads of the same session at different times
    summarizer = summarizer_for(server)
    session = await new_session(store)
    await append(store, session, *conversation(session, 1))
    stale = await reload(store, session)
    await append(store, session, *conversation(session, 2, start=1))
    fresh = await reload(store, session)
    server.add_text("old")
    old = await summarizer.summarize(stale)
    server.add_text("new")
    new = await summarizer.summarize(fresh)
    assert old is not None and new is not None and old.event_count < new.event_count
    # When the newer one is stored first and the slow older one arrives after it
    assert await store.put_summary(APP, USER, "s1", new)
    assert not await store.put_summary(APP, USER, "s1", old)
    assert not await store.put_summary(APP, USER, "s1", new.model_copy(update={"text": "same"}))
    # Then the newer one stays
    stored = await store.get_summary(APP, USER, "s1")
    assert stored is not None and (stored.text, stored.event_count) == ("new", 6)


def test_summary_counts_start_at_one() -> None:
    now = datetime.now(UTC)
    with pytest.raises(ValueError):
        Summary(text="x", last_event_id="e", event_count=0, last_event_at=now, created_at=now)
