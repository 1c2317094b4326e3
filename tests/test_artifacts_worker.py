"""Artifacts through a real ``celery worker``: a tool saves an artifact on the worker, the
producer reads it back (client helpers and the CLI), from a file system with a Redis index and
from PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from runner_core.testing import ScriptedModelServer
from tests.celery_workers import ROOT, StartWorker, wait_for_completion
from workers.artifacts import ArtifactSettings, artifact_versions, list_artifacts, load_artifact

pytestmark = [pytest.mark.redis, pytest.mark.celery]

REPORT = "# Q3\n\nrevenue up\n"


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    full = {**os.environ, **env}
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", "artifact", *args],
        env=full,
        capture_output=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "store", ["files+redis", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_tool_on_a_worker_saves_an_artifact_that_the_producer_loads(
    store: str,
    start_worker: StartWorker,
    producer: Any,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    # Given a worker whose runs have an artifact store
    if store == "postgres":
        artifact_env = {"AGENT_RUNNER_ARTIFACT_URL": request.getfixturevalue("postgres_dsn")}
    else:
        artifact_env = {"AGENT_RUNNER_ARTIFACT_URL": f"file://{tmp_path}/artifacts"}
    with ScriptedModelServer() as model:
        model.add_tool_calls([("c1", "write_report", {"title": "Q3", "body": "revenue up"})])
        model.add_tool_calls([("c2", "load_artifacts", {"names": ["report.md"]})])
        model.add_text("The report is saved.")
        start_worker(
            AGENT_RUNNER_AGENTS="artkit=tests.artifact_agents:build_artkit",
            OPENAI_BASE_URL=model.url,
            **artifact_env,
        )
        for name, value in artifact_env.items():
            monkeypatch.setenv(name, value)
        session_id = f"s-{uuid.uuid4().hex[:8]}"

        # When a run's tool saves a report
        from workers.tasks import submit_run

        result = submit_run.delay("artkit", "alice", session_id, "Write the Q3 report.")
        events = wait_for_completion(redis_url, result.id)

        # Then the tool's result records the version, and the model read the report back
        assert events[-1]["status"] == "completed", events[-1]
        results = [e for e in events if e["type"] == "tool.result"]
        assert results[0]["artifact_delta"] == {"report.md": 0}
        assert "artifact_delta" not in results[1]
        assert REPORT in results[1]["message"]["content"]
        assert REPORT in model.requests[2]["messages"][-1]["content"]

    # And the producer loads it through the client helpers
    assert ArtifactSettings.from_env().url == artifact_env["AGENT_RUNNER_ARTIFACT_URL"]
    assert list_artifacts("artkit", "alice", session_id) == ["report.md"]
    loaded = load_artifact("artkit", "alice", session_id, "report.md")
    assert loaded is not None and loaded.text() == REPORT
    assert loaded.content_type == "text/markdown; charset=utf-8"
    (version,) = artifact_versions("artkit", "alice", session_id, "report.md")
    assert (version.version, version.size) == (0, len(REPORT.encode()))

    # And through the CLI
    env = {
        **artifact_env,
        "AGENT_RUNNER_REDIS_URL": redis_url,
        "AGENT_RUNNER_BROKER_URL": redis_url,
    }
    listed = _cli(env, "list", "artkit", "alice", session_id)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.decode().splitlines() == ["report.md"]
    got = _cli(env, "get", "artkit", "alice", session_id, "report.md", "--version", "0")
    assert got.returncode == 0, got.stderr
    assert got.stdout.decode() == REPORT
    out = tmp_path / "copy.md"
    saved = _cli(env, "get", "artkit", "alice", session_id, "report.md", "-o", str(out))
    assert saved.returncode == 0 and out.read_text() == REPORT
    versions = _cli(env, "versions", "artkit", "alice", session_id, "report.md")
    assert json.loads(versions.stdout.decode())["size"] == len(REPORT.encode())
    missing = _cli(env, "get", "artkit", "alice", session_id, "nope.md")
    assert missing.returncode == 1
    assert b"there is no artifact 'nope.md'" in missing.stderr
    bad = _cli(env, "get", "artkit", "alice", session_id, "../x")
    assert bad.returncode == 1 and b"'..' as a path segment" in bad.stderr


def test_bad_artifact_settings_name_the_variable(redis_url: str) -> None:
    from runner_core.errors import ConfigurationError

    base = {"AGENT_RUNNER_BROKER_URL": redis_url}
    with pytest.raises(ConfigurationError, match="AGENT_RUNNER_ARTIFACT_MAX_BYTES"):
        ArtifactSettings.from_env({**base, "AGENT_RUNNER_ARTIFACT_MAX_BYTES": "lots"})
    with pytest.raises(ConfigurationError, match="AGENT_RUNNER_ARTIFACT_URL"):
        ArtifactSettings.from_env({**base, "AGENT_RUNNER_ARTIFACT_URL": "/no/scheme"})
    with pytest.raises(ConfigurationError, match="AGENT_RUNNER_ARTIFACT_INDEX_URL"):
        ArtifactSettings.from_env(
            {
                **base,
                "AGENT_RUNNER_ARTIFACT_URL": "file:///tmp/x",
                "AGENT_RUNNER_ARTIFACT_INDEX_URL": "mysql://db",
            }
        )
    off = ArtifactSettings.from_env(base)
    assert off.url is None and off.index_url == redis_url
    with pytest.raises(ConfigurationError, match="set AGENT_RUNNER_ARTIFACT_URL"):
        off.open()


def test_a_tool_run_again_after_its_worker_died_adds_no_version(
    start_worker: StartWorker,
    producer: Any,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import redis

    from tests.artifact_agents import CRASH_COUNTER_KEY

    # Given a tool that saves a report and then, the first time, kills its worker
    artifact_env = {"AGENT_RUNNER_ARTIFACT_URL": f"file://{tmp_path}/artifacts"}
    with ScriptedModelServer() as model:
        model.add_tool_calls([("c1", "report_then_crash", {})])
        model.add_text("The report is saved.")
        env = {
            "AGENT_RUNNER_AGENTS": "artkit=tests.artifact_agents:build_artkit",
            "OPENAI_BASE_URL": model.url,
            **artifact_env,
        }
        first = start_worker(**env)
        from workers.tasks import submit_run

        session_id = f"s-{uuid.uuid4().hex[:8]}"
        result = submit_run.delay("artkit", "alice", session_id, "Write the crash report.")

        # When the worker dies mid-call and another one takes the run over
        deadline = time.monotonic() + 90  # only keeps a broken run from hanging the suite
        while first.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not first.is_alive(), "the tool did not kill its worker"
        start_worker(**env)
        events = wait_for_completion(redis_url, result.id, timeout=120)

    # Then the call ran twice, and the report has the one version the stored result names
    client = redis.Redis.from_url(redis_url)
    try:
        assert int(client.get(CRASH_COUNTER_KEY) or 0) == 2
    finally:
        client.close()
    assert events[-1]["status"] == "completed", events[-1]
    (stored,) = [e for e in events if e["type"] == "tool.result"]
    assert stored["artifact_delta"] == {"report.md": 0}
    for name, value in artifact_env.items():
        monkeypatch.setenv(name, value)
    assert [v.version for v in artifact_versions("artkit", "alice", session_id, "report.md")] == [0]
