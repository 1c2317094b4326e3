"""In-process background summaries: a Runner summarises after its runs, without Celery.

Every test runs on memory, Redis and PostgreSQL (the ``store`` fixture of test_summarizer).
The agent answers with a :class:`FakeModel`; the summarizer's model is a :class:`GatedModel`
that records how many of its calls run at once and can be held until the test lets it go.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from runner_core import (
    BackgroundSummaries,
    InvalidRequestError,
    LLMAgent,
    Message,
    ModelResponse,
    ParallelAgent,
    Runner,
    SessionKey,
    SessionService,
    Summarizer,
    Summary,
    TextDelta,
    Usage,
    check_event_count,
)
from runner_core.context import branch_filter_key
from runner_core.model import ModelRequest
from runner_core.testing import FakeModel
from tests.test_summarizer import store as store  # memory, Redis, PostgreSQL

APP, USER = "app", "alice"


class GatedModel:
    """A summary model that records concurrent calls and waits for :attr:`gate` to open."""

    name = "summaries"
    price = None

    def __init__(self, *, delay: float = 0.0, open_gate: bool = True) -> None:
        self.delay = delay
        self.gate = asyncio.Event()
        if open_gate:
            self.gate.set()
        self.calls = 0
        self.prompts: list[str] = []
        self.active = 0
        self.max_active = 0

    async def generate(self, request: ModelRequest) -> AsyncIterator[TextDelta | ModelResponse]:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(self.delay)
            await self.gate.wait()
            self.calls += 1
            self.prompts.append(request.messages[0].text)
            text = f"summary {self.calls}"
            yield ModelResponse(message=Message.assistant(text), usage=Usage())
        finally:
            self.active -= 1

    async def close(self) -> None:
        pass


def runner_with(
    service: SessionService, summaries: BackgroundSummaries, *, replies: int = 20
) -> Runner:
    model = FakeModel()
    for index in range(replies):
        model.add_text(f"answer {index}")
    agent = LLMAgent("assistant", model=model, summarizer=summaries.summarizer)
    return Runner(APP, agent, session_service=service, background_summaries=summaries)


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.01)


async def boundary(service: SessionService, session_id: str) -> int:
    summary = await service.get_summary(APP, USER, session_id)
    return 0 if summary is None else summary.event_count


async def test_summaries_appear_after_runs_without_any_celery_worker(
    store: SessionService,
) -> None:
    # Given a Runner whose summarizer is due past 2 waiting events
    model = GatedModel()
    summarizer = Summarizer(model, checks_any=[check_event_count(2)])
    summaries = BackgroundSummaries(summarizer)
    runner = runner_with(store, summaries)

    # When one run (2 events) completes: not due yet
    first = await runner.run(USER, "s1", "hello").completion()
    assert first.status == "completed"
    await asyncio.sleep(0.1)
    assert await store.get_summary(APP, USER, "s1") is None

    # And a second run completes (4 events)
    await runner.run(USER, "s1", "again").completion()

    # Then a summary covering both runs is stored in the background
    stored: list[int] = []

    async def poll() -> None:
        while not stored:
            if (count := await boundary(store, "s1")) > 0:
                stored.append(count)
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), 5)
    summary = await store.get_summary(APP, USER, "s1")
    assert summary is not None and summary.text == "summary 1"
    assert summary.event_count == 4
    await runner.close()
    assert summaries.stored == 1 and summaries.dropped == 0


async def test_a_burst_of_runs_on_one_session_never_overlaps_jobs_nor_moves_back(
    store: SessionService,
) -> None:
    # Given three workers and a slow summary model, due after every run
    model = GatedModel(delay=0.05)
    summaries = BackgroundSummaries(Summarizer(model, checks_any=[check_event_count(0)]))
    runner = runner_with(store, summaries)

    # When eight runs on one session complete back to back
    boundaries: list[int] = []
    for index in range(8):
        completion = await runner.run(USER, "s1", f"message {index}").completion()
        assert completion.status == "completed"
        boundaries.append(await boundary(store, "s1"))
        await asyncio.sleep(0.02)
    await runner.close()
    boundaries.append(await boundary(store, "s1"))

    # Then no two summary calls ever ran at once, and the boundary only moved forward
    assert model.calls >= 2
    assert model.max_active == 1
    assert boundaries == sorted(boundaries)
    assert boundaries[-1] > 0


async def test_a_session_with_a_job_queued_or_running_gets_no_second_job(
    store: SessionService,
) -> None:
    # Given a summary job held running on session s1
    model = GatedModel(open_gate=False)
    summaries = BackgroundSummaries(Summarizer(model), workers=3)
    runner = runner_with(store, summaries)
    await runner.run(USER, "s1", "hello").completion()
    await eventually(lambda: model.active == 1)

    # When more jobs are asked for on s1
    key = SessionKey(APP, USER, "s1")
    assert not summaries.submit(store, key)
    assert not summaries.submit(store, key)

    # Then none is queued; once the held job ends, one summary was made
    model.gate.set()
    await runner.close()
    assert model.calls == 1 and model.max_active == 1
    assert summaries.dropped == 0


async def test_a_full_queue_never_blocks_a_run_and_counts_the_drop(
    store: SessionService,
) -> None:
    # Given one worker stuck in a summary of s1 and a queue of one
    model = GatedModel(open_gate=False)
    summaries = BackgroundSummaries(Summarizer(model), workers=1, queue_size=1)
    runner = runner_with(store, summaries)
    await runner.run(USER, "s1", "hello").completion()
    await eventually(lambda: model.active == 1)
    await runner.run(USER, "s2", "hello").completion()  # queued behind it

    # When a run on a third session completes while the queue is full
    completion = await asyncio.wait_for(runner.run(USER, "s3", "hello").completion(), 5)

    # Then its completion arrived while the job was stuck, and its job was dropped
    assert completion.status == "completed"
    assert model.active == 1
    assert summaries.dropped == 1

    # And once the model answers, the queued jobs finish; the dropped one stored nothing
    model.gate.set()
    await runner.close()
    assert await boundary(store, "s1") == 2
    assert await boundary(store, "s2") == 2
    assert await store.get_summary(APP, USER, "s3") is None


async def test_a_job_past_its_timeout_is_cancelled_and_stores_nothing(
    store: SessionService,
) -> None:
    # Given a summary model that never answers and a short job timeout
    model = GatedModel(open_gate=False)
    summaries = BackgroundSummaries(Summarizer(model), job_timeout_s=0.2)
    runner = runner_with(store, summaries)

    # When a run completes
    await runner.run(USER, "s1", "hello").completion()

    # Then the job is cancelled at its timeout, and nothing is stored
    await eventually(lambda: summaries.failed == 1)
    assert model.active == 0
    assert await store.get_summary(APP, USER, "s1") is None

    # And the session's next run asks again
    model.gate.set()
    await runner.run(USER, "s1", "again").completion()
    await runner.close()
    assert await boundary(store, "s1") == 4


async def test_close_drains_queued_and_running_jobs(store: SessionService) -> None:
    # Given jobs running and queued behind a slow model
    model = GatedModel(delay=0.2)
    summaries = BackgroundSummaries(Summarizer(model), workers=1)
    runner = runner_with(store, summaries)
    await runner.run(USER, "s1", "hello").completion()
    await runner.run(USER, "s2", "hello").completion()

    # When the Runner closes
    await runner.close()

    # Then both summaries were made before close returned
    assert await boundary(store, "s1") == 2
    assert await boundary(store, "s2") == 2
    assert summaries.stored == 2


async def test_close_cancels_what_does_not_finish_within_the_drain_timeout(
    store: SessionService,
) -> None:
    # Given a job stuck in the model and a short drain bound
    model = GatedModel(open_gate=False)
    summaries = BackgroundSummaries(Summarizer(model), drain_timeout_s=0.2)
    runner = runner_with(store, summaries)
    await runner.run(USER, "s1", "hello").completion()
    await eventually(lambda: model.active == 1)

    # When the Runner closes
    started = time.monotonic()
    await runner.close()

    # Then close returned near the bound, the job was cancelled and stored nothing
    assert time.monotonic() - started < 2
    assert model.active == 0
    assert await store.get_summary(APP, USER, "s1") is None
    assert not summaries.submit(store, SessionKey(APP, USER, "s1"))


async def test_failed_runs_queue_no_summary(store: SessionService) -> None:
    # Given an agent whose model fails
    model = GatedModel()
    summaries = BackgroundSummaries(Summarizer(model))
    agent_model = FakeModel()
    agent_model.add_error(500, "down")
    agent = LLMAgent("assistant", model=agent_model)
    runner = Runner(APP, agent, session_service=store, background_summaries=summaries)

    # When its run fails
    completion = await runner.run(USER, "s1", "hello").completion()
    await runner.close()

    # Then no summary job ran
    assert completion.status == "failed"
    assert model.calls == 0


@pytest.mark.parametrize(
    "options",
    [{"workers": 0}, {"queue_size": 0}, {"job_timeout_s": 0}, {"drain_timeout_s": -1}],
)
def test_bad_options_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(InvalidRequestError):
        BackgroundSummaries(Summarizer(GatedModel()), **options)  # type: ignore[arg-type]


def test_a_runner_refuses_something_else_as_background_summaries() -> None:
    agent = LLMAgent("assistant", model=FakeModel())
    with pytest.raises(InvalidRequestError, match="background_summaries"):
        Runner(APP, agent, background_summaries=object())  # type: ignore[arg-type]


# --- per-branch summaries -------------------------------------------------------------------


def fanout(**options: object) -> tuple[ParallelAgent, FakeModel, FakeModel]:
    left, right = FakeModel(), FakeModel()
    for index in range(2):
        left.add_text(f"LEFT-ANSWER-{index}")
        right.add_text(f"RIGHT-ANSWER-{index}")
    agents = [
        LLMAgent("left", model=left, add_session_summary=True),
        LLMAgent("right", model=right, add_session_summary=True),
    ]
    return ParallelAgent("fanout", sub_agents=agents, **options), left, right  # type: ignore[arg-type]


async def test_per_branch_jobs_summarise_what_each_branch_sees(store: SessionService) -> None:
    # Given a fan-out to two branches, summarised per branch
    model = GatedModel()
    summaries = BackgroundSummaries(Summarizer(model), per_branch=True)
    agent, _, _ = fanout()
    runner = Runner(APP, agent, session_service=store, background_summaries=summaries)

    # When a run completes
    await runner.run(USER, "s1", "question").completion()
    await runner.close()

    # Then the whole session and each branch have a summary
    whole = await store.get_summary(APP, USER, "s1")
    left = await store.get_summary(APP, USER, "s1", filter_key=branch_filter_key("fanout.left"))
    right = await store.get_summary(APP, USER, "s1", filter_key=branch_filter_key("fanout.right"))
    assert whole is not None and left is not None and right is not None
    assert summaries.stored == 3
    # And a branch's summary covered the main line and that branch, never its sibling
    prompts = dict(zip(["whole", "first", "second"], model.prompts, strict=True))
    assert "LEFT-ANSWER-0" in prompts["whole"] and "RIGHT-ANSWER-0" in prompts["whole"]
    for prompt in (prompts["first"], prompts["second"]):
        assert "question" in prompt
        assert ("LEFT-ANSWER-0" in prompt) != ("RIGHT-ANSWER-0" in prompt)


async def test_without_per_branch_only_the_whole_session_is_summarised(
    store: SessionService,
) -> None:
    model = GatedModel()
    summaries = BackgroundSummaries(Summarizer(model))
    agent, _, _ = fanout()
    runner = Runner(APP, agent, session_service=store, background_summaries=summaries)

    await runner.run(USER, "s1", "question").completion()
    await runner.close()

    session = await store.get_session(APP, USER, "s1")
    assert session is not None and set(session.summaries) == {""}


async def test_an_agent_on_a_branch_is_given_its_branch_summary_only(
    store: SessionService,
) -> None:
    # Given a session after one fan-out, with a whole-session summary and one for the left branch
    agent, left, right = fanout()
    runner = Runner(APP, agent, session_service=store)
    await runner.run(USER, "s1", "question").completion()
    session = await store.get_session(APP, USER, "s1")
    assert session is not None
    last = session.events[-1]
    for filter_key, text in [
        ("", "WHOLE-SUMMARY"),
        (branch_filter_key("fanout.left"), "LEFT-SUMMARY"),
    ]:
        summary = Summary(
            text=text,
            filter_key=filter_key,
            last_event_id=last.id,
            event_count=session.event_count,
            last_event_at=last.created_at,
            created_at=last.created_at,
        )
        assert await store.put_summary(APP, USER, "s1", summary)

    # When the next run fans out again
    await runner.run(USER, "s1", "follow-up").completion()
    await runner.close()

    # Then the left branch is given its own summary, the right one the whole session's
    def context_of(model: FakeModel) -> str:
        return "\n".join(str(m.get("content")) for m in model.requests[-1]["messages"])

    assert "LEFT-SUMMARY" in context_of(left) and "WHOLE-SUMMARY" not in context_of(left)
    assert "WHOLE-SUMMARY" in context_of(right) and "LEFT-SUMMARY" not in context_of(right)
    # And the history after the boundary is still there
    assert "follow-up" in context_of(left) and "LEFT-ANSWER-0" not in context_of(left)
