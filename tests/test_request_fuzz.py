"""Any message sent to ``agent_runner.submit_run`` ends in a terminal event (issue 12, item 1).

Unit properties (hypothesis, derandomized): the run request over arbitrary JSON arguments is
either valid or an ``InvalidRequestError`` whose message is valid UTF-8; the task ID always maps
to an invocation ID that can name a stream and never to another valid ID; the failure events are
JSON for any input; every broker message, however broken, is one Celery can take (as it is or as
a stand-in). End to end: a seeded fuzz of ``send_task`` calls and raw broker messages against a
real worker: each ends with a ``runner.completion`` on its stream, the worker stays up, and a good
run completes afterwards.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.worker.request import Request
from celery.worker.strategy import hybrid_to_proto2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu import Connection
from kombu.message import Message

from runner_core.errors import ConfigurationError, InvalidRequestError, lone_surrogate
from runner_core.events import EventError, decode_event
from runner_core.session import ID_RE
from runner_core.testing import ScriptedModelServer
from tests.celery_workers import CeleryWorker, StartWorker, completions, read_events
from workers.execution import RunLabels, failure_events
from workers.requests import INVALID_TASK_ID_PREFIX, POSITIONAL_FIELDS, RunRequest, TaskID
from workers.task_messages import PROBLEM_HEADER, inspect_message, stand_in

FUZZ = settings(
    derandomize=True,
    deadline=None,
    max_examples=200,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- strategies -----------------------------------------------------------------------------

#: Any text, lone surrogates included (what a JSON "\udfff" escape decodes to).
TEXT = st.text(st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=12)
VALID_IDS = st.one_of(
    st.sampled_from(["assistant", "testkit", "alice", "s-1", "a:b@c.d"]),
    st.from_regex(ID_RE, fullmatch=True),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=10,
)
IDS = st.one_of(VALID_IDS, st.sampled_from(["", "alice\n", "u\udfff", "a b", "x" * 200]), TEXT)
MESSAGES = st.one_of(
    TEXT,
    st.sampled_from(["hi", "x" * 600]),
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "tool", 5]), "content": TEXT}
    ),
    JSON_VALUES,
)
TEXT_OK = st.text(min_size=1, max_size=20).filter(str.strip)  # a valid user message
OPTIONS: dict[str, st.SearchStrategy[Any]] = {
    "messages": st.lists(
        TEXT_OK
        | st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]), "content": TEXT_OK}),
        max_size=2,
    ),
    "resume": st.booleans(),
    "tool_confirmations": st.dictionaries(VALID_IDS, st.booleans(), max_size=2),
    "request_id": st.text(max_size=20),
    "multitask_strategy": st.sampled_from(["enqueue", "reject", "interrupt"]),
    "run_timeout_s": st.floats(min_value=0.001, max_value=1e6),
    "run_config": st.fixed_dictionaries(
        {},
        optional={
            "streaming": st.booleans(),
            "model": st.text(min_size=1, max_size=10),
            "generation": st.fixed_dictionaries({}, optional={"temperature": st.floats(0, 2)}),
            "max_iterations": st.integers(1, 50),
            "runtime_state": st.dictionaries(TEXT, JSON_VALUES, max_size=3),
        },
    ),
}
JUNK = st.one_of(IDS, MESSAGES, JSON_VALUES, st.sampled_from(["queue", -1.0, float("inf")]))


@st.composite
def task_arguments(draw: st.DrawFn) -> tuple[list[Any], dict[Any, Any]]:
    """``submit_run``'s args and kwargs as any client might send them: a valid request, then
    up to three mutations (a field replaced by junk of any JSON type, positionals cut short,
    moved to keywords or added, unknown keywords)."""
    args: list[Any] = [
        draw(VALID_IDS),
        draw(VALID_IDS),
        draw(VALID_IDS | st.just("")),
        draw(TEXT_OK),
    ]
    names = draw(st.lists(st.sampled_from(sorted(OPTIONS)), unique=True, max_size=3))
    kwargs: dict[Any, Any] = {name: draw(OPTIONS[name]) for name in names}
    for _ in range(draw(st.integers(0, 3))):
        mutation = draw(st.sampled_from(["arg", "cut", "extra", "keyword", "move"]))
        if mutation == "arg" and args:
            args[draw(st.integers(0, len(args) - 1))] = draw(JUNK)
        elif mutation == "cut":
            args = args[: draw(st.integers(0, len(args)))]
        elif mutation == "extra":
            args.append(draw(JUNK))
        elif mutation == "keyword":
            kwargs[draw(st.sampled_from([*POSITIONAL_FIELDS, *OPTIONS]) | TEXT)] = draw(JUNK)
        elif args and len(args) <= len(POSITIONAL_FIELDS):  # move the last positional
            kwargs.setdefault(POSITIONAL_FIELDS[len(args) - 1], args.pop())
    return args, kwargs


def assert_readable(text: str) -> None:
    """An error message fit for an event, a log line and Flower."""
    text.encode("utf-8")  # strict: raises on a lone surrogate
    assert lone_surrogate(text) is None
    assert 0 < len(text) < 8000


# --- the run request ------------------------------------------------------------------------


@FUZZ
@given(task_arguments())
def test_any_arguments_give_a_request_or_an_error_that_can_be_published(
    arguments: tuple[list[Any], dict[Any, Any]],
) -> None:
    args, kwargs = arguments
    try:
        request = RunRequest.from_task_arguments(args, kwargs, max_message_chars=500)
    except InvalidRequestError as exc:
        assert_readable(str(exc))
    else:
        # A valid request goes through send_task unchanged
        again = RunRequest.from_task_arguments(*request.task_arguments(), max_message_chars=500)
        assert again == request
        assert ID_RE.fullmatch(request.app_name) and ID_RE.fullmatch(request.user_id)


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        (
            ["assistant", "u\udfff", "s", "hi"],
            {},
            "user_id contains a lone surrogate (U+DFFF) at position 1",
        ),
        (
            ["a\udfff", "u", "", "hi"],
            {},
            "app_name contains a lone surrogate (U+DFFF) at position 1",
        ),
        (
            ["a", "u", "s\ud800", "hi"],
            {},
            "session_id contains a lone surrogate (U+D800) at position 1",
        ),
        (["a", "u", "s", {"role": "user", "content": "x\udfff"}], {}, "message.content contains"),
        (["a", "u", "s", "hi"], {"messages": ["ok", "no\udc00"]}, "messages[1] contains"),
        (["a", "u", "s", "hi"], {"b\udfff": 1}, "the name of an argument contains"),
        (["a", "u", "s", "hi"], {"request_id": "\udfff"}, "request_id contains"),
        (["a", "u", "s", "hi"], {"x" * 5000: 1}, "Extra inputs are not permitted"),
        (["a", "u", "s", {"role": "user", "content": "hi", "y" * 5000: 1}], {}, "message"),
        (["a", "u", "s", "hi"], {"run_timeout_s": float("inf")}, "run_timeout_s"),
        (["a", "u", "s", ""], {}, "message is empty"),
        (["a", "u", "s", {"role": "assistant", "content": "hi"}], {}, "role 'user'"),
        (["a", "u", "s", "hi"], {"messages": [{"role": "nobody"}]}, "messages[0]"),
        (["a", "u", "s", "x" * 600], {}, "the limit is 500"),
        (["a", "u", "s", "hi"], {"run_config": {"max_iterations": 0}}, "run_config.max_iterations"),
        (["a", "u", "s", "hi"], {"run_config": {"y" * 5000: 1}}, "Extra inputs are not permitted"),
        (
            ["a", "u", "s", "hi"],
            {"run_config": {"runtime_state": {"k": "x\udfff"}}},
            "run_config.runtime_state.k contains a lone surrogate",
        ),
    ],
)
def test_an_invalid_request_names_the_field_without_echoing_what_cannot_be_shown(
    args: list[Any], kwargs: dict[str, Any], expected: str
) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        RunRequest.from_task_arguments(args, kwargs, max_message_chars=500)
    message = str(raised.value)
    assert expected in message
    assert_readable(message)
    assert "x" * 100 not in message and "y" * 100 not in message  # long input is cut short


def test_the_message_size_limit_comes_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given AGENT_RUNNER_MAX_MESSAGE_CHARS, a producer's validation uses it
    monkeypatch.setenv("AGENT_RUNNER_MAX_MESSAGE_CHARS", "50")
    with pytest.raises(InvalidRequestError, match="the limit is 50"):
        RunRequest.validate_request(app_name="a", user_id="u", session_id="s", message="x" * 60)
    # And a bad value is refused naming the variable, never silently replaced by the default
    monkeypatch.setenv("AGENT_RUNNER_MAX_MESSAGE_CHARS", "lots")
    with pytest.raises(ConfigurationError, match="AGENT_RUNNER_MAX_MESSAGE_CHARS"):
        RunRequest.validate_request(app_name="a", user_id="u", session_id="s", message="hi")


# --- the task ID ----------------------------------------------------------------------------


@FUZZ
@given(st.one_of(TEXT, IDS, st.text(max_size=300), JSON_VALUES, st.uuids().map(str)))
def test_every_task_id_maps_to_a_stream_no_valid_id_can_reach(task_id: Any) -> None:
    read = TaskID.read(task_id)
    read.invocation_id.encode("utf-8")  # it can name Redis keys
    if isinstance(task_id, str) and ID_RE.fullmatch(task_id):
        assert read == TaskID(task_id)
        return
    assert read.problem is not None
    assert_readable(read.problem)
    # Its stream is never the stream of any valid invocation ID
    assert not ID_RE.fullmatch(read.invocation_id)
    if read.invocation_id != task_id:
        assert read.invocation_id.startswith(INVALID_TASK_ID_PREFIX)
    # And the rule is stable: the ID it maps to maps to itself
    assert TaskID.read(read.invocation_id).invocation_id == read.invocation_id


@pytest.mark.parametrize(
    ("task_id", "stream_id", "problem"),
    [
        ("3f2b6c1e-aaaa", "3f2b6c1e-aaaa", None),
        ("bad id", "bad id", "' ' at position 3"),
        ("alice\n", "alice\n", "'\\n' at position 5"),
        ("é", "é", "'é' at position 0"),
        ("u\udfff", "fallback", "a lone surrogate (U+DFFF) at position 1"),
        ("x" * 129, "fallback", "129 characters long"),
        ("", "fallback", "empty"),
        (None, "fallback", "not a string but null"),
        (42, "fallback", "not a string but a number"),
    ],
)
def test_where_a_run_with_an_invalid_task_id_publishes(
    task_id: Any, stream_id: str, problem: str | None
) -> None:
    read = TaskID.read(task_id)
    if stream_id == "fallback":
        digest = hashlib.sha256(json.dumps(task_id).encode()).hexdigest()[:32]
        stream_id = INVALID_TASK_ID_PREFIX + digest
    assert read.invocation_id == stream_id
    assert (read.problem is None) if problem is None else (problem in str(read.problem))


@pytest.mark.parametrize(
    ("task_id", "problem", "args", "expected"),
    [
        ("bad id", None, ["testkit", "u", "s", "hi"], ["the task ID 'bad id' has ' '"]),
        ("bad id", None, ["testkit", 42, "s", "hi"], ["the task ID 'bad id'", "user_id"]),
        ("x" * 200, None, ["testkit", "u", "s", "hi"], ["200 characters", INVALID_TASK_ID_PREFIX]),
        ("bad id", "the message body is 5", [], ["the message body is 5", "the task ID 'bad id'"]),
        (
            TaskID.read("a\udfff").invocation_id,
            "the task ID contains a lone surrogate (U+DFFF) at position 1",
            ["testkit", "u", "s", "hi"],
            ["lone surrogate (U+DFFF)", "its events are under the invocation ID invalid-task-id/"],
        ),
        # a fixed well-formed ID: parameters must be the same in every pytest-xdist worker
        (
            "5f0c7d1e-2b7a-4c59-9e3f-0a1b2c3d4e5f",
            None,
            ["nope", "u", "s", "hi"],
            ["unknown app_name 'nope'"],
        ),
    ],
)
def test_a_worker_names_what_is_wrong_with_the_message_the_task_id_and_the_arguments(
    task_id: str, problem: str | None, args: list[Any], expected: list[str]
) -> None:
    from types import SimpleNamespace

    from workers.tasks import _validate

    rt = SimpleNamespace(
        settings=SimpleNamespace(max_message_chars=1000),
        agents=SimpleNamespace(app_names=["testkit"]),
    )
    task = SimpleNamespace(request=SimpleNamespace(id=task_id, **{PROBLEM_HEADER: problem}))
    with pytest.raises(InvalidRequestError) as raised:
        _validate(rt, task, TaskID.read(task_id), args, {})  # type: ignore[arg-type]
    assert all(part in str(raised.value) for part in expected), str(raised.value)
    assert_readable(str(raised.value))
    assert "the task ID 'invalid-task-id" not in str(raised.value)  # a stand-in's own ID


# --- the failure events ---------------------------------------------------------------------


@FUZZ
@given(
    invocation_id=st.one_of(VALID_IDS, TEXT),
    fields=st.tuples(*[IDS | JSON_VALUES] * 4),
    raw_labels=st.tuples(TEXT, TEXT, TEXT, TEXT | st.none()),
    error=st.tuples(TEXT, TEXT, TEXT | st.none()),
    status=st.sampled_from(["failed", "cancelled", "timeout"]),
    first_seq=st.integers(0, 10**6),
)
def test_failure_events_are_json_for_any_input(
    invocation_id: str,
    fields: tuple[Any, Any, Any, Any],
    raw_labels: tuple[str, str, str, str | None],
    error: tuple[str, str, str | None],
    status: Any,
    first_seq: int,
) -> None:
    for labels in (RunLabels.of(*fields), RunLabels(*raw_labels)):
        events = failure_events(
            invocation_id,
            labels,
            EventError.model_construct(type=error[0], message=error[1], code=error[2]),
            status=status,
            after_seq=first_seq - 1 if first_seq else None,
        )
        assert events[-1].is_runner_completion() and events[-1].status == status
        assert [e.seq for e in events] == list(range(first_seq, first_seq + len(events)))
        for event in events:
            assert decode_event(event.to_json()) == event
            assert event.invocation_id == TaskID.read(event.invocation_id).invocation_id
        done = events[-1]
        assert done.type == "runner.completion"  # the one event that names the run
        for label in (done.app_name, done.user_id, done.session_id):
            assert label == "" or ID_RE.fullmatch(label)  # valid or empty, never echoed


# --- broker messages ------------------------------------------------------------------------

CONTENT_TYPES = st.sampled_from(
    ["application/json"] * 4 + ["application/x-python-serialize", "text/plain", "", None]
)
BODIES = st.one_of(
    st.binary(max_size=40),
    JSON_VALUES.map(json.dumps),
    st.tuples(st.lists(IDS | JSON_VALUES, max_size=5), JSON_VALUES, JSON_VALUES).map(json.dumps),
    st.tuples(st.just(["testkit", "u", "s", "hi"]), st.just({}), st.just({})).map(json.dumps),
    st.fixed_dictionaries({"args": JSON_VALUES, "kwargs": JSON_VALUES}).map(json.dumps),
)
HEADER_VALUES = st.one_of(st.none(), JSON_VALUES, st.sampled_from(["2026-01-01T00:00:00", [1, 2]]))


@st.composite
def messages(draw: st.DrawFn) -> Message:
    body = draw(BODIES)
    headers: dict[str, Any] = {"task": "agent_runner.submit_run"}
    task_id = draw(st.one_of(st.uuids().map(str), TEXT, JSON_VALUES, st.just("<none>")))
    if task_id != "<none>":
        headers["id"] = task_id
    for name in draw(st.lists(st.sampled_from(["eta", "expires", "timelimit", "retries"]))):
        headers[name] = draw(HEADER_VALUES)
    return Message(
        body=body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body,
        delivery_tag=str(uuid.uuid4()),
        content_type=draw(CONTENT_TYPES),
        content_encoding="utf-8",
        headers=headers,
        properties={"delivery_tag": "t"},
        accept={"application/json"},
    )


#: A Celery app of its own: building the project's task here would fix its options (results
#: ignored or not) before the distributed tests' producer sets them.
CELERY = Celery("fuzz", set_as_current=False)


def _run(self: Any, *args: Any, **kwargs: Any) -> None:
    """Stands for the run task: only its request is built here."""


RUN_TASK = CELERY.task(name="agent_runner.submit_run", bind=True, shared=False)(_run)


def celery_request(message: Message) -> Request:
    """What Celery's default strategy builds from a message (celery/worker/strategy.py)."""
    payload = message.payload
    if isinstance(payload, dict) and "args" in payload:
        body, headers, decoded, utc = hybrid_to_proto2(message, payload)
    else:
        body, headers, decoded, utc = message.body, message.headers, False, True
    return Request(
        message, app=CELERY, task=RUN_TASK, hostname="fuzz", body=body,
        headers=headers, decoded=decoded, utc=utc,
    )  # fmt: skip


@FUZZ
@given(messages())
def test_every_broker_message_is_one_celery_can_take(message: Message) -> None:
    inspection = inspect_message(message)
    if inspection.problem is not None:
        assert_readable(inspection.problem)
        message = stand_in(message, "agent_runner.submit_run", inspection)
    # Celery builds its request without failing (a failure here stops a real worker)
    request = celery_request(message)
    assert isinstance(request.id, str) and request.id and lone_surrogate(request.id) is None
    assert isinstance(request.args, list | tuple) and isinstance(request.kwargs, dict)
    assert "self" not in request.kwargs
    assert len(request.time_limits) == 2  # Celery unpacks them to run the task
    assert request.request_dict.get(PROBLEM_HEADER) == inspection.problem


# --- end to end: a real worker --------------------------------------------------------------

E2E_MESSAGES = 200
SETTLE_S = 90.0
SURROGATE = "u\udfff"


@pytest.fixture
def model_server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as server:
        server.set_default("fine")
        yield server


class Fuzzer:
    """Seeded run messages: ``send_task`` calls with junk of every JSON type, and raw broker
    messages no Celery client would send."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def junk(self, depth: int = 0) -> Any:
        pick = self.rng.randrange(9 if depth < 2 else 6)
        if pick == 6:
            return [self.junk(depth + 1) for _ in range(self.rng.randrange(3))]
        if pick == 7:
            return {self.text(): self.junk(depth + 1) for _ in range(self.rng.randrange(3))}
        if pick == 8:
            return "x" * self.rng.choice([129, 5000, 120_000])
        return [None, True, self.rng.randint(-(10**20), 10**20), 2.5, self.text(), ""][pick]

    def text(self) -> str:
        return self.rng.choice(["a", "é", SURROGATE, "\ud83d", "a b", "alice\n", "\x00", "k"])

    def ident(self) -> Any:
        if self.rng.random() < 0.6:
            return self.rng.choice(["assistant", "testkit", "alice", f"s-{self.rng.random()}"])
        return self.rng.choice(["", SURROGATE, "a b", "alice\n", "x" * 200, 42, None, ["a"]])

    def task_id(self, i: int) -> Any:
        return self.rng.choice(
            [
                str(uuid.uuid4()),
                str(uuid.uuid4()),
                f"bad id {i}",
                f"id-{i}\n",
                f"u\udfff{i}",
                "x" * 200 + str(i),
                f"é{i}",
            ]
        )

    def arguments(self, i: int) -> tuple[list[Any], dict[str, Any]]:
        args = [
            self.rng.choice(["assistant", "testkit", "nope"])
            if self.rng.random() < 0.7
            else self.ident(),
            f"user-{i}" if self.rng.random() < 0.6 else self.ident(),
            f"s-{i}" if self.rng.random() < 0.5 else self.ident(),
            "hi" if self.rng.random() < 0.5 else self.junk(),
        ][: self.rng.choice([4, 4, 4, 3, 5])]
        if len(args) == 5:
            args.append(self.junk())
        names = ["resume", "request_id", "multitask_strategy", "run_timeout_s", "messages",
                 "tool_confirmations", "bogus", SURROGATE, "self", "app_name"]  # fmt: skip
        kwargs = {self.rng.choice(names): self.junk() for _ in range(self.rng.choice([0, 0, 1, 2]))}
        return args, kwargs

    def raw(self, i: int) -> tuple[Any, bytes, str, dict[str, Any]]:
        """(task ID or None, body, content type, extra headers) of a raw broker message."""
        task_id = self.rng.choice([str(uuid.uuid4())] * 4 + [None, 7, "", f"r\udfff{i}"])
        good = json.dumps([["testkit", f"user-{i}", f"s-raw-{i}", "hi"], {}, {}])
        body, content_type, headers = self.rng.choice(
            [
                (b"not json{", "application/json", {}),
                (json.dumps({"a": 1}), "application/json", {}),
                (json.dumps(5), "application/json", {}),
                (json.dumps(None), "application/json", {}),
                (json.dumps([["testkit"], {}]), "application/json", {}),
                (json.dumps(["testkit", {}, {}]), "application/json", {}),
                (json.dumps([[], [1], {}]), "application/json", {}),
                (
                    json.dumps([["testkit", "u", "s", "hi"], {"self": 1}, {}]),
                    "application/json",
                    {},
                ),
                (json.dumps([["testkit", "u", "s", "hi"], {}, "x"]), "application/json", {}),
                (b'[["\xff", "u", "s", "hi"], {}, {}]', "application/json", {}),
                (b"\x80\x04N.", "application/x-python-serialize", {}),
                (good, "application/json", {"timelimit": "x"}),
                (good, "application/json", {"eta": "not a date"}),
                (good, "application/json", {"expires": [1]}),
                (good, "application/json", {}),
            ]
        )
        return task_id, body.encode() if isinstance(body, str) else body, content_type, headers


def publish_raw(
    connection: Connection, task_id: Any, body: bytes, content_type: str, headers: dict[str, Any]
) -> None:
    message_headers: dict[str, Any] = {
        "lang": "py", "task": "agent_runner.submit_run", "root_id": None, "parent_id": None,
        "group": None, "shadow": None, "eta": None, "expires": None, "retries": 0,
        "timelimit": [None, None], "argsrepr": "", "kwargsrepr": "", "origin": "fuzz",
    }  # fmt: skip
    if task_id is not None:
        message_headers["id"] = task_id
    message_headers.update(headers)
    connection.Producer().publish(
        body,
        routing_key="runs",
        exchange="",
        headers=message_headers,
        content_type=content_type,
        content_encoding="binary" if "python" in content_type else "utf-8",
    )


def terminal_events(redis_url: str, stream_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Each stream's events once every one of them holds a completion (or the time is up)."""
    deadline = time.monotonic() + SETTLE_S
    waiting = set(stream_ids)
    events: dict[str, list[dict[str, Any]]] = {}
    while waiting and time.monotonic() < deadline:
        for stream_id in list(waiting):
            events[stream_id] = read_events(redis_url, stream_id)
            if completions(events[stream_id]):
                waiting.discard(stream_id)
        time.sleep(0.2)
    return events


@pytest.mark.redis
@pytest.mark.celery
def test_every_fuzzed_message_ends_in_a_terminal_event_and_the_worker_stays_up(
    producer: Any,
    start_worker: StartWorker,
    model_server: ScriptedModelServer,
    redis_url: str,
) -> None:
    worker = start_worker(OPENAI_BASE_URL=model_server.url)
    fuzzer = Fuzzer(seed=12)
    sent: list[tuple[str, Any]] = []  # (stream ID, what was sent)

    # When 200 seeded messages of every shape are sent: send_task calls and raw messages
    with Connection(redis_url) as connection:
        for i in range(E2E_MESSAGES):
            if i % 5 == 4:
                task_id, body, content_type, headers = fuzzer.raw(i)
                publish_raw(connection, task_id, body, content_type, headers)
                sent.append((TaskID.read(task_id).invocation_id, (task_id, body, headers)))
            else:
                task_id = fuzzer.task_id(i)
                args, kwargs = fuzzer.arguments(i)
                if lone_surrogate(task_id) is None:
                    producer.send_task(
                        "agent_runner.submit_run",
                        args=args,
                        kwargs=kwargs,
                        task_id=task_id,
                        queue="runs",
                    )
                else:  # Python's result backend cannot name a key after it: send it as JSON
                    body = json.dumps([args, kwargs, {}]).encode()
                    publish_raw(connection, task_id, body, "application/json", {})
                sent.append((TaskID.read(task_id).invocation_id, (task_id, args, kwargs)))

    # Then every message ends with a runner.completion on its stream
    stream_ids = list(dict.fromkeys(stream_id for stream_id, _ in sent))
    events = terminal_events(redis_url, stream_ids)
    silent = [what for stream_id, what in sent if not completions(events.get(stream_id, []))]
    assert not silent, (
        f"{len(silent)} of {len(sent)} messages ended without a completion: {silent[:5]!r}"
    )
    for stream_id in stream_ids:
        stream = events[stream_id]
        assert stream[-1]["type"] == "runner.completion"
        for raw in stream:  # every event is a valid event, its labels valid or empty
            event = decode_event(json.dumps(raw))
            assert event.invocation_id == stream_id
            if event.type == "runner.completion":
                assert all(
                    x == "" or ID_RE.fullmatch(x)
                    for x in (event.app_name, event.user_id, event.session_id)
                )
        if stream_id.startswith(INVALID_TASK_ID_PREFIX):
            continue  # messages without a usable ID may share a fallback stream
        assert len(completions(stream)) == 1
    # And the worker is still up, and runs a good request
    assert worker.is_alive(), worker.log_tail()
    assert "Unrecoverable error" not in worker.log_tail(10**7)
    good = producer.send_task(
        "agent_runner.submit_run", args=["testkit", "alice", "s-after", "hi"], queue="runs"
    )
    after = terminal_events(redis_url, [good.id])[good.id]
    assert after and after[-1]["status"] == "completed" and after[-1]["final_text"] == "fine"


def wait_for(condition: Any, what: str, timeout: float = SETTLE_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def refused(worker: CeleryWorker, invocation_id: str) -> bool:
    return any(
        invocation_id in line and "refused" in line for line in worker.log_tail(10**6).splitlines()
    )


@pytest.mark.redis
@pytest.mark.celery
@pytest.mark.parametrize("user_id", ["mallory", "alice\n", 42])
def test_an_invalid_message_never_writes_into_another_identitys_run(
    producer: Any,
    start_worker: StartWorker,
    model_server: ScriptedModelServer,
    redis_url: str,
    user_id: Any,
) -> None:
    # Given alice's run, finished
    worker = start_worker(OPENAI_BASE_URL=model_server.url)
    owner = producer.send_task(
        "agent_runner.submit_run", args=["testkit", "alice", "s-own", "hi"], queue="runs"
    )
    before = wait_for(
        lambda: completions(read_events(redis_url, owner.id)) and read_events(redis_url, owner.id),
        "alice's run",
    )

    # When an invalid message for another identity (or none) comes with her invocation ID
    producer.send_task(
        "agent_runner.submit_run",
        args=["testkit", user_id, "s-own", "hi"],
        kwargs={"bogus": "\udfff"},
        task_id=owner.id,
        queue="runs",
    )

    # Then it is refused and her stream is untouched
    wait_for(lambda: refused(worker, owner.id), "the invalid message to be refused")
    assert read_events(redis_url, owner.id) == before


@pytest.mark.redis
@pytest.mark.celery
def test_an_invalid_twin_never_ends_a_run_under_way(
    producer: Any,
    start_worker: StartWorker,
    model_server: ScriptedModelServer,
    redis_url: str,
) -> None:
    from workers.client import cancel

    # Given alice's run, waiting on the model
    model_server.add_hang(match="alice asks")
    worker = start_worker(OPENAI_BASE_URL=model_server.url)
    owner = producer.send_task(
        "agent_runner.submit_run", args=["testkit", "alice", "s-twin", "alice asks"], queue="runs"
    )
    wait_for(lambda: len(model_server.requests) == 1, "alice's run to reach the model")

    # When an invalid message of the same identity comes with her invocation ID
    producer.send_task(
        "agent_runner.submit_run",
        args=["testkit", "alice", "s-twin", "hi"],
        kwargs={"resume": "yes"},
        task_id=owner.id,
        queue="runs",
    )

    # Then it is refused: no failed completion lands in the middle of her run
    wait_for(lambda: refused(worker, owner.id), "the invalid twin to be refused")
    assert not completions(read_events(redis_url, owner.id))
    cancel(owner.id, redis_url=redis_url)
    events = wait_for(
        lambda: completions(read_events(redis_url, owner.id)) and read_events(redis_url, owner.id),
        "alice's run to end",
    )
    assert [e["type"] for e in events if e["type"] in ("error", "runner.completion")] == [
        "runner.completion"
    ]
    assert events[-1]["status"] == "cancelled"
    # And the twin was refused once and acknowledged, never put back to come round again
    received = worker.log_tail(10**7).count(f"agent_runner.submit_run[{owner.id}] received")
    assert received == 2  # her run and the twin
