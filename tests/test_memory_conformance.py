"""One conformance suite for every memory store: memory, Redis and PostgreSQL.

Each test runs against each backend, on real servers started by tests/services.py. Ranking is
checked on behaviour every backend must share (more of the query's words ranks higher, no
shared word is no hit), not on the backends' own score scales.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis

from runner_core.embeddings import OpenAIEmbedder
from runner_core.errors import ConfigurationError, InvalidRequestError, MemoryBackendError
from runner_core.events import MessageEvent
from runner_core.memory import (
    APP_SCOPE,
    MAX_QUERY_CHARS,
    MAX_TEXT_CHARS,
    Experience,
    Fact,
    MemoryService,
    Skill,
    agent_scope,
    scored_terms,
    user_scope,
)
from runner_core.messages import Message
from runner_core.session import Session
from session_backends.memories import memory_from_url
from tests.memory_support import EmbeddingServer

APP = "support-bot"
SCOPE = agent_scope("triage")

MakeMemory = Callable[..., Awaitable[MemoryService]]

BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def backend_url(backend: str, request: pytest.FixtureRequest) -> str:
    if backend == "redis":
        url: str = request.getfixturevalue("redis_url")
        return url
    if backend == "postgres":
        dsn: str = request.getfixturevalue("postgres_dsn")
        return dsn
    return "memory://"


@pytest.fixture
async def make_memory(backend_url: str) -> AsyncIterator[MakeMemory]:
    built: list[MemoryService] = []

    async def make(**options: Any) -> MemoryService:
        service = memory_from_url(backend_url, **options)
        built.append(service)
        return service

    yield make
    for service in built:
        await service.close()


@pytest.fixture
async def memory(make_memory: MakeMemory) -> MemoryService:
    return await make_memory()


def experience(rule: str, *, condition: str = "", scope: str = SCOPE, **fields: Any) -> Experience:
    return Experience(app_name=APP, scope=scope, condition=condition, rule=rule, **fields)


async def rules(memory: MemoryService, query: str, **options: Any) -> list[str]:
    hits = await memory.search(APP, query, scopes=options.pop("scopes", SCOPE), **options)
    return [getattr(hit.item, "rule", None) or getattr(hit.item, "name", "") for hit in hits]


# --- add, get, items, delete -------------------------------------------------------------------


async def test_an_added_item_is_stored_with_an_id_and_read_back(memory: MemoryService) -> None:
    stored = await memory.add(
        experience("Check the refund policy before answering", condition="billing questions")
    )
    assert stored.id and stored.kind == "experience"
    again = await memory.get(APP, SCOPE, stored.id)
    assert again == stored
    assert [i.id for i in await memory.items(APP, SCOPE)] == [stored.id]
    assert await memory.get(APP, agent_scope("other"), stored.id) is None


async def test_delete_removes_the_item_from_reads_and_search(memory: MemoryService) -> None:
    stored = await memory.add(experience("Escalate outages to the on-call engineer"))
    assert await rules(memory, "outages") == ["Escalate outages to the on-call engineer"]
    assert await memory.delete(APP, SCOPE, stored.id) is True
    assert await memory.delete(APP, SCOPE, stored.id) is False
    assert await memory.get(APP, SCOPE, stored.id) is None
    assert await rules(memory, "outages") == []
    # The merge key went with it: the same rule comes back as a new item.
    back = await memory.add(experience("Escalate outages to the on-call engineer"))
    assert back.id != stored.id


# --- search and ranking ------------------------------------------------------------------------


async def test_search_ranks_items_sharing_more_query_words_first(memory: MemoryService) -> None:
    await memory.add(experience("Restart the payment worker when invoices are stuck"))
    await memory.add(experience("Invoices are sent on the first day of the month"))
    await memory.add(experience("Reset the password from the admin console"))
    await memory.add(experience("Deploy on Tuesdays only"))

    found = await rules(memory, "stuck invoices payment worker")

    assert found == [
        "Restart the payment worker when invoices are stuck",
        "Invoices are sent on the first day of the month",
    ]


async def test_search_finds_nothing_without_a_shared_word(memory: MemoryService) -> None:
    await memory.add(experience("Deploy on Tuesdays only"))
    assert await rules(memory, "refund policy") == []
    assert await rules(memory, "the and of") == []  # only very common words


async def test_search_keeps_to_its_app_scopes_and_kinds(memory: MemoryService) -> None:
    await memory.add(experience("Refunds need a receipt"))
    await memory.add(experience("Refunds need a manager", scope=agent_scope("billing")))
    await memory.add(Experience(app_name="other-app", scope=SCOPE, rule="Refunds are free"))
    await memory.add(
        Skill(app_name=APP, scope=SCOPE, name="refunds", description="How to refund",
              content="Open the order, press refund.")
    )  # fmt: skip
    await memory.add(Fact(app_name=APP, scope=user_scope("alice"), content="Alice wants refunds"))

    assert await rules(memory, "refunds", kinds=["experience"]) == ["Refunds need a receipt"]
    assert await rules(memory, "refunds", kinds=["skill"]) == ["refunds"]
    both = await memory.search(
        APP, "refunds", scopes=[SCOPE, user_scope("alice")], kinds=["experience", "fact"]
    )
    assert sorted(hit.item.kind for hit in both) == ["experience", "fact"]
    assert [hit.item.app_name for hit in both] == [APP, APP]


async def test_one_pass_finds_the_best_of_each_kind(memory: MemoryService) -> None:
    for n in range(4):
        await memory.add(experience(f"Printer rule {n}" + " printer" * n))
    await memory.add(Skill(app_name=APP, scope=SCOPE, name="printer setup", content="Steps"))
    await memory.add(Fact(app_name=APP, scope=SCOPE, content="The printer is old"))

    found = await memory.search_each_kind(
        APP, "printer", scopes=SCOPE, limits={"skill": 3, "experience": 2}
    )

    assert set(found) == {"skill", "experience"}  # no facts: not asked for
    assert [hit.item.kind for hit in found["skill"]] == ["skill"]
    assert len(found["experience"]) == 2
    best_two = await memory.search(APP, "printer", scopes=SCOPE, kinds=["experience"], limit=2)
    assert [h.item.id for h in found["experience"]] == [h.item.id for h in best_two]
    with pytest.raises(InvalidRequestError, match="limit of skill"):
        await memory.search_each_kind(APP, "printer", scopes=SCOPE, limits={"skill": 0})


async def test_search_limit_keeps_the_best(memory: MemoryService) -> None:
    for n in range(6):
        await memory.add(experience(f"Rule {n} about caching" + " caching" * n))
    hits = await memory.search(APP, "caching", scopes=SCOPE, limit=2)
    assert len(hits) == 2
    assert hits[0].score >= hits[1].score


# --- merge and replace ---------------------------------------------------------------------------


async def test_the_same_normalised_rule_merges(memory: MemoryService) -> None:
    first = await memory.add(
        experience("Always check the logs.", condition="a worker crashed", evidence=["s1"],
                   confidence=0.6)
    )  # fmt: skip
    second = await memory.add(
        experience("  always CHECK the   logs", condition="another condition",
                   evidence=["s2", "s1"], confidence=0.8)
    )  # fmt: skip
    third = await memory.add(experience("always check the logs!", evidence=["s3"], confidence=0.3))

    assert first.id == second.id == third.id
    [stored] = await memory.items(APP, SCOPE)
    assert isinstance(stored, Experience)
    assert stored.rule == "Always check the logs."  # the first text stays
    assert stored.condition == "a worker crashed"
    assert stored.evidence == ["s1", "s2", "s3"]
    assert stored.confidence == 0.8  # the higher
    assert stored.created_at == first.created_at


async def test_a_skill_with_the_same_name_replaces_the_stored_one(memory: MemoryService) -> None:
    old = await memory.add(Skill(app_name=APP, scope=SCOPE, name="triage", content="Old steps"))
    new = await memory.add(Skill(app_name=APP, scope=SCOPE, name="Triage", content="New steps"))
    assert new.id == old.id
    [stored] = await memory.items(APP, SCOPE)
    assert isinstance(stored, Skill) and stored.content == "New steps"
    assert await rules(memory, "old") == []
    assert await rules(memory, "new steps") == ["Triage"]


async def test_concurrent_adds_of_one_rule_lose_no_evidence(memory: MemoryService) -> None:
    await asyncio.gather(
        *(memory.add(experience("Retry the export", evidence=[f"e{n}"])) for n in range(12))
    )
    [stored] = await memory.items(APP, SCOPE)
    assert isinstance(stored, Experience)
    assert sorted(stored.evidence) == sorted(f"e{n}" for n in range(12))


# --- the cap ---------------------------------------------------------------------------------


async def test_a_full_scope_evicts_the_least_confident_then_the_oldest(
    make_memory: MakeMemory,
) -> None:
    memory = await make_memory(max_items_per_scope=3)
    await memory.add(experience("alpha rule", confidence=0.9))
    await memory.add(experience("beta rule", confidence=0.4))
    await memory.add(experience("gamma rule", confidence=0.4))
    await memory.add(experience("delta rule", confidence=0.7))  # evicts beta (oldest of 0.4s)
    assert sorted(await rules(memory, "rule")) == ["alpha rule", "delta rule", "gamma rule"]
    await memory.add(experience("epsilon rule", confidence=0.1))  # evicts gamma, not itself
    assert sorted(await rules(memory, "rule")) == ["alpha rule", "delta rule", "epsilon rule"]
    assert len(await memory.items(APP, SCOPE)) == 3
    # Other scopes have their own cap.
    await memory.add(experience("zeta rule", scope=agent_scope("billing")))
    assert len(await memory.items(APP, SCOPE)) == 3


async def test_concurrent_adds_keep_the_cap(make_memory: MakeMemory) -> None:
    memory = await make_memory(max_items_per_scope=5)
    await asyncio.gather(*(memory.add(experience(f"rule number {n}")) for n in range(20)))
    assert len(await memory.items(APP, SCOPE)) == 5
    assert len(await memory.search(APP, "rule number", scopes=SCOPE, limit=100)) == 5


# --- sessions ----------------------------------------------------------------------------------


async def test_a_finished_session_becomes_facts_of_its_user(memory: MemoryService) -> None:
    now = datetime.now(UTC)
    session = Session(id="s1", app_name=APP, user_id="alice", created_at=now, updated_at=now)
    for seq, message in enumerate(
        [Message.user("My printer model is LX-300"), Message.assistant("Noted: the LX-300")]
    ):
        author = "user" if message.role == "user" else "helper"
        session.events.append(
            MessageEvent(invocation_id="inv1", seq=seq, author=author, message=message)
        )

    facts = await memory.add_session_to_memory(session)
    again = await memory.add_session_to_memory(session)

    assert [f.id for f in facts] == [f.id for f in again]  # merged, not duplicated
    found = await memory.search(APP, "printer model", scopes=user_scope("alice"))
    assert [hit.item.kind for hit in found] == ["fact"]
    assert isinstance(found[0].item, Fact)
    assert found[0].item.source == "session:s1" and found[0].item.evidence == ["inv1:0"]
    assert await memory.search(APP, "printer", scopes=user_scope("bob")) == []


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("refund\x00policy", "control character"),
        ("refund\x1b[31m", "control character"),
        ("x" * (MAX_QUERY_CHARS + 1), "limit"),
    ],
)
async def test_a_bad_query_is_refused(memory: MemoryService, query: str, says: str) -> None:
    with pytest.raises(InvalidRequestError, match=says):
        await memory.search(APP, query, scopes=SCOPE)


async def test_bad_scopes_kinds_limits_and_items_are_refused_and_nothing_is_written(
    memory: MemoryService,
) -> None:
    await memory.add(experience("a good rule"))
    with pytest.raises(InvalidRequestError, match="scope"):
        await memory.search(APP, "rule", scopes="agents:triage")
    with pytest.raises(InvalidRequestError, match="kinds"):
        await memory.search(APP, "rule", scopes=SCOPE, kinds=["rules"])  # type: ignore[list-item]
    with pytest.raises(InvalidRequestError, match="limit"):
        await memory.search(APP, "rule", scopes=SCOPE, limit=0)
    with pytest.raises(ValueError, match="rule"):  # the model refuses it when built
        experience("x" * (MAX_TEXT_CHARS + 1))
    unchecked = Experience.model_construct(
        app_name=APP, scope=SCOPE, condition="", rule="x" * (MAX_TEXT_CHARS + 1)
    )
    with pytest.raises(InvalidRequestError, match="rule"):  # and add() checks again
        await memory.add(unchecked)
    with pytest.raises(InvalidRequestError, match="control character"):
        await memory.add(experience("bad \x07 rule"))
    with pytest.raises(InvalidRequestError, match="scope"):
        await memory.add(experience("a rule", scope="everyone"))
    with pytest.raises(InvalidRequestError, match="words"):
        await memory.add(experience("..."))
    with pytest.raises(InvalidRequestError, match="memory item ID"):
        await memory.get(APP, SCOPE, "not-an-id")
    assert await rules(memory, "rule") == ["a good rule"]
    assert len(await memory.items(APP, SCOPE)) == 1


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="max_items_per_scope"):
        memory_from_url("memory://", max_items_per_scope=0)
    with pytest.raises(ConfigurationError, match="scheme"):
        memory_from_url("mysql://localhost/db")
    with pytest.raises(ConfigurationError, match="text_search_config"):
        memory_from_url("postgresql://localhost/db", text_search_config="x; DROP TABLE")


# --- embeddings ------------------------------------------------------------------------------


async def test_with_an_embedder_search_ranks_by_similarity(make_memory: MakeMemory) -> None:
    with EmbeddingServer() as server:
        embedder = OpenAIEmbedder("bag-of-words", base_url=server.url, api_key="sk-test")
        memory = await make_memory(embedder=embedder, min_similarity=0.1)
        try:
            await memory.add(experience("Restart the payment worker when invoices are stuck"))
            await memory.add(experience("Reset passwords from the admin console"))
            await memory.add(Skill(app_name=APP, scope=SCOPE, name="payments", content="worker"))
            hits = await memory.search(
                APP, "payment worker stuck", scopes=SCOPE, kinds=["experience"]
            )
        finally:
            await embedder.close()
        assert [getattr(h.item, "rule", "") for h in hits] == [
            "Restart the payment worker when invoices are stuck"
        ]
        assert 0.1 <= hits[0].score <= 1.0
        # Every add and the query went through the endpoint.
        assert len(server.calls) == 4 and server.calls[-1] == ["payment worker stuck"]


# --- backend specifics ---------------------------------------------------------------------------


@pytest.mark.redis
async def test_redis_reports_a_corrupt_item(redis_url: str) -> None:
    memory = memory_from_url(redis_url)
    client = aioredis.Redis.from_url(redis_url)
    try:
        stored = await memory.add(experience("Keep receipts for refunds"))
        items_key = f"agent-runner:memory:{{{APP}/{SCOPE}}}:items"
        await client.hset(items_key, stored.id, b"{not json")
        with pytest.raises(MemoryBackendError, match="corrupt"):
            await memory.search(APP, "receipts", scopes=SCOPE)
    finally:
        await client.aclose()
        await memory.close()


async def test_app_scope_is_shared(memory: MemoryService) -> None:
    await memory.add(experience("Office closes at 6pm", scope=APP_SCOPE))
    assert await rules(memory, "office closes", scopes=APP_SCOPE) == ["Office closes at 6pm"]


# --- which words are scored (memory and Redis) ----------------------------------------------


def test_a_large_scope_skips_very_common_query_words_when_rarer_ones_are_there() -> None:
    frequency = {"printer": 40, "the_common": 450, "offline": 120}
    # A small scope scores every word it holds.
    assert scored_terms(["printer", "the_common", "gone"], frequency, 499) == [
        "printer", "the_common"
    ]  # fmt: skip
    # A large one leaves out words held by more than a fifth of its items...
    assert scored_terms(["printer", "the_common", "offline"], frequency, 1000) == [
        "printer", "offline"
    ]  # fmt: skip
    # ...unless the query has nothing rarer: then its rarest word is scored.
    assert scored_terms(["the_common", "offline"], {**frequency, "offline": 300}, 1000) == [
        "offline"
    ]
    assert scored_terms(["gone"], frequency, 1000) == []
