"""What runs leave behind, over the gateway: a run's trace and a session's artifacts, each
readable by its own user only (real gateway, worker, Redis and PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest

from runner_core.testing import ScriptedModelServer
from tests.gateway_support import ALICE_KEY, BOB_KEY, OPERATOR_KEY, GatewayProcess, read_run

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.celery]


@pytest.fixture
def finished_run(gateway: GatewayProcess, model_server: ScriptedModelServer) -> dict[str, Any]:
    """A run of alice's that saved the artifact ``report.md`` (twice) and finished."""
    model_server.add_tool_calls([("c1", "save_note", {"name": "report.md", "text": "draft"})])
    model_server.add_tool_calls([("c2", "save_note", {"name": "report.md", "text": "# Q3\nup"})])
    model_server.add_text("Saved the report.")
    with gateway.client(ALICE_KEY) as http:
        response = http.post(
            "/v1/runs", json={"app_name": "notes", "session_id": "s-notes", "message": "write"}
        )
        assert response.status_code == 202, response.text
        run: dict[str, Any] = response.json()
        frames = read_run(http, run["invocation_id"])
    assert frames[-1]["data"]["status"] == "completed", frames[-1]
    return run


def test_a_runs_trace_is_read_by_its_user_only(
    gateway: GatewayProcess, finished_run: dict[str, Any]
) -> None:
    invocation_id = finished_run["invocation_id"]
    # When alice, bob and the operator ask for the run's trace
    with gateway.client(ALICE_KEY) as alice, gateway.client(BOB_KEY) as bob:
        mine = alice.get(f"/v1/runs/{invocation_id}/trace")
        theirs = bob.get(f"/v1/runs/{invocation_id}/trace")
    with gateway.client(OPERATOR_KEY) as ops:
        operators = ops.get(f"/v1/runs/{invocation_id}/trace")

    # Then alice and the operator get the trace, with the tool calls as steps, and bob a 404
    assert mine.status_code == 200, mine.text
    trace = mine.json()
    assert trace["invocation_id"] == invocation_id and trace["user_id"] == "alice"
    tools = [step for step in trace["steps"] if step["kind"] == "tool_call"]
    assert len(tools) == 2
    assert operators.status_code == 200 and operators.json() == trace
    assert theirs.status_code == 404 and theirs.json()["error"]["type"] == "not_found"
    assert "Q3" not in theirs.text


def test_a_sessions_artifacts_are_listed_and_fetched_by_its_user_only(
    gateway: GatewayProcess, finished_run: dict[str, Any]
) -> None:
    base = "/v1/sessions/notes/s-notes/artifacts"
    with gateway.client(ALICE_KEY) as alice, gateway.client(BOB_KEY) as bob:
        # When alice lists, inspects and fetches the artifact her run saved
        names = alice.get(base).json()
        versions = alice.get(f"{base}/report.md/versions").json()
        latest = alice.get(f"{base}/report.md")
        first = alice.get(f"{base}/report.md", params={"version": 0})
        missing = alice.get(f"{base}/nothing.md")
        # And bob asks for the same session's
        bobs_names = bob.get(base).json()
        bobs_fetch = bob.get(f"{base}/report.md")

    # Then alice sees both versions and their bytes
    assert names["artifacts"] == ["report.md"] and names["user_id"] == "alice"
    assert [v["version"] for v in versions["versions"]] == [0, 1]
    assert latest.status_code == 200 and latest.content == b"# Q3\nup"
    assert latest.headers["X-Artifact-Version"] == "1"
    assert latest.headers["content-type"].startswith(versions["versions"][1]["content_type"])
    assert first.content == b"draft"
    assert missing.status_code == 404 and "nothing.md" in missing.json()["error"]["message"]
    # And bob's key finds nothing of hers: the same names are his own (empty) session's
    assert bobs_names["artifacts"] == [] and bobs_names["user_id"] == "bob"
    assert bobs_fetch.status_code == 404 and "Q3" not in bobs_fetch.text


def test_feedback_on_a_step_lands_in_the_trace_and_only_its_user_gives_it(
    gateway: GatewayProcess, finished_run: dict[str, Any]
) -> None:
    invocation_id = finished_run["invocation_id"]
    url = f"/v1/runs/{invocation_id}/feedback"
    with gateway.client(ALICE_KEY) as alice, gateway.client(BOB_KEY) as bob:
        steps = alice.get(f"/v1/runs/{invocation_id}/trace").json()["steps"]
        model_step = next(step["step_id"] for step in steps if step["kind"] == "model_call")
        feedback = {"step_id": model_step, "kind": "positive", "content": "Good report."}
        # When bob gives feedback on alice's run, and alice does
        by_bob = bob.post(url, json=feedback)
        given = alice.post(url, json=feedback)
        # And alice sends feedback that is wrong in three ways
        bad_kind = alice.post(url, json={**feedback, "kind": "meh"})
        no_step = alice.post(url, json={**feedback, "step_id": "model:999"})
        missing = alice.post(url, json={"kind": "positive", "colour": "red"})
        after = alice.get(f"/v1/runs/{invocation_id}/trace").json()["steps"]

    # Then bob's is refused as for an unknown run, and alice's is a feedback step of the trace
    assert by_bob.status_code == 404
    assert given.status_code == 201, given.text
    step_id = given.json()["feedback_step_id"]
    recorded = next(step for step in after if step["step_id"] == step_id)
    assert recorded["kind"] == "feedback" and recorded["parent_ids"] == [model_step]
    assert recorded["data"]["content"] == "Good report."
    assert sum(step["kind"] == "feedback" for step in after) == 1  # bob's wrote nothing
    # And each bad one is refused naming what is wrong, writing nothing
    assert bad_kind.status_code == 422 and "meh" in bad_kind.json()["error"]["message"]
    assert no_step.status_code == 422 and "model:999" in no_step.json()["error"]["message"]
    assert missing.status_code == 422
    assert "missing step_id, content" in missing.json()["error"]["message"]
    assert "'colour'" in missing.json()["error"]["message"]
