"""The HTTP gateway end to end: real ``agent-runner serve`` processes, a real run worker, Redis
and PostgreSQL, through a real HTTP client; the model is the scripted OpenAI-compatible server.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from runner_core.testing import ScriptedModelServer
from tests.celery_workers import StartWorker, read_events
from tests.gateway_support import (
    ALICE_KEY,
    BOB_KEY,
    OPERATOR_KEY,
    WEBHOOK_SECRET,
    GatewayProcess,
    StartGateway,
    WebhookReceiver,
    events_of,
    read_run,
    sse_frames,
)

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.celery]

def submit(gateway: GatewayProcess, key: str, **fields: Any) -> dict[str, Any]:
    body = {"app_name": "testkit", "session_id": "s1", "message": "hi", **fields}
    with gateway.client(key) as http:
        response = http.post("/v1/runs", json=body)
    assert response.status_code == 202, response.text
    answer: dict[str, Any] = response.json()
    return answer


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [event["seq"] for event in events]


def release(tmp_path: Path, label: str) -> None:
    (tmp_path / label).touch()


# --- submit and stream ---------------------------------------------------------------------


def test_a_run_submitted_over_http_streams_every_event_once_and_lands_in_the_history(
    gateway: GatewayProcess, model_server: ScriptedModelServer, redis_url: str
) -> None:
    # Given a model that streams its answer in pieces
    model_server.add_text("Hello from the gateway.", chunks=6)

    # When alice submits a run and reads its events
    run = submit(gateway, ALICE_KEY, session_id="s-stream")
    assert run["user_id"] == "alice" and run["session_id"] == "s-stream"
    with gateway.client(ALICE_KEY) as http:
        frames = read_run(http, run["invocation_id"])
        status = http.get(f"/v1/runs/{run['invocation_id']}").json()
        history = http.get("/v1/sessions/testkit/s-stream").json()

    # Then every event comes once, in seq order, its SSE id is its seq, and it ends with the
    # completion: exactly what the run's Redis stream holds
    events = events_of(frames)
    assert frames[0] == {"retry": "2000"}  # the reconnection delay the client should use
    assert [int(frame["id"]) for frame in frames[1:]] == seqs(events)
    assert events == read_events(redis_url, run["invocation_id"])
    assert seqs(events) == list(range(len(events)))
    assert sum(e["type"] == "message.delta" for e in events) >= 2
    assert events[-1]["type"] == "runner.completion" and events[-1]["status"] == "completed"
    assert events[-1]["final_text"] == "Hello from the gateway."
    # And the run's status and the session's history (from PostgreSQL) say the same
    assert status["status"] == "completed" and status["session_id"] == "s-stream"
    texts = [e["message"]["content"] for e in history["events"] if e["type"] == "message"]
    assert texts == ["hi", "Hello from the gateway."]


def test_a_client_that_disconnects_resumes_on_another_gateway_without_a_gap(
    start_gateway: StartGateway,
    worker: Any,
    model_server: ScriptedModelServer,
    redis_url: str,
    tmp_path: Path,
) -> None:
    # Given two gateway instances and a run that waits in a tool until the test lets it go
    first, second = start_gateway(), start_gateway()
    model_server.add_tool_calls([("call_hold", "hold", {"label": "go"})])
    model_server.add_text("Done after the hold.", chunks=5)
    run = submit(first, ALICE_KEY, session_id="s-resume")
    invocation_id = run["invocation_id"]

    # When the client reads from the first instance until the tool call, sees the quiet
    # stream kept alive, and disconnects
    seen: list[dict[str, Any]] = []
    keepalives = 0
    with (
        first.client(ALICE_KEY) as http,
        http.stream("GET", f"/v1/runs/{invocation_id}/events") as response,
    ):
        for frame in sse_frames(response):
            if "comment" in frame:
                keepalives += 1
                if (tmp_path / "go.held").exists():
                    break  # the run waits in the tool: nothing more can come now
            elif "id" in frame:
                seen.append(frame["data"])
    assert keepalives >= 1
    assert any(e["type"] == "message" and e["message"].get("tool_calls") for e in seen)

    # And it resumes on the second instance with Last-Event-ID once the run goes on
    release(tmp_path, "go")
    with second.client(ALICE_KEY) as http:
        rest = events_of(read_run(http, invocation_id, **{"Last-Event-ID": str(seen[-1]["seq"])}))

    # Then together they are the run's events, each exactly once
    assert seen + rest == read_events(redis_url, invocation_id)
    assert seqs(seen + rest) == list(range(len(seen) + len(rest)))
    assert rest[-1]["type"] == "runner.completion" and rest[-1]["status"] == "completed"

    # And a client that already has the completion is told there is nothing more (204)
    with second.client(ALICE_KEY) as http:
        done = http.get(
            f"/v1/runs/{invocation_id}/events", headers={"Last-Event-ID": str(rest[-1]["seq"])}
        )
    assert done.status_code == 204


def test_resuming_from_before_what_the_capped_stream_holds_says_reset_never_a_silent_gap(
    gateway: GatewayProcess, model_server: ScriptedModelServer, redis_url: str
) -> None:
    # Given a finished run whose stream was trimmed to its last 3 events (as MAXLEN does)
    model_server.add_text("A long answer.", chunks=8)
    run = submit(gateway, ALICE_KEY, session_id="s-cap")
    invocation_id = run["invocation_id"]
    with gateway.client(ALICE_KEY) as http:
        everything = events_of(read_run(http, invocation_id))
    client = redis.Redis.from_url(redis_url)
    try:
        client.xtrim(f"agent-runner:stream:{invocation_id}", maxlen=3, approximate=False)
    finally:
        client.close()

    # When a client resumes after seq 1
    with gateway.client(ALICE_KEY) as http:
        frames = read_run(http, invocation_id, **{"Last-Event-ID": "1"})

    # Then it is first told that events 2.. are gone and where to reload the history, then
    # gets what the stream still holds
    reset = frames[1]
    assert reset["event"] == "reset" and "id" not in reset
    first_held = everything[-3]["seq"]
    assert reset["data"] == {
        "reason": "trimmed",
        "missed_from_seq": 2,
        "first_seq": first_held,
        "history": "/v1/sessions/testkit/s-cap",
    }
    assert events_of(frames[2:]) == everything[-3:]


# --- cancel and confirm --------------------------------------------------------------------


def test_a_run_is_cancelled_over_http(
    gateway: GatewayProcess, model_server: ScriptedModelServer
) -> None:
    # Given a run whose model never answers
    model_server.add_hang()
    run = submit(gateway, ALICE_KEY, session_id="s-cancel")
    invocation_id = run["invocation_id"]

    with gateway.client(ALICE_KEY) as http:
        # When alice cancels it once it has started
        with http.stream("GET", f"/v1/runs/{invocation_id}/events") as response:
            frames = sse_frames(response)
            first = next(f for f in frames if "id" in f)
            cancel = http.post(f"/v1/runs/{invocation_id}/cancel")
            rest = [f["data"] for f in frames if "id" in f]
        again = http.post(f"/v1/runs/{invocation_id}/cancel")

    # Then the request is accepted and the run ends cancelled
    assert cancel.status_code == 202 and cancel.json()["cancel_requested"] is True
    assert first["data"]["seq"] == 0
    assert rest[-1]["type"] == "runner.completion" and rest[-1]["status"] == "cancelled"
    # And a second cancel says how it ended
    assert again.status_code == 200
    assert again.json()["cancel_requested"] is False and again.json()["status"] == "cancelled"


def test_a_paused_run_is_confirmed_over_http(
    gateway: GatewayProcess, model_server: ScriptedModelServer
) -> None:
    # Given a run paused for the confirmation of a refund
    model_server.add_tool_calls([("call_refund", "refund", {"amount": 5})])
    run = submit(gateway, ALICE_KEY, session_id="s-confirm", message="refund me")
    with gateway.client(ALICE_KEY) as http:
        paused = events_of(read_run(http, run["invocation_id"]))
        assert paused[-1]["status"] == "paused"
        assert [c["id"] for c in paused[-2]["requested_confirmations"]] == ["call_refund"]

        # When bob tries to answer it, and then alice approves it
        model_server.add_text("Refunded 5.")
        url = f"/v1/runs/{run['invocation_id']}/confirmations"
        answer = {"tool_confirmations": {"call_refund": True}}
        with_bobs_key = http.post(url, json=answer, headers={"Authorization": f"Bearer {BOB_KEY}"})
        confirmed = http.post(url, json=answer)
        assert confirmed.status_code == 202, confirmed.text
        second = confirmed.json()
        events = events_of(read_run(http, second["invocation_id"]))
        # And alice answers the finished one again
        stale = http.post(f"/v1/runs/{second['invocation_id']}/confirmations", json=answer)

    # Then bob is told there is no such run, and alice's answer runs the refund on the same
    # session
    assert with_bobs_key.status_code == 404
    assert second["session_id"] == "s-confirm" and second["user_id"] == "alice"
    result = next(e for e in events if e["type"] == "tool.result")
    assert result["message"]["content"] == "refunded 5"
    assert events[-1]["status"] == "completed" and events[-1]["final_text"] == "Refunded 5."
    # And a run that is not paused cannot be confirmed
    assert stale.status_code == 409 and "not paused" in stale.json()["error"]["message"]


# --- keys ----------------------------------------------------------------------------------


def test_a_key_acts_only_on_its_own_users_runs_and_sessions(
    gateway: GatewayProcess, model_server: ScriptedModelServer
) -> None:
    # Given a finished run of alice's
    model_server.add_text("private answer")
    run = submit(gateway, ALICE_KEY, session_id="s-private")
    invocation_id = run["invocation_id"]
    with gateway.client(ALICE_KEY) as http:
        read_run(http, invocation_id)

    with gateway.client(BOB_KEY) as bob:
        # When bob asks for it every way he can
        answers = [
            bob.get(f"/v1/runs/{invocation_id}"),
            bob.get(f"/v1/runs/{invocation_id}/events"),
            bob.post(f"/v1/runs/{invocation_id}/cancel"),
            bob.get("/v1/sessions/testkit/s-private"),
        ]
        unknown = bob.get("/v1/runs/00000000-0000-4000-8000-000000000000")
        # And tries to submit as alice
        as_alice = bob.post(
            "/v1/runs",
            json={"app_name": "testkit", "user_id": "alice", "session_id": "s", "message": "x"},
        )

    # Then every answer is 404, as for an ID nobody knows, and nothing of alice's leaks
    for answer in answers:
        assert answer.status_code == 404, answer.text
        assert "private answer" not in answer.text
    assert unknown.status_code == 404
    assert answers[0].json()["error"]["message"] == unknown.json()["error"]["message"].replace(
        "00000000-0000-4000-8000-000000000000", invocation_id
    )
    assert as_alice.status_code == 422 and "user_id" in as_alice.json()["error"]["message"]

    # And the operator key reads alice's run, naming the user for her session
    with gateway.client(OPERATOR_KEY) as ops:
        assert ops.get(f"/v1/runs/{invocation_id}").json()["user_id"] == "alice"
        history = ops.get("/v1/sessions/testkit/s-private", params={"user_id": "alice"})
        no_user = ops.get("/v1/sessions/testkit/s-private")
    assert history.status_code == 200 and history.json()["user_id"] == "alice"
    assert no_user.status_code == 422 and "user_id is required" in no_user.text

    # And without a key, or with a wrong one, nothing is served
    with gateway.client() as anonymous:
        assert anonymous.get(f"/v1/runs/{invocation_id}").status_code == 401
        wrong = anonymous.get(
            f"/v1/runs/{invocation_id}", headers={"X-API-Key": "not-a-key-0123456789"}
        )
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "unauthorized"


def test_bad_requests_are_refused_with_a_json_error_naming_the_problem(
    gateway: GatewayProcess,
) -> None:
    with gateway.client(ALICE_KEY) as http:
        not_json = http.post("/v1/runs", content=b"{nope", headers={"Content-Type": "x"})
        an_array = http.post("/v1/runs", json=["testkit"])
        missing = http.post("/v1/runs", json={"app_name": "testkit", "message": "hi"})
        unknown = http.post(
            "/v1/runs",
            json={"app_name": "testkit", "session_id": "s", "message": "hi", "colour": "red"},
        )
        wrong_type = http.post(
            "/v1/runs", json={"app_name": "testkit", "session_id": "s", "message": "hi",
                              "resume": "yes"},
        )  # fmt: skip
        too_big = http.post("/v1/runs", content=b"x" * (2 << 20))
        bad_webhook = http.post(
            "/v1/runs",
            json={"app_name": "testkit", "session_id": "s", "message": "hi",
                  "webhook_url": "ftp://example.com/hook"},
        )  # fmt: skip
        bad_position = http.get(
            "/v1/runs/00000000-0000-4000-8000-000000000000/events",
            headers={"Last-Event-ID": "seven"},
        )
        bad_id = http.get("/v1/runs/not%20an%20id")
        no_route = http.get("/v2/nothing")

    def error(response: Any) -> tuple[int, str, str]:
        body = response.json()["error"]
        return response.status_code, body["type"], body["message"]

    assert error(not_json)[:2] == (400, "bad_body") and "not valid JSON" in error(not_json)[2]
    assert error(an_array)[:2] == (400, "bad_body") and "JSON object" in error(an_array)[2]
    assert error(missing)[:2] == (422, "invalid_request")
    assert "missing session_id" in error(missing)[2]
    assert error(unknown)[0] == 422 and "colour" in error(unknown)[2]
    assert error(wrong_type)[0] == 422 and "resume" in error(wrong_type)[2]
    assert error(too_big)[:2] == (413, "body_too_large")
    assert "AGENT_RUNNER_GATEWAY_MAX_BODY_BYTES" in error(too_big)[2]
    assert error(bad_webhook)[0] == 422 and "http://" in error(bad_webhook)[2]
    # (an unknown run is not found before its position is read)
    assert error(bad_position)[0] == 404
    assert error(bad_id)[0] == 422 and "invocation_id" in error(bad_id)[2]
    assert error(no_route)[:2] == (404, "not_found")


def test_the_openapi_description_names_the_routes_and_the_submit_fields(
    gateway: GatewayProcess,
) -> None:
    with gateway.client() as anonymous:
        spec = anonymous.get("/openapi.json").json()
    assert {"/v1/runs", "/v1/runs/{invocation_id}/events", "/v1/runs/{invocation_id}/cancel",
            "/v1/runs/{invocation_id}/confirmations",
            "/v1/sessions/{app_name}/{session_id}"} <= set(spec["paths"])  # fmt: skip
    body = spec["paths"]["/v1/runs"]["post"]["requestBody"]["content"]["application/json"]
    properties = body["schema"]["properties"]
    assert {"app_name", "session_id", "message", "tool_confirmations", "webhook_url"} <= set(
        properties
    )
    assert "user_id" not in body["schema"]["required"]


# --- webhooks ------------------------------------------------------------------------------


def test_a_webhook_is_signed_and_redelivered_after_the_receiver_first_fails(
    start_gateway: StartGateway,
    worker: Any,
    model_server: ScriptedModelServer,
    tmp_path: Path,
) -> None:
    receiver = WebhookReceiver(statuses=[500])
    try:
        # Given a receiver that fails the first call, and a run that waits in a tool
        model_server.add_tool_calls([("call_hold", "hold", {"label": "hook"})])
        model_server.add_text("hooked")
        first = start_gateway()
        run = submit(first, ALICE_KEY, session_id="s-hook", webhook_url=receiver.url)
        # When the gateway that took the run is killed, and then the run completes
        while not (tmp_path / "hook.held").exists():
            time.sleep(0.02)
        first.close()
        release(tmp_path, "hook")
        requests = receiver.wait_for(2)
    finally:
        receiver.close()
    gateway = start_gateway()

    # Then the receiver was called again, with the same delivery ID and a valid signature
    (first_headers, first_body), (headers, body) = requests
    assert first_body == body
    delivery = json.loads(body)
    assert headers["X-Agent-Runner-Delivery"] == first_headers["X-Agent-Runner-Delivery"]
    assert headers["X-Agent-Runner-Delivery"] == delivery["delivery_id"]
    expected = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Agent-Runner-Signature"], expected)
    assert delivery["invocation_id"] == run["invocation_id"] and delivery["user_id"] == "alice"
    assert delivery["status"] == "completed"
    assert delivery["completion"]["final_text"] == "hooked"
    # And the run's status comes to say it was delivered on the second attempt
    webhook = wait_for_webhook(gateway, run["invocation_id"])
    assert webhook["status"] == "delivered" and webhook["attempts"] >= 2
    assert webhook["delivery_id"] == delivery["delivery_id"]


def test_a_webhook_to_a_private_address_is_refused_unless_allowed(
    start_gateway: StartGateway, worker: Any
) -> None:
    # Given a gateway that keeps the default: public addresses only
    strict = start_gateway(AGENT_RUNNER_WEBHOOK_ALLOW_PRIVATE="false")
    for url in ("http://127.0.0.1:9/hook", "http://169.254.169.254/latest/meta-data",
                "http://[::1]/hook", "http://10.0.0.7/hook"):  # fmt: skip
        # When a run names a webhook on a private or loopback address
        with strict.client(ALICE_KEY) as http:
            response = http.post(
                "/v1/runs",
                json={"app_name": "testkit", "session_id": "s", "message": "hi",
                      "webhook_url": url},
            )  # fmt: skip
        # Then the run is refused before it is sent, naming the reason and the setting
        assert response.status_code == 422, url
        message = response.json()["error"]["message"]
        assert "not a public address" in message and "ALLOW_PRIVATE" in message


def wait_for_webhook(gateway: GatewayProcess, invocation_id: str) -> dict[str, Any]:
    """The run's webhook state once it is no longer pending (the deadline only keeps a broken
    delivery from hanging the suite)."""
    deadline = time.monotonic() + 60
    with gateway.client(ALICE_KEY) as http:
        while True:
            webhook: dict[str, Any] = http.get(f"/v1/runs/{invocation_id}").json()["webhook"]
            if webhook["status"] != "pending" or time.monotonic() > deadline:
                return webhook
            time.sleep(0.05)


def test_a_worker_checks_the_address_again_before_it_delivers(
    start_gateway: StartGateway,
    start_worker: StartWorker,
    stack_env: dict[str, str],
    model_server: ScriptedModelServer,
) -> None:
    # Given a gateway that accepts a loopback webhook, but workers that allow public addresses
    # only (as when a name resolved to a public address at submit and to a private one later)
    start_worker(**{**stack_env, "AGENT_RUNNER_WEBHOOK_ALLOW_PRIVATE": "false"})
    lenient = start_gateway()
    receiver = WebhookReceiver()
    try:
        model_server.add_text("done")
        # When a run with that webhook completes
        run = submit(lenient, ALICE_KEY, session_id="s-rebind", webhook_url=receiver.url)
        webhook = wait_for_webhook(lenient, run["invocation_id"])
    finally:
        receiver.close()

    # Then the worker refused to call it, and said why
    assert webhook["status"] == "refused" and webhook["attempts"] == 1
    assert "not a public address" in webhook["last_error"]
    assert receiver.requests == []
