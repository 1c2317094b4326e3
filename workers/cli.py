"""The ``agent-runner`` command.

::

    agent-runner dev [--flower] [--no-console]       local stack + web console + terminal chat
    agent-runner submit APP USER SESSION MESSAGE [--follow] [--run-config JSON]
    agent-runner tail INVOCATION_ID [--after-seq N] [--wait S]
                                                     print a run's events until it completes
    agent-runner cancel INVOCATION_ID
    agent-runner trace INVOCATION_ID [--app A --user U] [--json]
                                                     a run's execution trace (docs/traces.md)
    agent-runner schema [PATH]                       the event JSON Schema (default: stdout)
    agent-runner feedback ID STEP KIND TEXT --app A --user U
                                                     feedback on a step (docs/memory.md)
    agent-runner serve [--host H] [--port P]         the HTTP gateway (docs/gateway.md)
    agent-runner artifact list|versions|get ...      what runs saved (docs/artifacts.md)

``submit``, ``tail`` and ``cancel`` use the Redis of ``AGENT_RUNNER_BROKER_URL`` /
``AGENT_RUNNER_REDIS_URL``. ``dev`` starts its own (see :mod:`workers.localstack`) and chats
through the whole distributed path: each line is a ``submit_run`` task, and what is printed is
read back from the run's event stream. Errors print one line and exit with status 1; a reader
that stops reading our output (``| head``) ends the command quietly with status 141, as if
killed by SIGPIPE like other Unix tools. docs/cli.md has the details.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import secrets
import signal
import sys
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from runner_core.errors import AgentRunnerError
from runner_core.events import (
    AgentTransferEvent,
    ErrorEvent,
    Event,
    MemoryInjectedEvent,
    MessageDeltaEvent,
    MessageEvent,
    RunCompletionEvent,
    RunPausedEvent,
    RunQueuedEvent,
    RunRestartedEvent,
    StateUpdateEvent,
    ToolResultEvent,
    render_event_json_schema,
)

from . import client
from .artifact_cli import add_artifact_commands
from .settings import Settings, mask_url

__all__ = ["EventPrinter", "main"]

#: Default of ``tail --wait``: seconds to wait for an invocation ID to be known.
DEFAULT_KNOWN_WAIT_S = 5.0
#: Exit status when standard output is a pipe whose reader went away: 128 + SIGPIPE.
BROKEN_PIPE_STATUS = 128 + signal.SIGPIPE
DEMO_NOTICE = "no OPENAI_API_KEY or OPENAI_BASE_URL: using the offline demo model"
CHAT_HELP = "Type a message, or /history, /new, /exit (Ctrl-D also exits)."


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class EventPrinter:
    """Renders events for a terminal: streamed text as it comes, tool calls, results, errors.

    In a tree of agents, the main agent's text is labelled ``assistant>`` and any other
    agent's with its name (``billing> ...``); transfers print as ``[transfer] a -> b``. An
    event on a parallel agent's branch names it: text as ``researcher [fanout.researcher]>``,
    other lines with the branch first (``  [fanout.researcher] [tool call] ...``). When
    branches stream at once, each change of writer starts a new line with its label, so every
    line of text is one agent's.

    Args:
        out: where to write.
        show_user: also print user messages (``tail``); the chat has already shown them.
        main_agent: the agent labelled ``assistant``; default: the first agent that speaks
            or transfers on the main line in what this printer shows (the root, from a
            session's start). An agent on a branch is always labelled with its name.
    """

    def __init__(
        self, out: TextIO, *, show_user: bool = False, main_agent: str | None = None
    ) -> None:
        self.out = out
        self.show_user = show_user
        self.in_text = False  # inside a line of streamed assistant text
        self.main_agent = main_agent
        #: Whose streamed text the open line holds: (author, branch).
        self._line_writer: tuple[str, str | None] | None = None
        #: The writers whose streamed text is printed and whose complete message is to come.
        self._streamed: set[tuple[str, str | None]] = set()

    def _speaker(self, author: str) -> str:
        """The label of an agent's text: ``assistant`` for the main agent, else its name."""
        if self.main_agent is None:
            self.main_agent = author
        return "assistant" if author == self.main_agent else author

    def _label(self, event: Event) -> str:
        """Who wrote ``event``'s text: ``assistant``, ``billing``, ``left [fanout.left]``."""
        if event.branch is None:
            return self._speaker(event.author)
        return f"{event.author} [{event.branch}]"

    def _end_text(self) -> None:
        if self.in_text:
            self.out.write("\n")
            self.in_text = False
            self._line_writer = None

    def _line(self, text: str) -> None:
        self._end_text()
        self.out.write(text + "\n")

    def _note_of(self, event: Event, text: str) -> None:
        """An indented line about ``event``, naming its branch when it has one."""
        where = f"[{event.branch}] " if event.branch is not None else ""
        self._line(f"  {where}{text}")

    def note(self, text: str) -> None:
        """An indented line of our own (not from an event), on a fresh line."""
        self._line(f"  {text}")
        self.out.flush()

    def __call__(self, event: Event) -> None:
        handler = getattr(self, "_on_" + event.type.replace(".", "_"))
        handler(event)
        self.out.flush()

    def _on_message_delta(self, event: MessageDeltaEvent) -> None:
        writer = (event.author, event.branch)
        if self.in_text and self._line_writer != writer:
            self._end_text()  # another branch's text comes in: a line of its own
        if not self.in_text:
            self.out.write(f"{self._label(event)}> ")
            self.in_text = True
            self._line_writer = writer
        self._streamed.add(writer)
        self.out.write(event.delta)

    def _on_message(self, event: MessageEvent) -> None:
        message = event.message
        if message.role == "user":
            if self.show_user:
                self._line(f"user> {message.text}")
            return
        if message.role == "assistant" and event.branch is None:
            self._speaker(event.author)  # a turn of tool calls is speaking too
        writer = (event.author, event.branch)
        streamed = writer in self._streamed
        self._streamed.discard(writer)
        for call in message.tool_calls or []:
            self._note_of(event, f"[tool call] {call.function.name}({call.function.arguments})")
        if not message.content or message.tool_calls:
            return
        if not streamed:
            label = self._label(event) if message.role == "assistant" else message.role
            self._line(f"{label}> {message.content}")
        elif self._line_writer == writer:
            self._end_text()  # its text is on the open line already

    def _on_tool_result(self, event: ToolResultEvent) -> None:
        message = event.message
        name = message.name or message.tool_call_id or "tool"
        self._note_of(event, f"[tool result] {name}: {_short(message.text)}")

    def _on_state_update(self, event: StateUpdateEvent) -> None:
        self._note_of(event, f"[state] {', '.join(sorted(event.state_delta)) or '(no keys)'}")

    def _on_error(self, event: ErrorEvent) -> None:
        self._note_of(event, f"[error] {event.error.type}: {event.error.message}")

    def _on_run_queued(self, event: RunQueuedEvent) -> None:
        self._line(
            f"  [queued] the session is busy: waiting for run {event.waiting_for} to finish first"
        )

    def _on_run_restarted(self, event: RunRestartedEvent) -> None:
        # The worker died and a new attempt starts the unfinished reply over: text on the
        # current line is the void part (deltas since the last complete event end one line).
        note = f"  [restarted: attempt {event.attempt}"
        if self.in_text:
            note += "; the partial reply above is discarded"
        self._streamed.clear()  # the new attempt streams those replies again
        self._line(note + "]")

    def _on_run_paused(self, event: RunPausedEvent) -> None:
        parts = []
        for call in event.requested_confirmations:
            editable = event.editable(call.id)
            note = f"; may edit: {', '.join(editable)}" if editable else ""
            parts.append(f"{call.function.name} (call {call.id}{note})")
        self._note_of(
            event, f"[paused] waiting for confirmation of: {', '.join(parts) or 'nothing'}"
        )

    def _on_agent_transfer(self, event: AgentTransferEvent) -> None:
        if event.branch is None:
            self._speaker(event.author)  # the agent handing over spoke first
        self._note_of(event, f"[transfer] {event.author} -> {event.to_agent}")

    def _on_memory_injected(self, event: MemoryInjectedEvent) -> None:
        told = ", ".join(f"{item.kind} {item.id}" for item in event.items) or "nothing relevant"
        self._note_of(event, f"[memory] {event.author} told: {told}")

    def _on_runner_completion(self, event: RunCompletionEvent) -> None:
        usage = event.usage
        detail: list[str] = [event.status]
        if usage.model_calls:
            calls = "1 model call" if usage.model_calls == 1 else f"{usage.model_calls} model calls"
            detail.append(f"{calls}, {usage.total_tokens} tokens")
        if event.cost is not None:
            detail.append(f"cost {event.cost:.6f}")
        self._line(f"  [{'; '.join(detail)}]")


# --- commands ----------------------------------------------------------------------------


def _print_events(
    events: Iterable[Event], *, as_json: bool, out: TextIO
) -> RunCompletionEvent | None:
    """Print events (JSON lines or rendered); return the completion, if one came."""
    printer = EventPrinter(out, show_user=True)
    last: Event | None = None
    for event in events:
        if as_json:
            out.write(event.to_json() + "\n")
            out.flush()
        else:
            printer(event)
        last = event
    return last if last is not None and last.type == "runner.completion" else None


def _exit_status(completion: RunCompletionEvent | None) -> int:
    return 0 if completion is not None and completion.status in ("completed", "paused") else 1


def cmd_submit(args: argparse.Namespace) -> int:
    invocation_id = client.submit(
        args.app_name,
        args.user_id,
        args.session_id,
        args.message,
        multitask_strategy=args.strategy,
        run_config=args.run_config,
    )
    if not args.follow:
        print(invocation_id)
        return 0
    print(f"invocation: {invocation_id}", file=sys.stderr, flush=True)
    events = client.stream_events(invocation_id, timeout=args.timeout)
    return _exit_status(_print_events(events, as_json=args.json, out=sys.stdout))


def cmd_tail(args: argparse.Namespace) -> int:
    events = client.stream_events(
        args.invocation_id,
        after_seq=args.after_seq,
        timeout=args.timeout,
        known_wait=args.wait,
    )
    return _exit_status(_print_events(events, as_json=args.json, out=sys.stdout))


def cmd_cancel(args: argparse.Namespace) -> int:
    completion = client.cancel(args.invocation_id, require_known=True)
    if completion is not None:
        print(
            f"agent-runner: error: run {args.invocation_id} already finished with status "
            f"{completion.status}; nothing to cancel",
            file=sys.stderr,
        )
        return 1
    print(f"cancel requested for {args.invocation_id}")
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    from .trace_view import render_trace

    if (args.app is None) != (args.user is None):
        print("agent-runner: error: pass both --app and --user, or neither", file=sys.stderr)
        return 2
    trace = client.get_trace(args.app, args.user, args.invocation_id)
    print(trace.to_json() if args.json else render_trace(trace))
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    from .feedback import give_feedback

    result = give_feedback(
        args.app, args.user, args.invocation_id, args.step_id, args.kind, args.content
    )
    print(json.dumps(result.to_dict(), indent=2))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    text = render_event_json_schema()
    if args.path is None or args.path == "-":
        sys.stdout.write(text)
        return 0
    path = Path(args.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    # By name: the gateway builds on workers, never the other way round.
    serve = importlib.import_module("gateway.serve").serve
    serve(host=args.host, port=args.port, workers=args.workers, log_level=args.log_level)
    return 0


# --- dev: local stack + chat -------------------------------------------------------------


class Chat:
    """The terminal chat of ``agent-runner dev``: every line goes through ``submit_run``."""

    def __init__(
        self,
        *,
        app_name: str,
        user_id: str,
        session_url: str,
        timeout: float,
        out: TextIO,
    ) -> None:
        self.app_name = app_name
        self.user_id = user_id
        self.session_url = session_url
        self.timeout = timeout
        self.out = out
        self.session_id = self._new_session_id()
        #: The agent the chat's first run spoke with (the root): later runs label it the same.
        self.main_agent: str | None = None

    @staticmethod
    def _new_session_id() -> str:
        return f"chat-{uuid.uuid4().hex[:8]}"

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def run(self, lines: Callable[[], str | None]) -> None:
        """Read lines until ``/exit`` or end of input (``lines`` returns None)."""
        self.say(f"session {self.session_id} (app {self.app_name!r}, user {self.user_id!r})")
        self.say(CHAT_HELP)
        while True:
            line = lines()
            if line is None or line.strip() == "/exit":
                return
            text = line.strip()
            if not text:
                continue
            if text == "/history":
                self.show_history()
            elif text == "/new":
                self.session_id = self._new_session_id()
                self.say(f"new session {self.session_id}")
            elif text.startswith("/"):
                self.say(f"unknown command {text.split()[0]!r}. {CHAT_HELP}")
            else:
                self.ask(text)

    def ask(self, text: str) -> None:
        try:
            invocation_id = client.submit(self.app_name, self.user_id, self.session_id, text)
        except AgentRunnerError as exc:
            self.say(f"  [not sent] {exc}")
            return
        printer = EventPrinter(self.out, main_agent=self.main_agent)
        last_seq: int | None = None
        events = client.stream_events(invocation_id, timeout=self.timeout)
        try:
            for event in events:
                printer(event)
                last_seq = event.seq
        except KeyboardInterrupt:
            printer.note("[cancelling: Ctrl-C again to quit]")
            client.cancel(invocation_id)
            rest = client.stream_events(invocation_id, after_seq=last_seq, timeout=self.timeout)
            for event in rest:
                if event.is_runner_completion():
                    printer(event)
        except (TimeoutError, AgentRunnerError) as exc:
            printer.note(f"[no answer] {exc}")
        finally:
            events.close()
            self.main_agent = printer.main_agent

    def show_history(self) -> None:
        session = asyncio.run(self._load_session())
        if session is None or not session.events:
            self.say(f"(session {self.session_id} has no messages yet)")
            return
        self.say(f"--- history of session {self.session_id} ({len(session.events)} events) ---")
        printer = EventPrinter(self.out, show_user=True)
        for event in session.events:
            printer(event)
        self.say("---")

    async def _load_session(self) -> Any:
        from session_backends import from_url

        store = from_url(self.session_url)
        try:
            return await store.get_session(self.app_name, self.user_id, self.session_id)
        finally:
            await store.close()


def _stdin_lines(interactive: bool, echo: TextIO) -> Callable[[], str | None]:
    def read() -> str | None:
        if interactive:
            try:
                return input("you> ")
            except EOFError:
                echo.write("\n")
                return None
        line = sys.stdin.readline()
        if not line:
            return None
        echo.write(f"you> {line.rstrip()}\n")
        return line

    return read


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def cmd_dev(args: argparse.Namespace) -> int:
    from .localstack import CONSOLE_MISSING, LocalStack, gateway_installed

    settings = Settings.from_env()
    if settings.uses_openai:
        endpoint = settings.openai_base_url or "https://api.openai.com/v1"
        print(f"model: {settings.model} at {mask_url(endpoint)}", flush=True)
    else:
        print(DEMO_NOTICE, flush=True)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    print("starting the local stack (Ctrl-C or /exit stops it)...", flush=True)
    # The console's key is this stack's own, made up now and gone with it.
    console_key = secrets.token_urlsafe(24) if args.console and gateway_installed() else None
    keys = None if console_key is None else f"{console_key}={args.user}"
    with LocalStack(flower=args.flower, gateway_keys=keys, concurrency=args.concurrency) as stack:
        if stack.gateway_url is not None:
            # The key rides in the fragment, which browsers never send to a server.
            print(
                f"console: {stack.gateway_url}/#key={console_key} (user {args.user!r})",
                flush=True,
            )
        elif args.console:
            print(CONSOLE_MISSING, flush=True)
        # This process is the producer: point the client (and workers.app) at the stack.
        for name in (
            "AGENT_RUNNER_BROKER_URL",
            "AGENT_RUNNER_REDIS_URL",
            "AGENT_RUNNER_SESSION_URL",
        ):
            os.environ[name] = stack.env[name]
        chat = Chat(
            app_name=args.app,
            user_id=args.user,
            session_url=stack.redis_url,
            timeout=args.timeout,
            out=sys.stdout,
        )
        try:
            chat.run(_stdin_lines(sys.stdin.isatty(), sys.stdout))
        except KeyboardInterrupt:
            print()
        print("stopping the local stack...", flush=True)
    print("bye", flush=True)
    return 0


# --- argument parsing --------------------------------------------------------------------


def _positive(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return number


def _non_negative(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return number


def _json_object(value: str) -> dict[str, Any]:
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object {{...}}, got {value}")
    return parsed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agent-runner",
        description="Run LLM agents on Celery workers and read their events from Redis.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = commands.add_parser(
        "dev", help="start a local stack (Redis, a run worker) and chat with an agent"
    )
    dev.add_argument("--flower", action="store_true", help="also start Flower")
    dev.add_argument(
        "--no-console",
        dest="console",
        action="store_false",
        help="do not start the gateway and its web console",
    )
    dev.add_argument(
        "--app", default="assistant", help="app name to chat with (default: assistant)"
    )
    dev.add_argument(
        "--user", default=os.environ.get("USER") or "dev", help="user ID (default: $USER)"
    )
    dev.add_argument("--concurrency", type=int, default=8, help="worker threads (default: 8)")
    dev.add_argument(
        "--timeout", type=_positive, default=120.0, help="seconds to wait for each event"
    )
    dev.set_defaults(handler=cmd_dev)

    submit = commands.add_parser("submit", help="submit a run and print its invocation ID")
    submit.add_argument("app_name")
    submit.add_argument("user_id")
    submit.add_argument("session_id", help="'' starts a new session")
    submit.add_argument("message")
    submit.add_argument("--follow", action="store_true", help="print the run's events")
    submit.add_argument(
        "--strategy",
        choices=("enqueue", "reject", "interrupt"),
        default="enqueue",
        help="what to do if the session is busy (default: enqueue)",
    )
    submit.add_argument(
        "--run-config",
        type=_json_object,
        default=None,
        metavar="JSON",
        help="this run's options, a JSON object: streaming, model, generation, max_iterations, "
        "runtime_state",
    )
    submit.add_argument("--json", action="store_true", help="events as JSON lines")
    submit.add_argument("--timeout", type=_positive, default=None, help="seconds per event")
    submit.set_defaults(handler=cmd_submit)

    tail = commands.add_parser("tail", help="print a run's events until it completes")
    tail.add_argument("invocation_id")
    tail.add_argument("--after-seq", type=int, default=None, help="skip events up to this seq")
    tail.add_argument("--json", action="store_true", help="events as JSON lines")
    tail.add_argument("--timeout", type=_positive, default=None, help="seconds per event")
    tail.add_argument(
        "--wait",
        type=_non_negative,
        default=DEFAULT_KNOWN_WAIT_S,
        help=(
            "seconds to wait for the invocation ID to be known (submitted, or taken by a "
            f"worker) before giving up (default: {DEFAULT_KNOWN_WAIT_S:g})"
        ),
    )
    tail.set_defaults(handler=cmd_tail)

    cancel = commands.add_parser("cancel", help="ask a run to stop")
    cancel.add_argument("invocation_id")
    cancel.set_defaults(handler=cmd_cancel)

    trace = commands.add_parser(
        "trace", help="print a run's execution trace as a tree with tokens and timings"
    )
    trace.add_argument("invocation_id")
    trace.add_argument("--app", default=None, help="the run's app (checked with --user)")
    trace.add_argument("--user", default=None, help="the run's user: only theirs is shown")
    trace.add_argument("--json", action="store_true", help="the trace as JSON")
    trace.set_defaults(handler=cmd_trace)

    feedback = commands.add_parser(
        "feedback", help="feedback on a step of a run; positive and correction teach the agent"
    )
    feedback.add_argument("invocation_id")
    feedback.add_argument("step_id", help="a step of the run's trace (agent-runner trace ID)")
    feedback.add_argument("kind", choices=["positive", "negative", "correction"])
    feedback.add_argument("content", help="what was right, wrong, or should be done instead")
    feedback.add_argument("--app", required=True, help="the run's app")
    feedback.add_argument("--user", required=True, help="the run's user (yours)")
    feedback.set_defaults(handler=cmd_feedback)

    schema = commands.add_parser("schema", help="print (or write) the JSON Schema of events")
    schema.add_argument(
        "path", nargs="?", default=None, help="file to write (default: standard output)"
    )
    schema.set_defaults(handler=cmd_schema)

    serve = commands.add_parser(
        "serve", help="serve the HTTP gateway (submit, stream, cancel, confirm; docs/gateway.md)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument(
        "--workers", type=int, default=1, help="uvicorn worker processes (default: 1)"
    )
    serve.add_argument("--log-level", default="info", help="uvicorn log level (default: info)")
    serve.set_defaults(handler=cmd_serve)

    add_artifact_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agent-runner`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        status: int = args.handler(args)
        sys.stdout.flush()  # a closed pipe shows up here at the latest
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE_STATUS
    except (AgentRunnerError, TimeoutError) as exc:
        print(f"agent-runner: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return status


def _silence_stdout() -> None:
    """Point standard output at /dev/null: its reader is gone, and the interpreter's final
    flush must not raise (and print a traceback) again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


if __name__ == "__main__":
    raise SystemExit(main())
