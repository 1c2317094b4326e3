"""Artifacts in runs: tools and agents save through their context, events record the versions,
the model loads artifacts with the built-in tool, fences hold, deleting a session cleans up."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from runner_core import (
    BaseAgent,
    InMemoryArtifactService,
    InvocationContext,
    LLMAgent,
    Runner,
    ToolContext,
    load_artifacts,
    tool,
)
from runner_core.artifact_tool import MAX_LOADED_CHARS
from runner_core.errors import FencedError
from runner_core.events import Event, MessageEvent
from runner_core.memory_sessions import InMemorySessionService
from runner_core.messages import Message
from runner_core.testing import FakeModel

APP = "reports"
USER = "alice"


@tool
async def write_report(title: str, context: ToolContext) -> str:
    """Write the report and the user's last title."""
    version = await context.save_artifact("report.md", f"# {title}\n")
    await context.save_artifact("user:last-title.txt", title)
    return f"saved report.md version {version}"


@tool
async def add(a: int, b: int) -> int:
    """Add."""
    return a + b


def _runner(model: FakeModel, store: InMemoryArtifactService | None, **kw: object) -> Runner:
    agent = LLMAgent("writer", model=model, tools=[write_report, add, load_artifacts])
    return Runner(APP, agent, artifact_service=store, **kw)  # type: ignore[arg-type]


async def _events(runner: Runner, session_id: str, text: str, **kw: object) -> list[Event]:
    return [e async for e in runner.run(USER, session_id, text, **kw)]  # type: ignore[arg-type]


async def test_a_tools_saves_are_recorded_on_its_result_and_nothing_else_carries_a_delta() -> None:
    store = InMemoryArtifactService()
    model = FakeModel()
    model.add_tool_calls([("c1", "write_report", {"title": "Q1"}), ("c2", "add", {"a": 1, "b": 2})])
    model.add_text("done")

    events = await _events(_runner(model, store), "s1", "write it")

    results = {e.message.tool_call_id: e for e in events if e.type == "tool.result"}
    assert results["c1"].artifact_delta == {"report.md": 0, "user:last-title.txt": 0}
    assert results["c2"].artifact_delta is None
    wire = [json.loads(e.to_json()) for e in events]
    assert [("artifact_delta" in w) for w in wire if w["type"] == "tool.result"] == [True, False]
    assert not any("artifact_delta" in w for w in wire if w["type"] != "tool.result")
    saved = await store.load_artifact(APP, USER, "s1", "report.md")
    assert saved is not None and saved.text() == "# Q1\n"


async def test_the_model_loads_artifacts_into_the_conversation() -> None:
    store = InMemoryArtifactService()
    await store.save_artifact(APP, USER, "s1", "notes.md", "the notes")
    await store.save_artifact(APP, USER, "s1", "user:photo.png", b"\x89PNG...")
    await store.save_artifact(APP, USER, "s1", "huge.txt", "x" * (MAX_LOADED_CHARS + 5))
    model = FakeModel()
    model.add_tool_calls([("c1", "load_artifacts", {"names": []})])
    model.add_tool_calls(
        [("c2", "load_artifacts", {"names": ["notes.md", "user:photo.png", "huge.txt", "gone"]})]
    )
    model.add_tool_calls([("c3", "load_artifacts", {"names": ["../escape"]})])
    model.add_text("read them")

    events = await _events(_runner(model, store), "s1", "read my files")

    outputs = {e.message.tool_call_id: e.message.text for e in events if e.type == "tool.result"}
    assert outputs["c1"] == "Available artifacts: 'huge.txt', 'notes.md', 'user:photo.png'."
    loaded = outputs["c2"]
    assert "artifact 'notes.md' (version 0, text/markdown; charset=utf-8, 9 bytes):\nthe notes" in (
        loaded
    )
    assert "'user:photo.png' (version 0, image/png, 7 bytes): binary content" in loaded
    assert f"first {MAX_LOADED_CHARS} characters (5 more not shown)" in loaded
    assert "artifact 'gone' does not exist. Available artifacts:" in loaded
    assert "'..' as a path segment" in outputs["c3"]
    # What the model read is in its next request, as the tool's answer.
    assert model.requests[2]["messages"][-1]["content"] == loaded


async def test_without_a_store_a_tool_gets_an_error_that_says_how_to_configure_one() -> None:
    model = FakeModel()
    model.add_tool_calls([("c1", "write_report", {"title": "Q1"})])
    model.add_text("could not")

    events = await _events(_runner(model, None), "s1", "write it")

    (result,) = [e for e in events if e.type == "tool.result"]
    assert result.error is not None
    assert "no artifact store is configured" in result.error.message
    assert "artifact_service" in result.error.message
    assert events[-1].type == "runner.completion" and events[-1].status == "completed"


async def test_a_run_whose_fence_is_older_than_the_artifact_stores_stops_quietly() -> None:
    store = InMemoryArtifactService()
    await store.take_fence(APP, USER, "s1", 5)  # a newer owner holds the session's artifacts
    model = FakeModel()
    model.add_tool_calls([("c1", "write_report", {"title": "zombie"})])

    stream = _runner(model, store).run(USER, "s1", "write it", fence=4)
    with pytest.raises(FencedError):
        async for _ in stream:
            pass

    assert await store.list_artifact_names(APP, USER, "s1") == []
    assert model.requests == []  # stopped before the agent ran


async def test_a_tool_of_a_run_that_lost_its_session_mid_call_saves_nothing() -> None:
    store = InMemoryArtifactService()
    sessions = InMemorySessionService()

    @tool
    async def partitioned(context: ToolContext) -> str:
        """The newer owner takes the session while this call runs."""
        await sessions.take_fence(APP, USER, "s1", 2)
        await store.take_fence(APP, USER, "s1", 2)
        await context.save_artifact("report.md", "late")
        return "saved"

    model = FakeModel()
    model.add_tool_calls([("c1", "partitioned", {})])
    agent = LLMAgent("writer", model=model, tools=[partitioned])
    runner = Runner(APP, agent, session_service=sessions, artifact_service=store)

    with pytest.raises(FencedError):
        async for _ in runner.run(USER, "s1", "go", fence=1):
            pass

    assert await store.list_artifact_names(APP, USER, "s1") == []


async def test_deleting_a_session_deletes_its_artifacts_and_keeps_the_users() -> None:
    store = InMemoryArtifactService()
    model = FakeModel()
    model.add_tool_calls([("c1", "write_report", {"title": "Q1"})])
    model.add_text("done")
    runner = _runner(model, store)
    await _events(runner, "s1", "write it")

    await runner.delete_session(USER, "s1")

    assert await runner.session_service.get_session(APP, USER, "s1") is None
    assert await store.list_artifact_names(APP, USER, "s1") == ["user:last-title.txt"]


class Archivist(BaseAgent):
    """A custom agent that saves through ctx.artifacts and records what it saved."""

    async def run(self, ctx: InvocationContext) -> AsyncIterator[Event]:
        saved = await ctx.artifacts.save("archive.json", b"[]", content_type="application/json")
        yield ctx.message_event(
            self.name,
            Message.assistant("archived"),
            artifact_delta={saved.name: saved.version},
        )
        ctx.outcome.final_text = "archived"


async def test_a_custom_agent_saves_through_its_context_and_records_the_delta() -> None:
    store = InMemoryArtifactService()
    runner = Runner(APP, Archivist("archivist"), artifact_service=store)

    events = await _events(runner, "s1", "archive")

    (message,) = [e for e in events if isinstance(e, MessageEvent) and e.author == "archivist"]
    assert message.artifact_delta == {"archive.json": 0}
    stored = await runner.session_service.get_session(APP, USER, "s1")
    assert stored is not None
    assert [e.artifact_delta for e in stored.events if e.type == "message"] == [
        None,
        {"archive.json": 0},
    ]
    loaded = await store.load_artifact(APP, USER, "s1", "archive.json")
    assert loaded is not None and loaded.content_type == "application/json"


def test_a_runner_refuses_something_that_is_not_an_artifact_store() -> None:
    from runner_core.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="artifact_service must be an artifact store"):
        Runner(APP, LLMAgent("a", model=FakeModel()), artifact_service="memory://")  # type: ignore[arg-type]


async def test_an_agent_called_as_a_tool_hands_its_artifacts_to_the_callers_session() -> None:
    from runner_core import AgentTool

    store = InMemoryArtifactService()

    @tool
    async def draft(context: ToolContext) -> str:
        """Draft the text."""
        await context.save_artifact("draft.md", "first draft")
        await context.save_artifact("draft.md", "second draft")
        await context.save_artifact("user:style.txt", "terse")
        return "drafted"

    inner_model = FakeModel()
    inner_model.add_tool_calls([("i1", "draft", {})])
    inner_model.add_text("drafted it")
    drafter = LLMAgent("drafter", model=inner_model, tools=[draft], description="Drafts.")
    outer_model = FakeModel()
    outer_model.add_tool_calls([("o1", "drafter", {"request": "draft it"})])
    outer_model.add_text("done")
    runner = Runner(
        APP, LLMAgent("boss", model=outer_model, tools=[AgentTool(drafter)]), artifact_service=store
    )

    events = await _events(runner, "s1", "get a draft")

    (result,) = [e for e in events if e.type == "tool.result"]
    assert result.artifact_delta == {"draft.md": 0}
    assert await store.list_artifact_names(APP, USER, "s1") == ["draft.md", "user:style.txt"]
    adopted = await store.load_artifact(APP, USER, "s1", "draft.md")
    assert adopted is not None and adopted.text() == "second draft"
    assert adopted.content_type == "text/markdown; charset=utf-8"


async def test_a_tool_call_run_again_gets_its_first_versions_back() -> None:
    from runner_core.artifacts import ArtifactScope

    store = InMemoryArtifactService()

    def attempt() -> ToolContext:
        scope = ArtifactScope(store, app_name=APP, user_id=USER, session_id="s1")
        return ToolContext(
            app_name=APP,
            user_id=USER,
            session_id="s1",
            invocation_id="inv-1",
            tool_call_id="call-1",
            state={},
            artifacts=scope,
        )

    first, rerun = attempt(), attempt()  # the worker died after the first attempt saved
    assert await first.save_artifact("report.md", "draft") == 0
    assert await first.save_artifact("report.md", "final") == 1
    assert await rerun.save_artifact("report.md", "draft") == 0
    assert await rerun.save_artifact("report.md", "final") == 1
    assert rerun.artifact_delta == {"report.md": 1}
    # Different bytes, or another call, are new saves.
    assert await rerun.save_artifact("report.md", "final, edited") == 2
    other_call = attempt()
    other_call.tool_call_id = "call-2"
    assert await other_call.save_artifact("report.md", "draft") == 3
    assert len(await store.list_versions(APP, USER, "s1", "report.md")) == 4
