"""Runner: owns the session and the event stream of every run.

For each run the Runner gets or creates the session, picks the invocation ID, numbers every
event with a gap-free ``seq``, appends every non-partial event to the session before handing it
out (the user message first), and always ends with one ``runner.completion`` event, whatever
happened: completed, failed, cancelled, timeout or paused.

Runs execute in their own asyncio task, so :meth:`RunStream.cancel` (or cancelling the task that
iterates) stops the run at its next await and still delivers a ``cancelled`` completion; a run
past its ``timeout_s`` ends ``timeout`` the same way. Both always win, whatever the code the run
awaits does with a cancellation (:mod:`runner_core.stopping`): an append in flight lands first,
and what the store holds is what the stream handed out.

The Runner runs a tree of agents (``agent`` is its root). A run starts with the session's
active agent: the one the session's last ``agent.transfer`` handed to, else the root. When that
agent's run ends after a transfer, the Runner goes on with the target in the same invocation
(``seq`` continuing), at most ``max_transfers`` times; a transfer the Runner refuses (past the
limit, or to an agent its author may not reach) ends the run ``failed`` with an ``error``
event. A redelivered or resumed run goes on with the agent that was active
(:mod:`runner_core.transfer`), where that agent's tree was (:mod:`runner_core.progress`).

A run given a ``fence`` (a worker's lease token) takes the session's fence before it reads the
session and stores every event with it. If a newer owner took the session, the store refuses
the write (:class:`~runner_core.errors.FencedError`) and the run stops quietly: no error event,
no completion; the stream raises the ``FencedError`` instead, so the caller stops too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any

from .agent import BaseAgent
from .artifacts import ArtifactService, check_artifact_service
from .background_summaries import BackgroundSummaries
from .context import waiting_tool_calls
from .errors import (
    AgentRunnerError,
    FencedError,
    InvalidRequestError,
    SessionBackendError,
    SessionNotFoundError,
    UnknownToolCallError,
)
from .events import (
    AgentTransferEvent,
    ErrorEvent,
    Event,
    EventBase,
    EventError,
    EventNumbering,
    MessageEvent,
    RunCompletionEvent,
    RunRestartedEvent,
    RunStatus,
    ToolResultEvent,
    Usage,
    state_delta_of,
    usage_of,
)
from .invocation import InvocationContext, RunOutcome, ToolDecision
from .memory import MemoryService
from .memory_injection import MemoryInjection
from .messages import Message, coerce_message
from .plugins import CallbackError, GuardrailTripped, Plugin, call_hook, plugin_scopes
from .progress import run_of
from .run_config import RunConfig, coerce_run_config
from .session import (
    TEMP_PREFIX,
    Session,
    SessionKey,
    SessionService,
    open_session,
    validate_identifier,
)
from .stopping import RunStop, call_store
from .transfer import active_agent, check_agent_tree, transfer_problem

__all__ = ["DEFAULT_MAX_TRANSFERS", "RunStream", "Runner"]

logger = logging.getLogger(__name__)

#: How many transfers between agents one run may make unless ``Runner(max_transfers=)`` says.
DEFAULT_MAX_TRANSFERS = 10


#: How many unstored events (``message.delta`` and other partial events) a run may hand out
#: ahead of its reader before it waits for the reader again.
PARTIAL_RUN_AHEAD = 64


class _Handoff:
    """Hands events from the run's task to the reader.

    The run waits for the reader to ask for the next event (:meth:`turn`) before it stores and
    hands over the next complete event, so a run never stores ahead of what its reader has
    handled. A worker that publishes each event before asking for the next therefore never has
    a stored event that was not published except the one in hand, which keeps redelivery
    gap-free. Partial events are not stored: they do not wait for the reader unless
    :data:`PARTIAL_RUN_AHEAD` of them are waiting already (:meth:`partial_turn`), so a reader
    that publishes can take all that arrived meanwhile in one round trip
    (:meth:`RunStream.ready`).
    """

    __slots__ = ("queue", "wanted")

    def __init__(self) -> None:
        #: Events, or the FencedError that stopped the run (the last item then).
        self.queue: asyncio.Queue[Event | FencedError] = asyncio.Queue()
        self.wanted = asyncio.Event()

    async def turn(self) -> None:
        await self.wanted.wait()

    async def partial_turn(self) -> None:
        if self.queue.qsize() >= PARTIAL_RUN_AHEAD:
            await self.wanted.wait()

    def put(self, event: Event) -> None:
        self.wanted.clear()
        self.queue.put_nowait(event)

    def stop(self, error: FencedError) -> None:
        """End the stream without a completion: the run lost its session to a newer owner."""
        self.queue.put_nowait(error)


class RunStream:
    """The events of one run, as an async iterator; the last one is ``runner.completion``.

    Use it directly in ``async for``, or as ``async with runner.run(...) as stream:`` so that
    leaving the block early cancels the run.
    """

    def __init__(
        self,
        body: Callable[[_Handoff], Coroutine[Any, Any, None]],
        invocation_id: str,
        stop: RunStop,
    ) -> None:
        self.invocation_id = invocation_id
        self._body = body
        self._stop = stop
        self._handoff = _Handoff()
        self._task: asyncio.Task[None] | None = None
        self._completion: RunCompletionEvent | None = None
        self._fenced: FencedError | None = None

    def _start(self) -> asyncio.Task[None]:
        if self._task is None:
            # Never cancelled before it runs: a cancel asked for already is taken in by the
            # run's first check, so the stream still ends with a completion.
            self._task = asyncio.get_running_loop().create_task(self._body(self._handoff))
        return self._task

    def __aiter__(self) -> RunStream:
        return self

    async def __anext__(self) -> Event:
        """The next event.

        Raises:
            FencedError: the run was fenced off (a newer owner took its session); it stored
                nothing more and ends without a completion.
        """
        if self._completion is not None:
            raise StopAsyncIteration
        if self._fenced is not None:
            raise self._fenced
        self._start()
        try:
            if self._handoff.queue.empty():
                # Asks the run for more only once everything it handed out was taken: taking
                # a delta that ran ahead does not let the run store its next event.
                self._handoff.wanted.set()
            event = await self._handoff.queue.get()
        except asyncio.CancelledError:
            self.cancel()
            raise
        if isinstance(event, FencedError):
            self._fenced = event
            raise event
        if event.type == "runner.completion":
            self._completion = event
        return event

    def ready(self) -> list[Event]:
        """The events the run has handed out and the reader not taken yet, without waiting.

        Ends at the completion. A reader that publishes events can take the next one with
        ``anext`` and then these, and publish them together. Taking them does not ask the run
        for more (only ``anext`` does), so the run stores nothing new meanwhile.
        """
        events: list[Event] = []
        while self._completion is None and self._fenced is None:
            try:
                event = self._handoff.queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if isinstance(event, FencedError):
                self._fenced = event  # raised by the next anext
                break
            if event.type == "runner.completion":
                self._completion = event
            events.append(event)
        return events

    def cancel(self) -> None:
        """Stop the run; the stream still ends with a ``cancelled`` completion.

        The run stops at the await it is in (the model, a tool, the store, its reader), or at
        its next step if that code swallows the cancellation; an append already sent lands
        first. Before the run started, it starts only to end ``cancelled``.
        """
        self._stop.request("cancelled")

    async def completion(self) -> RunCompletionEvent:
        """Run to the end (consuming the remaining events) and return the completion."""
        async for _ in self:
            pass
        assert self._completion is not None
        return self._completion

    async def aclose(self) -> None:
        """Cancel the run if it is still going and wait until it has cleaned up."""
        if self._task is None:
            return
        self.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def __aenter__(self) -> RunStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _validate_confirmations(raw: Mapping[str, Any] | None) -> dict[str, ToolDecision]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidRequestError(
            "tool_confirmations must be a dict of {call_id: True | False | "
            '{"arguments": {...}}}.'
        )
    decisions: dict[str, ToolDecision] = {}
    for call_id, decision in raw.items():
        if isinstance(decision, bool):
            decisions[call_id] = decision
        elif (
            isinstance(decision, Mapping)
            and set(decision) == {"arguments"}
            and isinstance(decision["arguments"], dict | str)
        ):
            decisions[call_id] = dict(decision)
        else:
            raise InvalidRequestError(
                f"tool_confirmations[{call_id!r}] must be True (run it), False (refuse it) or "
                '{"arguments": {...}} (run it with edited arguments).'
            )
    return decisions


class Runner:
    """Runs an agent against sessions of one app.

    Args:
        app_name: the app the sessions belong to.
        agent: the agent to run: an :class:`~runner_core.agent.LLMAgent` or any
            :class:`~runner_core.agent.BaseAgent`.
        session_service: where sessions live. Default: a new in-memory store, which the
            Runner closes in :meth:`close`. A store passed in is never closed by the Runner.
        plugins: runner-wide hooks (:class:`~runner_core.plugins.Plugin`), run before the
            agent's own callbacks.
        max_transfers: the most transfers between agents one run may make (default 10); the
            one past it ends the run ``failed`` (``max_transfers_exceeded``).
        background_summaries: summarise sessions in this process
            (:class:`~runner_core.background_summaries.BackgroundSummaries`): after each
            completed run, once its completion is handed out, a summary job is queued for the
            session. :meth:`close` drains it (waits for queued and running jobs up to its
            ``drain_timeout_s``, then cancels them).
        memory_service: long-term memory (:class:`~runner_core.memory.MemoryService`): adds a
            :class:`~runner_core.memory_injection.MemoryInjection` plugin ahead of
            ``plugins``, which tells each agent the skills and experiences relevant to the
            request and answers its ``load_memory`` calls. Never closed by the Runner.
        artifact_service: where agents and tools save artifacts
            (:mod:`runner_core.artifacts`); default none (a tool that asks for one gets an
            error). A run with a ``fence`` takes the store's fence for its session before its
            agent runs, and every artifact write it makes carries the token. Never closed by
            the Runner.

    Raises:
        InvalidRequestError: ``app_name`` is empty, too long or has invalid characters; the
            agent is not an agent or not the root of a valid tree
            (:func:`~runner_core.transfer.check_agent_tree`); a plugin is not a Plugin;
            ``max_transfers`` is not an int >= 1; ``background_summaries`` is not a
            BackgroundSummaries; ``artifact_service`` is not an ArtifactService.
    """

    def __init__(
        self,
        app_name: str,
        agent: BaseAgent,
        *,
        session_service: SessionService | None = None,
        plugins: Sequence[Plugin] = (),
        max_transfers: int = DEFAULT_MAX_TRANSFERS,
        background_summaries: BackgroundSummaries | None = None,
        memory_service: MemoryService | None = None,
        artifact_service: ArtifactService | None = None,
    ) -> None:
        self.app_name = validate_identifier(app_name, "app_name")
        if not isinstance(agent, BaseAgent):
            raise InvalidRequestError(
                f"Runner({app_name!r}, agent) needs an agent (an LLMAgent or a subclass of "
                f"runner_core.BaseAgent), got {type(agent).__name__}."
            )
        check_agent_tree(agent)
        if isinstance(max_transfers, bool) or not isinstance(max_transfers, int):
            raise InvalidRequestError("max_transfers must be an int >= 1.")
        if max_transfers < 1:
            raise InvalidRequestError(
                "max_transfers must be >= 1; to stop an agent from transferring, switch off "
                "its allow_transfer_to_* settings."
            )
        self.max_transfers = max_transfers
        for plugin in plugins:
            if not isinstance(plugin, Plugin):
                raise InvalidRequestError(
                    f"plugins must be runner_core.Plugin objects, got {type(plugin).__name__}."
                )
        self.plugins = list(plugins)
        self.memory_service = memory_service
        if memory_service is not None:
            # First, so that the plugins after it see the prompt with memory in it.
            self.plugins.insert(0, MemoryInjection(memory_service))
        if background_summaries is not None and not isinstance(
            background_summaries, BackgroundSummaries
        ):
            raise InvalidRequestError(
                "background_summaries must be a runner_core.BackgroundSummaries, got "
                f"{type(background_summaries).__name__}."
            )
        self.background_summaries = background_summaries
        self.artifact_service = check_artifact_service(artifact_service, "artifact_service")
        self.agent = agent
        self._owns_service = session_service is None
        if session_service is None:
            from .memory_sessions import InMemorySessionService

            session_service = InMemorySessionService()
        self.session_service: SessionService = session_service
        self._closed = False
        self._sync_loop: asyncio.AbstractEventLoop | None = None

    async def close(self) -> None:
        """Drain the background summaries, if any, then close what the Runner created
        itself. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.background_summaries is not None:
            await self.background_summaries.close()
        if self._owns_service:
            await self.session_service.close()

    async def __aenter__(self) -> Runner:
        return self

    async def delete_session(self, user_id: str, session_id: str) -> None:
        """Delete a session of this app, then its session-scoped artifacts (the user's
        ``user:`` ones stay), then what plugins keep for it (``after_session_deleted``: a
        trace recorder deletes the session's traces). Deleting a missing session is a no-op."""
        await self.session_service.delete_session(self.app_name, user_id, session_id)
        if self.artifact_service is not None:
            await self.artifact_service.delete_session_artifacts(
                self.app_name, user_id, session_id
            )
        failure: BaseException | None = None
        for plugin in self.plugins:
            try:
                await plugin.after_session_deleted(self.app_name, user_id, session_id)
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def run(
        self,
        user_id: str,
        session_id: str | None,
        message: str | Message | Mapping[str, Any] | None,
        *,
        messages: Sequence[str | Message | Mapping[str, Any]] | None = None,
        resume: bool = False,
        tool_confirmations: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        invocation_id: str | None = None,
        first_seq: int = 0,
        timeout_s: float | None = None,
        fence: int | None = None,
        attempt: int = 1,
        run_config: RunConfig | Mapping[str, Any] | None = None,
    ) -> RunStream:
        """Start a run; returns its event stream at once.

        Args:
            user_id: the user the session belongs to.
            session_id: the session; empty or None creates a new one with a generated ID.
            message: the user's input (text or a message); None only when resuming.
            messages: a prior conversation that seeds an empty session (the last user turn
                is not duplicated when it equals ``message``).
            resume: first run the tool calls the session left without results.
            tool_confirmations: answers for paused calls, ``{call_id: True | False |
                {"arguments": {...}}}``; implies ``resume``.
            request_id: the caller's ID, carried by the run's completion.
            invocation_id: default: a new UUID. If the session already holds events of this
                invocation (a redelivered run), the run continues it: stored events with
                ``seq >= first_seq`` are handed out again, completed tools are not re-run.
            first_seq: the first ``seq`` to use (events below it were already delivered).
            timeout_s: end the run with status ``timeout`` after this many seconds (counted
                from its start), whatever the code it is awaiting then does with the
                cancellation.
            fence: the caller's fencing token for the session (a worker's lease token): taken
                with ``take_fence`` before the session is read, and checked by every append.
                When a newer owner holds the session, the run stops without a completion and
                the stream raises :class:`~runner_core.errors.FencedError`.
            attempt: which attempt at this invocation this is (a worker's delivery count).
                From the second on, the run hands out one ``run.restarted`` event (never
                stored) once it has handed out the stored events readers may have missed and
                before it goes on: readers drop the partial text published after its
                ``discard_after_seq`` (docs/events.md, "Redelivery").
            run_config: this run's options (:class:`~runner_core.run_config.RunConfig`, or
                the same fields as a dict): streaming, model, generation settings, max
                iterations, and ``runtime_state`` for tools and callbacks.

        Raises:
            InvalidRequestError: a bad ID, message, confirmation or timeout, naming the field.
        """
        if self._closed:
            raise InvalidRequestError("this Runner is closed; create a new one.")
        config = coerce_run_config(
            dict(run_config) if isinstance(run_config, Mapping) else run_config
        )
        validate_identifier(user_id, "user_id")
        if session_id:
            validate_identifier(session_id, "session_id")
        if request_id is not None and not isinstance(request_id, str):
            raise InvalidRequestError("request_id must be a string.")
        decisions = _validate_confirmations(tool_confirmations)
        resume = resume or bool(decisions)
        user_message = coerce_message(message) if message is not None else None
        if user_message is None and not resume:
            raise InvalidRequestError(
                "message is required unless resume=True (or tool_confirmations are given)."
            )
        if user_message is not None and user_message.role != "user":
            raise InvalidRequestError(
                f"message must have role 'user', got {user_message.role!r}."
            )
        seed = [
            coerce_message(m, field=f"messages[{i}]") for i, m in enumerate(messages or ())
        ]
        if timeout_s is not None and not timeout_s > 0:
            raise InvalidRequestError("timeout_s must be a positive number of seconds.")
        if first_seq < 0:
            raise InvalidRequestError("first_seq must be >= 0.")
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise InvalidRequestError("attempt must be an int >= 1 (1 for a first attempt).")
        if fence is not None and (isinstance(fence, bool) or not isinstance(fence, int)):
            raise InvalidRequestError("fence must be an int (a lease's fencing token).")
        invocation_id = invocation_id or uuid.uuid4().hex
        validate_identifier(invocation_id, "invocation_id")
        plan = _RunPlan(
            runner=self,
            user_id=user_id,
            session_id=session_id or None,
            message=user_message,
            seed=seed,
            resume=resume,
            decisions=decisions,
            request_id=request_id,
            invocation_id=invocation_id,
            next_seq=first_seq,
            timeout_s=timeout_s,
            fence=fence,
            attempt=attempt,
            run_config=config,
        )
        return RunStream(plan.execute, invocation_id, plan.stop)

    def run_sync(
        self,
        user_id: str,
        session_id: str | None,
        message: str | Message | Mapping[str, Any] | None,
        **options: Any,
    ) -> RunCompletionEvent:
        """Blocking convenience for scripts: run to the end and return the completion.

        Uses one private event loop per Runner, so clients stay usable across calls. Do not
        call it from inside a running event loop.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # no loop running here: run_sync may start its own
        else:
            raise RuntimeError(
                "Runner.run_sync cannot run inside a running event loop; there, use "
                "`completion = await runner.run(user_id, session_id, message).completion()` "
                "(or iterate `async for event in runner.run(...)`)."
            )
        if self._sync_loop is None:
            self._sync_loop = asyncio.new_event_loop()

        async def go() -> RunCompletionEvent:
            return await self.run(user_id, session_id, message, **options).completion()

        return self._sync_loop.run_until_complete(go())

    def close_sync(self) -> None:
        """Close the Runner and the private loop of :meth:`run_sync`."""
        loop = self._sync_loop or asyncio.new_event_loop()
        try:
            loop.run_until_complete(self.close())
        finally:
            loop.close()
            self._sync_loop = None


def _error_of(exc: Exception) -> EventError:
    """The error event's payload for what ended a run: the project's own errors by their
    ``error_type`` (a guardrail's name as the code), anything else as ``internal_error``."""
    if isinstance(exc, InvalidRequestError):
        return EventError(type="invalid_request", message=str(exc))
    if isinstance(exc, GuardrailTripped):
        return EventError(type=exc.error_type, message=str(exc), code=exc.guardrail)
    if isinstance(exc, CallbackError):
        return EventError(type=exc.error_type, message=str(exc))
    return EventError(type="internal_error", message=f"{type(exc).__name__}: {exc}")


class _RunPlan:
    """One run's parameters and progress; ``execute`` is the body of its task."""

    def __init__(
        self,
        *,
        runner: Runner,
        user_id: str,
        session_id: str | None,
        message: Message | None,
        seed: list[Message],
        resume: bool,
        decisions: dict[str, ToolDecision],
        request_id: str | None,
        invocation_id: str,
        next_seq: int,
        timeout_s: float | None,
        fence: int | None,
        attempt: int = 1,
        run_config: RunConfig | None = None,
    ) -> None:
        self.runner = runner
        self.run_config = run_config or RunConfig()
        #: The root of the agent tree.
        self.agent = runner.agent
        #: The agent running now: the session's active agent, then each transfer's target.
        self.active: BaseAgent = runner.agent
        #: Transfers made in this invocation (stored ones included, on a redelivery).
        self.transfers = 0
        self.service = runner.session_service
        self.user_id = user_id
        self.session_id = session_id
        self.message = message
        self.seed = seed
        self.resume = resume
        self.decisions = decisions
        self.request_id = request_id
        self.invocation_id = invocation_id
        self.numbering = EventNumbering(next_seq)
        #: message.delta text was handed out since the last complete event.
        self._text_open = False
        self.timeout_s = timeout_s
        self.stop = RunStop(timeout_s)
        self.fence = fence
        self.attempt = attempt
        self.usage = Usage()
        #: The run's usage per author of the events that carry it, to price it per agent.
        self.usage_by_author: dict[str, Usage] = {}
        #: A plugin's replacement of the final answer (on_event): (the agent's text, the stored
        #: text). The completion reports what was stored.
        self.replaced_answer: tuple[str | None, str | None] | None = None
        self.ctx: InvocationContext | None = None
        self.handoff = _Handoff()
        #: The plugins' run scopes, entered once the context exists, exited before the
        #: completion is built.
        self.scopes = contextlib.AsyncExitStack()

    # --- the task body -------------------------------------------------------------------

    async def execute(self, handoff: _Handoff) -> None:
        self.handoff = handoff
        self.stop.begin()
        try:
            outcome = await self._close_scopes(await self._after_run(await self._outcome()))
        except FencedError as exc:
            with contextlib.suppress(Exception):
                await self.scopes.__aexit__(type(exc), exc, exc.__traceback__)
            handoff.stop(exc)  # not ours any more: nothing more is stored or handed out
            return
        finally:
            self.stop.settle()
        completion = self._completion_event(outcome)
        self._stamp(completion)
        await self._after_completion(completion)
        self.handoff.put(completion)
        summaries = self.runner.background_summaries
        if summaries is not None and completion.status == "completed" and self.ctx is not None:
            # After the hand-out: queuing never waits, so the completion is not delayed.
            key = SessionKey(self.runner.app_name, self.user_id, self.ctx.session.id)
            summaries.submit(self.service, key)

    async def _outcome(self) -> RunOutcome:
        """Run the agent; how it ended. Raises FencedError when the run lost its session.

        A stop asked for before the run ended is how it ended, however it got there: the
        code it awaited may have swallowed the cancellation, or turned it into an error.
        """
        failure: Exception | None = None
        try:
            self.stop.check()  # cancelled before it started
            outcome = await self._run()
        except FencedError:
            raise
        except asyncio.CancelledError:
            self.stop.note_cancelled()  # also when the task itself was cancelled
            outcome = RunOutcome(status="cancelled")
        except Exception as exc:
            failure = exc
        stop = self.stop.settle()
        if stop == "cancelled":
            return RunOutcome(status="cancelled")
        if stop == "timeout":
            error = EventError(
                type="timeout", message=f"the run did not finish within {self.timeout_s} s."
            )
            await self._emit_error(error)
            return RunOutcome(status="timeout", error=error)
        if failure is not None:
            return await self._fail(failure)
        return outcome

    async def _close_scopes(self, outcome: RunOutcome) -> RunOutcome:
        """Exit the plugins' run scopes, ``ctx.outcome`` set to how the run ended; a scope
        that fails on the way out fails the run."""
        if self.ctx is None:
            return outcome
        self.ctx.outcome = outcome
        try:
            await self.scopes.aclose()
        except FencedError:
            raise
        except Exception as exc:
            return await self._fail(exc)
        return outcome

    async def _after_run(self, outcome: RunOutcome) -> RunOutcome:
        """The plugins' ``after_run`` hooks; one that raises fails the run."""
        ctx = self.ctx
        if ctx is None or not ctx.plugins or self.stop.settle() is not None:
            return outcome
        try:
            for plugin in ctx.plugins:
                where = f"plugin {plugin.name!r} after_run"
                await call_hook(where, plugin.after_run, ctx, outcome)
        except FencedError:
            raise
        except Exception as exc:
            return await self._fail(exc)
        return outcome

    async def _fail(self, exc: Exception) -> RunOutcome:
        """End the run ``failed`` with an error event for ``exc``."""
        if isinstance(exc, SessionBackendError):
            error = EventError(type="session_backend_error", message=str(exc))
            self._stamp_and_emit(self._error_event(error))  # the store is failing: not stored
        else:
            error = _error_of(exc)
            await self._emit_error(error)
        return RunOutcome(status="failed", error=error)

    async def _run(self) -> RunOutcome:
        session = await self._load_session()
        ctx = InvocationContext(
            app_name=self.runner.app_name,
            user_id=self.user_id,
            session=session,
            invocation_id=self.invocation_id,
            request_id=self.request_id,
            tool_confirmations=self.decisions,
            run_config=self.run_config,
            plugins=self.runner.plugins,
            artifact_service=self.runner.artifact_service,
            fence=self.fence,
        )
        if self.fence is not None and ctx.artifact_service is not None:
            await call_store(
                self.stop,
                ctx.artifact_service.take_fence(ctx.app_name, ctx.user_id, session.id, self.fence),
            )
        self.ctx = ctx
        self.active = active_agent(self.agent, session.events)
        await self.scopes.enter_async_context(plugin_scopes(ctx.plugins, "run", ctx))
        for plugin in ctx.plugins:
            await call_hook(f"plugin {plugin.name!r} before_run", plugin.before_run, ctx)
        prior = [e for e in session.events if e.invocation_id == self.invocation_id]
        if prior:
            return await self._continue(ctx, prior)
        await self._announce_restart(discard_after_seq=self.numbering.next_seq - 1)

        pending_ids = {call.id for call in waiting_tool_calls(session.events)}
        unknown = sorted(set(self.decisions) - pending_ids)
        if unknown:
            waiting = ", ".join(sorted(pending_ids)) or "none"
            raise UnknownToolCallError(
                f"tool_confirmations name call IDs no paused run is waiting on: "
                f"{', '.join(unknown)}. Calls waiting in this session: {waiting}."
            )
        if self.resume and not pending_ids and self.message is None:
            raise InvalidRequestError(
                "resume=True but the session has no tool calls waiting; send a message instead."
            )
        if self.seed and not session.events:
            await self._append_seed(ctx)
        if self.resume and pending_ids:
            refused = await self._drive(ctx, self.active.resume(ctx))
            if refused is not None:
                return refused
            if ctx.outcome.status == "paused":
                return ctx.outcome
        if self.message is not None and not self._seed_ends_with_message():
            await self._record(ctx.message_event("user", self.message))
        return await self._loop(ctx)

    async def _continue(self, ctx: InvocationContext, prior: list[Event]) -> RunOutcome:
        """A redelivered invocation: hand out what subscribers may have missed, then go on.

        A run that ended with an error, or paused with no answers given, ends so again.
        Otherwise the calls the last turn left without results run, and the active agent runs
        again from the session: its runs (and its sub-agents') that answered are done and not
        run again (:mod:`runner_core.progress`), so a finished invocation completes with its
        stored answer without a model call, and a tree goes on where it was.
        """
        first_unseen = self.numbering.next_seq
        self.numbering.next_seq = max(first_unseen, max(e.seq for e in prior) + 1)
        self.transfers = sum(event.type == "agent.transfer" for event in prior)
        for event in prior:
            self._count_usage(event)
            if event.seq >= first_unseen:
                await self.handoff.turn()
                self.stop.check()
                self.handoff.put(event)
        await self._announce_restart(discard_after_seq=prior[-1].seq)
        last = prior[-1]
        if last.type == "error":
            return RunOutcome(status="failed", error=last.error)
        if last.type == "run.paused" and not self.decisions:
            return RunOutcome(status="paused")
        refused = await self._drive(ctx, self.active.resume(ctx))
        if refused is not None:
            return refused
        if ctx.outcome.status == "paused":
            return ctx.outcome
        return await self._loop(ctx)

    async def _loop(self, ctx: InvocationContext) -> RunOutcome:
        """Run the active agent; after a transfer, its target, until one ends without one.

        A transfer takes effect when its agent's run ends ``completed`` and the invocation was
        not ended (``end_invocation``); the session's next run starts with the target anyway.
        """
        while True:
            if ctx.transfer_to is not None:
                if ctx.ended or ctx.outcome.status != "completed":
                    return ctx.outcome
                target = self.agent.find_agent(ctx.transfer_to)
                assert target is not None  # checked when the transfer was recorded
                self.active = target
                ctx.transfer_to = None
                ctx.outcome = RunOutcome()
            # ``ctx.end_invocation()`` is the agent's to honour at its next step: stopping
            # here, after any event, would drop the other tool results of the turn.
            refused = await self._drive(ctx, run_of(self.active, ctx))
            if refused is not None:
                return refused
            if ctx.transfer_to is None:
                return ctx.outcome

    async def _drive(
        self, ctx: InvocationContext, events: AsyncIterator[Event]
    ) -> RunOutcome | None:
        """Record an agent's events. A transfer among them sets ``ctx.transfer_to`` once the
        Runner accepts it; one it refuses stops the agent and ends the run: the returned
        outcome (None when the agent ran to its end).

        However it stops (a refused transfer, a cancel, a timeout), the agent's generator is
        closed before the run goes on, so its clean-up (a parallel agent's branches, a model
        stream) is done before the completion."""
        try:
            async for event in events:
                if event.type == "agent.transfer":
                    error = self._refusal(event)
                    if error is not None:
                        close = getattr(events, "aclose", None)
                        if close is not None:
                            await close()
                        await self._emit_error(error)
                        return RunOutcome(status="failed", error=error)
                    self.transfers += 1
                    ctx.transfer_to = event.to_agent
                await self._record_emitted(ctx)
                await self._record(event)
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()
        await self._record_emitted(ctx)
        return None

    async def _record_emitted(self, ctx: InvocationContext) -> None:
        """Record the events hooks and tools added with ``ctx.emit``, in order."""
        while ctx.emitted:
            await self._record(ctx.emitted.pop(0))  # type: ignore[arg-type]

    def _refusal(self, event: AgentTransferEvent) -> EventError | None:
        """Why the Runner refuses a transfer (its run then fails), or None."""
        if self.transfers >= self.runner.max_transfers:
            return EventError(
                type="max_transfers_exceeded",
                message=(
                    f"agent {event.author!r} asked for transfer number {self.transfers + 1} "
                    f"(to {event.to_agent!r}); a run may make {self.runner.max_transfers}. "
                    "Check the agents' instructions, or raise Runner(max_transfers=)."
                ),
            )
        author = self.agent.find_agent(event.author)
        problem = (
            f"{event.author!r} is not an agent of {self.agent.name!r}'s tree."
            if author is None
            else transfer_problem(author, event.to_agent)
        )
        if problem is None:
            return None
        return EventError(
            type="invalid_transfer",
            message=f"the transfer from {event.author!r} to {event.to_agent!r} was refused: "
            f"{problem}",
        )

    # --- sessions ------------------------------------------------------------------------

    async def _load_session(self) -> Session:
        app_name, user_id = self.runner.app_name, self.user_id
        stop, service = self.stop, self.service
        if self.session_id is None:
            created = await call_store(stop, service.create_session(app_name, user_id))
            if self.fence is not None:
                await call_store(
                    stop, service.take_fence(app_name, user_id, created.id, self.fence)
                )
            return created
        # The fence first (from then on an older owner's appends are refused, so the session
        # read holds everything it will ever have stored), then read or create: one call
        # where the store can do it in one.
        session = await call_store(
            stop,
            open_session(
                service, app_name, user_id, self.session_id, fence=self.fence,
                create=not self.resume,
            ),
        )  # fmt: skip
        if session is None:
            raise SessionNotFoundError(
                f"session {self.session_id!r} does not exist, so there is nothing to resume; "
                "start it with a message instead."
            )
        return session

    def _seed_ends_with_message(self) -> bool:
        if not self.seed or self.message is None:
            return False
        last = self.seed[-1]
        return last.role == "user" and last.content == self.message.content

    async def _append_seed(self, ctx: InvocationContext) -> None:
        for message in self.seed:
            event: Event
            if message.role == "tool":
                event = ctx.event(ToolResultEvent, self.agent.name, message=message)
            else:
                author = self.agent.name if message.role == "assistant" else message.role
                event = ctx.message_event(author, message)
            await self._record(event)

    # --- emitting ------------------------------------------------------------------------

    def _stamp(self, event: Event) -> Event:
        """Number the event. An ``error`` that ends text still being streamed (a model that
        failed mid-reply, a hook that refused the answer, a timeout) says it withdraws it."""
        if event.type == "error" and self._text_open and event.retracts_streamed_text is None:
            event.retracts_streamed_text = True
        if event.type == "message.delta":
            self._text_open = True
        elif event.type != "run.restarted":
            self._text_open = False
        self.numbering.stamp(event)
        return event

    def _stamp_and_emit(self, event: Event) -> None:
        """Hand out an event that is not stored, without waiting for the reader."""
        self.handoff.put(self._stamp(event))

    async def _announce_restart(self, *, discard_after_seq: int) -> None:
        """On a later attempt, hand out its ``run.restarted`` marker (not stored).

        It comes after every stored event of the invocation, so the only events it voids are
        the ``message.delta``s of the reply the dead attempt never finished.
        """
        if self.attempt < 2:
            return
        assert self.ctx is not None
        await self.handoff.turn()
        self.stop.check()
        marker = self.ctx.event(
            RunRestartedEvent,
            self.runner.app_name,
            attempt=self.attempt,
            discard_after_seq=discard_after_seq,
        )
        self.handoff.put(self._stamp(marker))

    async def _record(self, event: Event) -> None:
        """Number the event, store it if it is complete, then hand it out.

        A step boundary: a stop asked for is taken in before the event is numbered and after
        it is handed out. An append is never cut short: it lands or fails, so what is stored is
        exactly what is handed out (``call_store(land=True)``).
        """
        assert self.ctx is not None
        if event.partial:
            await self.handoff.partial_turn()  # not stored: it need not wait for the reader
        else:
            await self.handoff.turn()
        self.stop.check()
        event = await self._on_event(self._without_temp_state(event))
        self._stamp(event)
        if not event.partial:
            try:
                await call_store(
                    self.stop,
                    self.service.append_event(self.ctx.session, event, fence=self.fence),
                    land=True,
                )
            except BaseException:
                self.numbering.take_back()  # not stored, not handed out: seq stays gap-free
                raise
            self._count_usage(event)
        try:
            await self._after_event(event)
        finally:
            self.handoff.put(event)  # stored, so handed out whatever the hooks did
        self.stop.check()

    async def _after_event(self, event: Event) -> None:
        """The plugins' ``after_event`` hooks (those that have one)."""
        assert self.ctx is not None
        for plugin in self.ctx.plugins:
            if type(plugin).after_event is not Plugin.after_event:
                where = f"plugin {plugin.name!r} after_event"
                await call_hook(where, plugin.after_event, self.ctx, event)

    async def _after_completion(self, completion: RunCompletionEvent) -> None:
        """``after_event`` with the completion: the run has ended, so a hook that fails (or a
        cancel that reaches it) is logged and the completion handed out all the same."""
        if self.ctx is None or not self.ctx.plugins:
            return
        try:
            await self._after_event(completion)
        except (Exception, asyncio.CancelledError) as exc:
            logger.warning(
                "run %s: after_event on its completion failed: %s: %s",
                self.invocation_id, type(exc).__name__, exc,
            )  # fmt: skip

    def _count_usage(self, event: Event) -> None:
        if (usage := usage_of(event)) is not None:
            self.usage = self.usage + usage
            before = self.usage_by_author.get(event.author, Usage())
            self.usage_by_author[event.author] = before + usage

    def _cost(self) -> float | None:
        """The run's cost: each event's usage at the price of its author's model (an author
        outside the tree, at the root's); None when one of them has no price."""
        root_price = getattr(self.agent.model, "price", None)
        if not self.usage_by_author:
            return root_price.cost(self.usage) if root_price is not None else None
        cost = 0.0
        for author, usage in self.usage_by_author.items():
            agent = self.agent.find_agent(author)
            price = getattr(agent.model, "price", None) if agent is not None else root_price
            if price is None:
                return None
            cost += price.cost(usage)
        return cost

    def _without_temp_state(self, event: Event) -> Event:
        """The event without its ``temp:`` state, which the run keeps for itself (never
        stored or published)."""
        assert self.ctx is not None
        delta = state_delta_of(event)
        if not any(key.startswith(TEMP_PREFIX) for key in delta):
            return event
        self.ctx.note_temp_state(delta)
        kept = {k: v for k, v in delta.items() if not k.startswith(TEMP_PREFIX)}
        if event.type == "state.update":
            return event.model_copy(update={"state_delta": kept})
        return event.model_copy(update={"state_delta": kept or None})

    async def _on_event(self, event: Event) -> Event:
        """The plugins' ``on_event`` hooks: the first that returns an event replaces it."""
        assert self.ctx is not None
        for plugin in self.ctx.plugins:
            where = f"plugin {plugin.name!r} on_event"
            replaced = await call_hook(where, plugin.on_event, self.ctx, event)
            if replaced is not None:
                if not isinstance(replaced, EventBase) or replaced.type != event.type:
                    raise CallbackError(
                        f"{where} returned {type(replaced).__name__}; return None or an event "
                        f"of the same type ({event.type})."
                    )
                checked = type(event).model_validate(replaced.model_dump())  # a checked copy
                if (
                    isinstance(event, MessageEvent)
                    and isinstance(checked, MessageEvent)
                    and event.is_final_response()
                ):
                    self.replaced_answer = (event.message.content, checked.message.content)
                return checked
        return event

    def _error_event(self, error: EventError) -> ErrorEvent:
        return ErrorEvent(
            invocation_id=self.invocation_id, author=self.runner.app_name, error=error
        )

    async def _emit_error(self, error: EventError) -> None:
        """Store the error event when the session is there, and hand it out either way."""
        event = self._error_event(error)
        if self.ctx is None:
            self._stamp_and_emit(event)
            return
        try:
            await self._record(event)
        except FencedError:
            raise
        except (AgentRunnerError, asyncio.CancelledError):
            self._stamp_and_emit(event)  # not stored, still handed out (with a fresh seq)

    def _session_id_for_events(self) -> str:
        if self.ctx is not None:
            return self.ctx.session.id
        return self.session_id or ""

    def _completion_event(self, outcome: RunOutcome) -> RunCompletionEvent:
        status: RunStatus = outcome.status
        final_text = outcome.final_text
        if self.replaced_answer is not None and final_text == self.replaced_answer[0]:
            final_text = self.replaced_answer[1]
        return RunCompletionEvent(
            invocation_id=self.invocation_id,
            author=self.runner.app_name,
            app_name=self.runner.app_name,
            user_id=self.user_id,
            session_id=self._session_id_for_events(),
            request_id=self.request_id,
            status=status,
            final_text=final_text,
            usage=self.usage,
            cost=self._cost(),
            error=outcome.error,
            output=outcome.output,
            trace_id=self.ctx.trace_id if self.ctx is not None else None,
        )
