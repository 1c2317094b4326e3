"""Session summaries: when to summarise, what to cover, and how to ask the model.

A :class:`Summarizer` compresses the events of a session that no summary covers yet into a new
summary, using the previous summary as input, so each summary covers the whole conversation up
to its boundary (the last event it covers). Events are never deleted: the summary is stored
beside them (``SessionService.put_summary``) and context building sends the summary followed by
the events after its boundary (``LLMAgent(add_session_summary=True)``).

Where the boundary may fall (:func:`summary_cut`):

- never between an assistant tool call and its results: a call and all its results are on the
  same side;
- never past a pending confirmation: a tool-call turn with calls still unanswered (a paused
  run waiting for approval, or a run still going) stays after the boundary, with everything
  that follows it. A user message after such a turn abandons its open calls (the caller moved
  on without resuming), so the turn can be summarised then;
- ``skip_recent`` newest events are never summarised.

Which events (``filter_key``): ``""`` the whole session; an agent's name, the user's messages
and that agent's events; ``branch_filter_key(branch)`` (``"branch:{branch}"``), what an agent
on that branch of a parallel agent sees (the main line and its own branch, never a sibling's:
:func:`~runner_core.context.sees_branch`). :func:`summary_filter_keys` lists the whole session's
key and the key of every branch in a session.

When it fires: ``force``, or the checks. ``checks_any`` passes if any of its checks passes,
``checks_all`` if all of its checks pass; both must pass when both are given, and a summarizer
without checks always fires. Checks see the events that would be summarised
(:class:`SummaryDelta`).

The manual API: :func:`create_session_summary` (summarise and store now) and
:func:`get_session_summary_text`. One job of the background paths is
:func:`run_summary_attempt` (read, check, summarise within a time limit, store never
backwards); it is shared by the Celery shard queues (``workers.summaries``) and the in-process
queue (:mod:`runner_core.background_summaries`), which each add the ordering per session.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .context import BRANCH_KEY_PREFIX, branch_filter_key, sees_branch
from .errors import InvalidRequestError, ModelError, SessionNotFoundError
from .events import Event
from .messages import Message
from .model import GenerationConfig, Model, ModelRequest, complete_response
from .session import Session, SessionKey, SessionService, Summary

__all__ = [
    "BRANCH_KEY_PREFIX",
    "DEFAULT_SUMMARY_PROMPT",
    "Summarizer",
    "SummaryAttempt",
    "SummaryCheck",
    "SummaryDelta",
    "branch_filter_key",
    "check_event_count",
    "check_idle_time",
    "check_token_count",
    "conversation_text",
    "create_session_summary",
    "estimate_tokens",
    "get_session_summary_text",
    "run_summary_attempt",
    "run_summary_attempts",
    "summary_cut",
    "summary_filter_keys",
]

DEFAULT_SUMMARY_PROMPT = """\
Summarize the conversation below so that an assistant can continue it without the full \
history. Keep the user's goals, the facts established, decisions made, tool results that \
matter, and open questions. Write plain prose, no preamble.

Summary of the earlier conversation (may be empty):
{previous_summary}

Conversation since then:
{conversation_text}
"""

_WORD_LIMIT = "\nKeep the summary under {max_summary_words} words.\n"
_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_KNOWN_PLACEHOLDERS = frozenset({"conversation_text", "previous_summary", "max_summary_words"})


def estimate_tokens(text: str) -> int:
    """A cheap token estimate: about four characters per token."""
    return math.ceil(len(text) / 4)


@dataclass(frozen=True, slots=True)
class SummaryDelta:
    """What a check looks at: the events a summary would cover now.

    Attributes:
        events: the events after the current boundary, up to where the new one would fall.
        session: the whole session as read.
        previous: the stored summary this one would extend, if any.
        now: the time of the check.
    """

    events: Sequence[Event]
    session: Session
    previous: Summary | None
    now: datetime

    @property
    def text(self) -> str:
        """The events as the model would read them (see :func:`conversation_text`)."""
        return conversation_text(self.events)


#: A check: True when a summary is due for this delta. Build them with ``check_*`` or write one.
SummaryCheck = Callable[[SummaryDelta], bool]


@dataclass(frozen=True, slots=True)
class _Check:
    description: str
    test: Callable[[SummaryDelta], bool]

    def __call__(self, delta: SummaryDelta) -> bool:
        return self.test(delta)

    def __repr__(self) -> str:
        return self.description


def check_event_count(n: int) -> SummaryCheck:
    """Due when more than ``n`` events are waiting to be summarised."""
    if not isinstance(n, int) or n < 0:
        raise InvalidRequestError(f"check_event_count(n): n must be an int >= 0, got {n!r}.")
    return _Check(f"check_event_count({n})", lambda delta: len(delta.events) > n)


def check_token_count(n: int) -> SummaryCheck:
    """Due when the waiting events hold more than ``n`` tokens (estimated, chars / 4)."""
    if not isinstance(n, int) or n < 0:
        raise InvalidRequestError(f"check_token_count(n): n must be an int >= 0, got {n!r}.")
    return _Check(f"check_token_count({n})", lambda delta: estimate_tokens(delta.text) > n)


def check_idle_time(seconds: float) -> SummaryCheck:
    """Due when the conversation paused for at least ``seconds``: the time since the session's
    last event, or the pause before its latest user message, whichever is longer."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
        raise InvalidRequestError(
            f"check_idle_time(seconds): seconds must be a number >= 0, got {seconds!r}."
        )
    limit = timedelta(seconds=seconds)

    def idle(delta: SummaryDelta) -> bool:
        events = delta.session.events
        if not events:
            return False
        if delta.now - events[-1].created_at >= limit:
            return True
        for index in range(len(events) - 1, 0, -1):
            if events[index].is_user_message():
                return events[index].created_at - events[index - 1].created_at >= limit
        return False

    return _Check(f"check_idle_time({seconds:g})", idle)


def _validate_prompt(prompt: str, max_summary_words: int | None) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequestError("prompt must be a non-empty string with {conversation_text}.")
    found = set(_PLACEHOLDER_RE.findall(prompt))
    unknown = sorted(found - _KNOWN_PLACEHOLDERS)
    if unknown:
        names = ", ".join("{" + name + "}" for name in unknown)
        raise InvalidRequestError(
            f"prompt has unknown placeholder(s) {names}; the placeholders are "
            "{conversation_text} (required), {previous_summary} and {max_summary_words}."
        )
    if "conversation_text" not in found:
        raise InvalidRequestError(
            "prompt has no {conversation_text} placeholder; add it where the conversation "
            "to summarise should go."
        )
    if max_summary_words is not None and "max_summary_words" not in found:
        raise InvalidRequestError(
            f"max_summary_words={max_summary_words} but the prompt has no {{max_summary_words}} "
            "placeholder; add it (e.g. 'in at most {max_summary_words} words') or drop "
            "max_summary_words."
        )
    return prompt


def _fill(template: str, values: dict[str, str]) -> str:
    # One pass, so text inserted for one placeholder is never read as another placeholder.
    return _PLACEHOLDER_RE.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def conversation_text(events: Iterable[Event]) -> str:
    """The events as lines for the summary prompt.

    ``author: text`` for messages, ``[author called tool X with args: {...}]`` for tool calls,
    ``[X returned: ...]`` for results. Events without a message (state updates, errors, pauses)
    are left out.
    """
    lines: list[str] = []
    for event in events:
        if event.type != "message" and event.type != "tool.result":
            continue
        message = event.message
        if message.role == "tool":
            lines.append(f"[{message.name or 'tool'} returned: {message.text}]")
            continue
        author = "user" if message.role == "user" else event.author
        if message.text:
            lines.append(f"{author}: {message.text}")
        for call in message.tool_calls or ():
            lines.append(
                f"[{author} called tool {call.function.name} with args: {call.function.arguments}]"
            )
    return "\n".join(lines)


def summary_cut(events: Sequence[Event]) -> int:
    """How many of ``events`` (the events after the current boundary, oldest first) a summary
    may cover: the longest prefix that leaves no tool call without its results and no pending
    confirmation behind (see the module docstring). 0 means none."""
    open_calls: set[str] = set()
    cut = 0
    for index, event in enumerate(events):
        if event.type == "message":
            message = event.message
            if message.role == "user":
                open_calls.clear()  # the caller moved on: unanswered calls are abandoned
            elif message.role == "assistant" and message.tool_calls:
                open_calls.update(call.id for call in message.tool_calls)
        elif event.type == "tool.result" and event.message.tool_call_id:
            open_calls.discard(event.message.tool_call_id)
        if not open_calls:
            cut = index + 1
    return cut


def summary_filter_keys(session: Session) -> list[str]:
    """``""`` (the whole session), then the key of each branch in the session's events, in
    the order the branches first wrote."""
    branches = dict.fromkeys(event.branch for event in session.events if event.branch)
    return ["", *(branch_filter_key(branch) for branch in branches if branch)]


def _filtered(events: Sequence[Event], filter_key: str) -> list[tuple[int, Event]]:
    """``(position in events, event)`` of the events a ``filter_key`` summary covers."""
    if not filter_key:
        return list(enumerate(events))
    if filter_key.startswith(BRANCH_KEY_PREFIX):
        branch = filter_key[len(BRANCH_KEY_PREFIX) :]
        return [
            (index, event)
            for index, event in enumerate(events)
            if sees_branch(branch, event.branch)
        ]
    return [
        (index, event)
        for index, event in enumerate(events)
        if event.author == filter_key or event.is_user_message()
    ]


def _after_boundary(
    items: list[tuple[int, Event]], first_count: int, previous: Summary
) -> list[tuple[int, Event]]:
    for at, (_, event) in enumerate(items):
        if event.id == previous.last_event_id:
            return items[at + 1 :]
    # The boundary event is no longer in the session (evicted): go by the event count.
    return [(i, e) for i, e in items if first_count + i > previous.event_count]


class Summarizer:
    """Summarises sessions incrementally with a model.

    Args:
        model: the model that writes summaries (any :class:`~runner_core.model.Model`).
        checks_any: due when any of these checks passes.
        checks_all: due when all of these checks pass.
        max_summary_words: a length limit given to the model through ``{max_summary_words}``.
        prompt: the prompt template. It must contain ``{conversation_text}``; it may contain
            ``{previous_summary}`` (without it, the previous summary is put before the
            conversation text) and ``{max_summary_words}`` (required when
            ``max_summary_words`` is set). No other ``{name}`` placeholders.
        skip_recent: leave the newest N events out of every summary.
        generation: options of the model call (default: not streamed).

    Raises:
        InvalidRequestError: a prompt missing a required placeholder or with an unknown one, a
            bad ``max_summary_words`` or ``skip_recent``, or a check that is not callable.
    """

    def __init__(
        self,
        model: Model,
        *,
        checks_any: Iterable[SummaryCheck] = (),
        checks_all: Iterable[SummaryCheck] = (),
        max_summary_words: int | None = None,
        prompt: str | None = None,
        skip_recent: int = 0,
        generation: GenerationConfig | None = None,
    ) -> None:
        if max_summary_words is not None and (
            not isinstance(max_summary_words, int) or max_summary_words < 1
        ):
            raise InvalidRequestError(
                f"max_summary_words must be a whole number >= 1 or None, got {max_summary_words!r}."
            )
        if not isinstance(skip_recent, int) or skip_recent < 0:
            raise InvalidRequestError(f"skip_recent must be an int >= 0, got {skip_recent!r}.")
        self.checks_any = tuple(checks_any)
        self.checks_all = tuple(checks_all)
        for check in (*self.checks_any, *self.checks_all):
            if not callable(check):
                raise InvalidRequestError(
                    f"checks must be callables like check_event_count(20), got {check!r}."
                )
        if prompt is None:
            prompt = DEFAULT_SUMMARY_PROMPT + (_WORD_LIMIT if max_summary_words else "")
        self.prompt = _validate_prompt(prompt, max_summary_words)
        self.model = model
        self.max_summary_words = max_summary_words
        self.skip_recent = skip_recent
        self.generation = generation or GenerationConfig(stream=False)

    def __repr__(self) -> str:
        return (
            f"Summarizer(model={getattr(self.model, 'name', self.model)!r}, "
            f"checks_any={list(self.checks_any)!r}, checks_all={list(self.checks_all)!r}, "
            f"max_summary_words={self.max_summary_words!r}, skip_recent={self.skip_recent})"
        )

    # --- what to summarise ---------------------------------------------------------------

    def pending(self, session: Session, *, filter_key: str = "") -> list[Event]:
        """The events the next summary would cover (possibly none), oldest first."""
        return [event for _, event in self._pending(session, filter_key)]

    def _pending(self, session: Session, filter_key: str) -> list[tuple[int, Event]]:
        events = session.events
        # The count of events[0]: session.event_count counts every event ever appended.
        first_count = max(session.event_count, len(events)) - len(events) + 1
        items = _filtered(events, filter_key)
        previous = session.summaries.get(filter_key)
        if previous is not None:
            items = _after_boundary(items, first_count, previous)
        if self.skip_recent:
            items = items[: max(0, len(items) - self.skip_recent)]
        return items[: summary_cut([event for _, event in items])]

    def is_due(self, delta: SummaryDelta) -> bool:
        """Whether the checks pass for ``delta`` (always True without checks)."""
        if self.checks_any and not any(check(delta) for check in self.checks_any):
            return False
        return all(check(delta) for check in self.checks_all)

    def should_summarize(
        self, session: Session, *, filter_key: str = "", now: datetime | None = None
    ) -> bool:
        """True when :meth:`summarize` would call the model now (without ``force``)."""
        events = self.pending(session, filter_key=filter_key)
        if not events:
            return False
        delta = SummaryDelta(
            events, session, session.summaries.get(filter_key), now or datetime.now(UTC)
        )
        return self.is_due(delta)

    # --- summarising ---------------------------------------------------------------------

    def render_prompt(self, events: Sequence[Event], previous: Summary | None) -> str:
        """The prompt for the model: the template with its placeholders filled in."""
        previous_text = previous.text if previous is not None else ""
        text = conversation_text(events)
        if previous_text and "{previous_summary}" not in self.prompt:
            text = f"Summary of the earlier conversation:\n{previous_text}\n\n{text}"
        values = {
            "conversation_text": text,
            "previous_summary": previous_text,
            "max_summary_words": str(self.max_summary_words or ""),
        }
        return _fill(self.prompt, values)

    async def summarize(
        self,
        session: Session,
        *,
        force: bool = False,
        filter_key: str = "",
        now: datetime | None = None,
    ) -> Summary | None:
        """Summarise the events after ``session``'s current summary, extending it.

        The session is only read: store the result with ``SessionService.put_summary``
        (:func:`create_session_summary` does both).

        Args:
            session: the session as read from its store, with its events and summaries.
            force: summarise even if the checks do not pass.
            filter_key: which summary: ``""`` the whole session; an agent name summarises the
                user messages and that agent's events; :func:`branch_filter_key` what an agent
                on that branch sees.
            now: the time the checks use (default: now).

        Returns:
            The new summary; None when nothing is waiting to be summarised, when the checks
            do not pass (without ``force``), or when the model returned no text.

        Raises:
            ModelError: the model call failed. Nothing is returned to store.
        """
        items = self._pending(session, filter_key)
        if not items:
            return None
        events = [event for _, event in items]
        previous = session.summaries.get(filter_key)
        now = now or datetime.now(UTC)
        if not force and not self.is_due(SummaryDelta(events, session, previous, now)):
            return None
        text = await self._generate(self.render_prompt(events, previous))
        if not text:
            return None
        position, last = items[-1]
        first_count = max(session.event_count, len(session.events)) - len(session.events) + 1
        return Summary(
            text=text,
            filter_key=filter_key,
            last_event_id=last.id,
            event_count=first_count + position,
            last_event_at=last.created_at,
            created_at=datetime.now(UTC),
        )

    async def _generate(self, prompt: str) -> str:
        request = ModelRequest(messages=[Message.user(prompt)], generation=self.generation)
        response = await complete_response(self.model, request)
        return response.message.text.strip()


async def create_session_summary(
    service: SessionService,
    summarizer: Summarizer,
    app_name: str,
    user_id: str,
    session_id: str,
    *,
    force: bool = False,
    filter_key: str = "",
) -> Summary | None:
    """Summarise a session now and store the summary if it is newer than the stored one.

    Returns:
        The summary stored, or None when none was due (see :meth:`Summarizer.summarize`) or a
        summary covering as many events or more was stored meanwhile.

    Raises:
        SessionNotFoundError: the session does not exist.
        ModelError: the model call failed; the stored summary is unchanged.
        SessionBackendError: the store failed.
    """
    session = await service.get_session(app_name, user_id, session_id)
    if session is None:
        raise SessionNotFoundError(
            f"cannot summarise session {session_id!r} of user {user_id!r} in app "
            f"{app_name!r}: it does not exist (or has expired)."
        )
    summary = await summarizer.summarize(session, force=force, filter_key=filter_key)
    if summary is None:
        return None
    stored = await service.put_summary(app_name, user_id, session_id, summary)
    return summary if stored else None


async def get_session_summary_text(
    service: SessionService,
    app_name: str,
    user_id: str,
    session_id: str,
    *,
    filter_key: str = "",
) -> str | None:
    """The text of the session's stored summary, or None if it has none."""
    summary = await service.get_summary(app_name, user_id, session_id, filter_key=filter_key)
    return None if summary is None else summary.text


@dataclass(frozen=True, slots=True)
class SummaryAttempt:
    """What one :func:`run_summary_attempt` did.

    ``status``: ``stored`` (``event_count`` is the new boundary), ``not_due`` (nothing new
    after the boundary, or the checks did not pass), ``superseded`` (a summary covering as many
    events or more was stored meanwhile), ``timeout`` or ``model_error`` (nothing stored), or
    ``no_session``.
    """

    status: str
    event_count: int | None = None
    detail: str | None = None


async def run_summary_attempt(
    service: SessionService,
    summarizer: Summarizer,
    session: SessionKey,
    *,
    timeout_s: float,
    filter_key: str = "",
    force: bool = False,
) -> SummaryAttempt:
    """One background summary job: read the session, summarise it if due, store it.

    The read and the model call are bounded by ``timeout_s``; past it the model call is
    cancelled and nothing is stored. The store is a compare-and-set on the event count
    (``put_summary``), so an attempt never moves a stored boundary back. The caller keeps
    attempts on one session from overlapping (a lease, or a per-session queue).

    Raises:
        SessionBackendError: the store failed.
    """
    try:
        async with asyncio.timeout(timeout_s):
            current = await service.get_session(
                session.app_name, session.user_id, session.session_id
            )
            if current is None:
                return SummaryAttempt("no_session")
            summary = await summarizer.summarize(current, force=force, filter_key=filter_key)
    except TimeoutError:
        return SummaryAttempt("timeout", detail=f"no summary within {timeout_s:g} s")
    except ModelError as exc:
        return SummaryAttempt("model_error", detail=f"{type(exc).__name__}: {exc}")
    if summary is None:
        return SummaryAttempt("not_due")
    stored = await service.put_summary(
        session.app_name, session.user_id, session.session_id, summary
    )
    return SummaryAttempt("stored" if stored else "superseded", event_count=summary.event_count)


async def run_summary_attempts(
    service: SessionService,
    summarizer: Summarizer,
    session: SessionKey,
    *,
    timeout_s: float,
    per_branch: bool = False,
    filter_key: str = "",
    force: bool = False,
) -> list[tuple[str, SummaryAttempt]]:
    """One summary job, the same for the Celery shard queues and in-process summaries.

    The job makes the ``filter_key`` attempt (``""``: the whole session), then, with
    ``per_branch`` and no ``filter_key``, one attempt per branch the session has
    (:func:`summary_filter_keys`), in the order the branches first wrote. Each attempt is a
    :func:`run_summary_attempt` with its own ``timeout_s``. The caller keeps jobs on one
    session from overlapping.

    Returns:
        ``(filter_key, attempt)`` for every attempt made, the first one first.

    Raises:
        SessionBackendError: the store failed.
    """
    first = await run_summary_attempt(
        service, summarizer, session, timeout_s=timeout_s, filter_key=filter_key, force=force
    )
    attempts = [(filter_key, first)]
    if not per_branch or filter_key or first.status in ("no_session", "timeout"):
        return attempts
    try:
        async with asyncio.timeout(timeout_s):
            current = await service.get_session(
                session.app_name, session.user_id, session.session_id
            )
    except TimeoutError:
        return attempts
    if current is None:
        return attempts
    for key in summary_filter_keys(current)[1:]:
        attempt = await run_summary_attempt(
            service, summarizer, session, timeout_s=timeout_s, filter_key=key, force=force
        )
        attempts.append((key, attempt))
    return attempts
