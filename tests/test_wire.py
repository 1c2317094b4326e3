"""The wire names and limits: one owner (runner_core/wire.py), values that never drift.

Deployed producers, workers of the previous release and subscribers in other languages depend
on these values byte for byte, so the expected values below are written out, not computed.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner_core import wire
from runner_core.errors import InvalidRequestError
from runner_core.session import validate_identifier

ROOT = Path(__file__).resolve().parent.parent
WIRE = ROOT / "runner_core" / "wire.py"
#: What a producer, worker or client is made of (tests, bench and docs may spell the names).
SCANNED = [
    *sorted((ROOT / "runner_core").rglob("*.py")),
    *sorted((ROOT / "workers").rglob("*.py")),
    *sorted((ROOT / "session_backends").rglob("*.py")),
    ROOT / "celeryconfig.py",
]
#: Strings that are wire values when they stand alone (task and queue names).
WHOLE = {
    "agent_runner.submit_run": "the run task name",
    "agent_runner.summarize_session": "the summary task name",
    "runs": "the run queue name",
    "summary.": "the summary queue prefix",
}
#: Pieces of key and channel names, and of the ID pattern, found inside any string.
PIECES = {
    ":events:": "the events channel",
    ":stream:": "the event stream key",
    ":cancel:": "the cancel key",
    ":control:": "the control channel",
    ":owner:": "the owner key",
    ":attempts:": "the attempts key",
    ":submitted:": "the submitted key",
    ":locator:": "the locator key (Redis Cluster)",
    ":session:": "the session lease keys",
    ":session-lease-token": "the fencing token counter",
    ":summary-lease:": "the summary lease key",
    "[A-Za-z0-9._:@+=-]": "the ID pattern",
}
#: Look-alikes that are not wire names, with why. The Redis session store keeps its sessions
#: under its own key prefix, in its own layout (``{p}:session:{tag}/{sid}``,
#: ``{p}:events:{tag}/{sid}``): the store's schema, which only that module reads.
ALLOWED = {
    ("session_backends/redis.py", "the session lease keys"): "the session store's own keys",
    ("session_backends/redis.py", "the events channel"): "the session store's own keys",
}


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring nodes: prose that documents a name, not code that uses it."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _queue_literals(tree: ast.AST) -> list[ast.Constant]:
    """Literal queue names given to Celery: ``queue="..."`` and ``{"queue": "..."}``."""
    found: list[ast.Constant] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "queue":
            value = node.value
        elif isinstance(node, ast.Dict):
            value = next(
                (
                    v
                    for k, v in zip(node.keys, node.values, strict=True)
                    if isinstance(k, ast.Constant) and k.value == "queue"
                ),
                None,
            )
        else:
            continue
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            found.append(value)
    return found


def wire_strings(path: Path) -> list[tuple[int, str]]:
    """Where ``path``'s code (docstrings aside) spells a wire value: ``(line, what)``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skip = _docstrings(tree)
    hits: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str):
            continue
        if id(node) in skip:
            continue
        if node.value in WHOLE:
            hits.append((node.lineno, WHOLE[node.value]))
        hits.extend((node.lineno, what) for piece, what in PIECES.items() if piece in node.value)
    hits.extend((node.lineno, "a Celery queue literal") for node in _queue_literals(tree))
    return hits


# --- one owner ------------------------------------------------------------------------------


def test_the_scan_finds_every_wire_value_in_wire_py() -> None:
    # Given the scanner, When it reads runner_core/wire.py, Then it sees every value there:
    # the scan below cannot pass by looking for strings nobody writes.
    found = {what for _, what in wire_strings(WIRE)}
    assert found >= set(WHOLE.values()) | set(PIECES.values())


def test_the_scan_sees_names_built_by_hand(tmp_path: Path) -> None:
    # Given code that builds wire names itself (a docstring may name them)
    path = tmp_path / "probe.py"
    path.write_text(
        '"""Sends ``agent_runner.submit_run`` to ``runs``."""\n'
        'KEY = f"{prefix}:stream:{invocation_id}"\n'
        'send_task("agent_runner.submit_run", queue="celery")\n'
        'ROUTES = {"x": {"queue": "runs"}}\n',
        encoding="utf-8",
    )
    # When it is scanned, Then each one is reported, the docstring is not
    assert sorted(wire_strings(path)) == [
        (2, "the event stream key"),
        (3, "a Celery queue literal"),
        (3, "the run task name"),
        (4, "a Celery queue literal"),
        (4, "the run queue name"),
    ]


def test_no_module_but_wire_py_spells_a_wire_value() -> None:
    # Given every module of the producer, the worker, the client and the stores
    assert WIRE in SCANNED and len(SCANNED) > 30
    # When they are scanned, Then only runner_core/wire.py spells a wire name
    offenders: list[str] = []
    allowed_seen: set[tuple[str, str]] = set()
    for path in SCANNED:
        if path == WIRE:
            continue
        relative = path.relative_to(ROOT).as_posix()
        for line, what in wire_strings(path):
            if (relative, what) in ALLOWED:
                allowed_seen.add((relative, what))
            else:
                offenders.append(f"{relative}:{line}: {what}")
    assert offenders == [], "use runner_core.wire instead:\n" + "\n".join(offenders)
    # And every look-alike allowed above still exists (else drop it from ALLOWED)
    assert allowed_seen == set(ALLOWED)


def test_the_old_homes_re_export_the_one_definition() -> None:
    import runner_core.session
    import workers.bus
    import workers.requests
    import workers.summary_routing

    assert runner_core.session.ID_RE is wire.ID_RE
    assert runner_core.session.MAX_ID_LENGTH == wire.MAX_ID_LENGTH
    assert workers.requests.SUBMIT_RUN is wire.SUBMIT_RUN
    assert workers.summary_routing.SUMMARIZE_SESSION is wire.SUMMARIZE_SESSION
    assert workers.summary_routing.summary_queue is wire.summary_queue
    assert workers.bus.DEFAULT_PREFIX == wire.DEFAULT_EVENTS_PREFIX
    assert workers.bus.STREAM_FIELD == wire.STREAM_FIELD
    for name in (
        "attempts_key",
        "cancel_key",
        "control_channel",
        "events_channel",
        "known_keys",
        "owner_key",
        "stream_key",
        "submitted_key",
    ):
        assert getattr(workers.bus, name) is getattr(wire, name), name


def test_the_tasks_are_registered_under_the_wire_names() -> None:
    # In a fresh process: importing the tasks here would bind them to this process's
    # configuration before the distributed tests set theirs (a result backend).
    code = (
        "import json, workers.summaries, workers.tasks\n"
        "from workers.app import app\n"
        "print(json.dumps([workers.tasks.submit_run.name,\n"
        "                  workers.summaries.summarize_session.name,\n"
        "                  app.conf.task_default_queue]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_RUNNER_")}
    shown = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(shown.stdout) == [
        wire.SUBMIT_RUN,
        wire.SUMMARIZE_SESSION,
        wire.DEFAULT_RUNS_QUEUE,
    ]


def test_the_settings_default_to_the_wire_values() -> None:
    from workers.settings import Settings

    settings = Settings.from_env({})
    assert settings.queue == wire.DEFAULT_RUNS_QUEUE
    assert settings.events_prefix == wire.DEFAULT_EVENTS_PREFIX
    assert settings.stream_maxlen == wire.DEFAULT_STREAM_MAXLEN
    assert settings.event_ttl_s == wire.DEFAULT_EVENT_TTL_S
    assert settings.max_message_chars == wire.DEFAULT_MAX_MESSAGE_CHARS


# --- the values -----------------------------------------------------------------------------


def test_task_and_queue_names() -> None:
    assert wire.SUBMIT_RUN == "agent_runner.submit_run"
    assert wire.SUMMARIZE_SESSION == "agent_runner.summarize_session"
    assert wire.DEFAULT_RUNS_QUEUE == "runs"
    assert wire.summary_queue_name(0) == "summary.0"
    assert wire.summary_queue_name(7) == "summary.7"


def test_summary_shards_are_stable_across_processes() -> None:
    # crc32 of the JSON of the session: the same on every producer, worker and Python version
    assert wire.summary_shard("demo", "alice", "s1", 8) == 2
    assert wire.summary_queue("demo", "alice", "s1", 8) == "summary.2"
    assert wire.summary_shard("demo", "alice", "s1", 1) == 0


@pytest.mark.parametrize("prefix", ["agent-runner", "tenant.b_2"])
def test_invocation_key_and_channel_names(prefix: str) -> None:
    inv = "3f2b6c1e-0000-4000-8000-000000000001"
    assert wire.events_channel(inv, prefix) == f"{prefix}:events:{inv}"
    assert wire.stream_key(inv, prefix) == f"{prefix}:stream:{inv}"
    assert wire.cancel_key(inv, prefix) == f"{prefix}:cancel:{inv}"
    assert wire.control_channel(inv, prefix) == f"{prefix}:control:{inv}"
    assert wire.owner_key(inv, prefix) == f"{prefix}:owner:{inv}"
    assert wire.attempts_key(inv, prefix) == f"{prefix}:attempts:{inv}"
    assert wire.submitted_key(inv, prefix) == f"{prefix}:submitted:{inv}"
    assert wire.known_keys(inv, prefix) == [
        f"{prefix}:stream:{inv}",
        f"{prefix}:attempts:{inv}",
        f"{prefix}:submitted:{inv}",
    ]


def test_the_default_prefix() -> None:
    assert wire.DEFAULT_EVENTS_PREFIX == "agent-runner"
    assert wire.stream_key("I") == "agent-runner:stream:I"
    assert wire.events_channel("I") == "agent-runner:events:I"
    assert wire.STREAM_FIELD == "event"
    assert wire.CANCEL_MESSAGE == "cancel"


def test_session_key_names() -> None:
    digest = wire.session_digest("demo", "alice", "s1")
    # 32 hex digits of the SHA-256 of '["demo", "alice", "s1"]': pinned, workers of every
    # release must find the same lease
    assert digest == "c5c6e71184d5ae2febc98fed0c9d1625"
    assert wire.session_digest("demo", "alice:s", "1") != wire.session_digest(
        "demo", "alice", "s:1"
    )
    for part in ("lease", "claim", "waiters", "waiters-seen", "fence"):
        assert wire.session_lock_key(digest, part, "p") == f"p:session:{digest}:{part}"
    assert wire.lease_token_key("p") == "p:session-lease-token"
    assert wire.summary_lease_key(digest, "p") == f"p:summary-lease:{digest}"


def test_limits_and_lifetimes() -> None:
    assert wire.MAX_ID_LENGTH == 128
    assert wire.DEFAULT_STREAM_MAXLEN == 10_000
    assert wire.DEFAULT_EVENT_TTL_S == 3600
    assert wire.DEFAULT_MAX_MESSAGE_CHARS == 100_000
    assert wire.CANCEL_TTL_S == 3600
    assert wire.OWNER_TTL_S == wire.SUBMITTED_TTL_S == wire.ATTEMPTS_TTL_S == 86_400
    assert (wire.DEFAULT_SUMMARY_SHARDS, wire.MAX_SUMMARY_SHARDS) == (8, 1024)


# --- the ID pattern -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "valid",
    [
        "a",
        "3f2b6c1e-8d4a-4b7e-9c1f-2a3b4c5d6e7f",
        "alice@example.com",
        "x.y_z:1+2=3-4",
        "A" * 128,
    ],
)
def test_valid_ids(valid: str) -> None:
    assert wire.ID_RE.fullmatch(valid)
    assert validate_identifier(valid, "user_id") == valid


@pytest.mark.parametrize(
    "invalid",
    ["", "A" * 129, "alice\n", "has space", "a/b", "a#b", "ünïcode", "tab\there", "a\x00"],
)
def test_invalid_ids(invalid: str) -> None:
    assert not wire.ID_RE.fullmatch(invalid)
    with pytest.raises(InvalidRequestError, match="user_id"):
        validate_identifier(invalid, "user_id")


def test_the_length_limit_is_named_in_the_error() -> None:
    with pytest.raises(InvalidRequestError, match="the limit is 128"):
        validate_identifier("A" * 129, "session_id")
