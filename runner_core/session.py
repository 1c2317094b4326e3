"""Sessions and the protocol every session store implements.

A session is an append-only log of non-partial events plus state derived from them. State
changes only through ``Event.state_delta``, so replaying the log reproduces the state.

State scopes (by key prefix):

- ``app:...``   shared by every session of the app
- ``user:...``  shared by every session of one user of the app
- ``temp:...``  lives for one invocation only; never stored
- anything else belongs to the session

``Session.state`` is the merged view with the prefixes kept. The helpers at the bottom of this
module hold the rules every backend shares (key validation, delta routing, the event window,
eviction, which summary wins), so memory, Redis, PostgreSQL and MySQL behave the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from .errors import InvalidRequestError
from .events import Event
from .wire import ID_RE, MAX_ID_LENGTH

__all__ = [
    "APP_PREFIX",
    "DEFAULT_EVENT_LIMIT",
    "ID_RE",
    "MAX_ID_LENGTH",
    "TEMP_PREFIX",
    "USER_PREFIX",
    "Session",
    "SessionKey",
    "SessionOpener",
    "SessionService",
    "StateDeltaParts",
    "Summary",
    "first_kept_position",
    "merge_state",
    "open_session",
    "split_state_delta",
    "summary_replaces",
    "validate_identifier",
    "window_events",
]

APP_PREFIX = "app:"
USER_PREFIX = "user:"
TEMP_PREFIX = "temp:"
DEFAULT_EVENT_LIMIT = 1000
# ID_RE and MAX_ID_LENGTH (the ID rule) are runner_core.wire's, re-exported here.


def validate_identifier(value: object, field: str) -> str:
    """Check an app name, user ID or session ID.

    IDs are 1-128 characters of letters, digits and ``. _ : @ + = -``. They become Redis keys
    and SQL parameters, so nothing else is accepted.

    Raises:
        InvalidRequestError: naming ``field``.
    """
    if not isinstance(value, str):
        raise InvalidRequestError(f"{field} must be a string, got {type(value).__name__}.")
    if not value:
        raise InvalidRequestError(f"{field} is empty. Pass a non-empty {field}.")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidRequestError(
            f"{field} is {len(value)} characters long; the limit is {MAX_ID_LENGTH}. "
            f"Use a shorter {field} (a hash of a long one works)."
        )
    if not ID_RE.fullmatch(value):
        raise InvalidRequestError(
            f"{field} {value!r} has characters outside letters, digits and '._:@+=-'. "
            f"Use only those in {field}."
        )
    return value


@dataclass(frozen=True, slots=True)
class SessionKey:
    """The full identity of a session: (app_name, user_id, session_id), validated."""

    app_name: str
    user_id: str
    session_id: str

    def __post_init__(self) -> None:
        validate_identifier(self.app_name, "app_name")
        validate_identifier(self.user_id, "user_id")
        validate_identifier(self.session_id, "session_id")


class Summary(BaseModel):
    """A summary of a session's events up to a boundary (inclusive).

    ``event_count`` is the number of events of the session that the summary covers, counted in
    append order from the first event ever appended (evicted ones included), so a later summary
    always has a larger count. Stores keep a summary only if it covers more than the stored one.
    """

    model_config = ConfigDict(extra="forbid")

    text: str
    filter_key: str = ""
    last_event_id: str
    event_count: int = Field(ge=1)
    last_event_at: datetime
    created_at: datetime


class Session(BaseModel):
    """A session as read from a store: identity, merged state, events in append order."""

    model_config = ConfigDict(extra="forbid")

    id: str
    app_name: str
    user_id: str
    state: dict[str, Any] = Field(default_factory=dict)
    events: list[Event] = Field(default_factory=list)
    summaries: dict[str, Summary] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime
    #: How many events were ever appended (evicted ones included).
    event_count: int = 0

    @property
    def key(self) -> SessionKey:
        try:
            return _session_key(self.app_name, self.user_id, self.id)
        except TypeError:  # an unhashable ID: SessionKey names the field that is wrong
            return SessionKey(self.app_name, self.user_id, self.id)


@lru_cache(maxsize=4096)
def _session_key(app_name: str, user_id: str, session_id: str) -> SessionKey:
    """The validated key of a session, kept for the sessions in use: every append starts
    with its session's key, and validating three IDs costs more than the lookup."""
    return SessionKey(app_name, user_id, session_id)


@runtime_checkable
class SessionService(Protocol):
    """What a session store does. Memory, Redis, PostgreSQL and MySQL implement it alike.

    Every method validates its IDs (:func:`validate_identifier`) and raises
    :class:`~runner_core.errors.InvalidRequestError` for bad ones. Store failures raise
    :class:`~runner_core.errors.SessionBackendError`; undecodable stored data raises
    :class:`~runner_core.errors.CorruptSessionDataError`.
    """

    async def create_session(
        self,
        app_name: str,
        user_id: str,
        session_id: str | None = None,
        *,
        state: dict[str, Any] | None = None,
    ) -> Session:
        """Create a session (a generated ID when ``session_id`` is None or empty).

        ``state`` may hold ``app:`` and ``user:`` keys; they go to their scopes.

        Raises:
            InvalidRequestError: the session already exists (and has not expired).
        """
        ...

    async def get_session(
        self,
        app_name: str,
        user_id: str,
        session_id: str,
        *,
        num_events: int | None = None,
        since: datetime | None = None,
    ) -> Session | None:
        """The session with its events in append order, or None if absent or expired.

        ``num_events`` keeps the newest N events, ``since`` keeps events created at or after
        it; neither leaves the history without its latest user message (see
        :func:`window_events`). Reads do not refresh TTLs.
        """
        ...

    async def list_sessions(self, app_name: str, user_id: str) -> list[Session]:
        """The user's live sessions, with state but without events."""
        ...

    async def delete_session(self, app_name: str, user_id: str, session_id: str) -> None:
        """Delete a session with its events and summaries. Deleting a missing one is a no-op."""
        ...

    async def take_fence(self, app_name: str, user_id: str, session_id: str, token: int) -> None:
        """Make ``token`` the session's fence, unless a greater token holds it already.

        A new owner of a session (a worker granted its lease) calls this before it reads the
        session; from then on an append fenced with an older token is refused. The fence is
        kept by the store itself, apart from the session (the session need not exist yet), so
        the check is atomic with each append. Taking the fence again with the same token is a
        no-op.

        Raises:
            FencedError: a greater token holds the fence (a newer owner took the session).
            InvalidRequestError: a bad ID, or ``token`` is not an int >= 1.
        """
        ...

    async def append_event(
        self, session: Session, event: Event, *, fence: int | None = None
    ) -> bool:
        """Append a non-partial event and apply its ``state_delta``, atomically.

        Appending an event whose ID the session already holds changes nothing and returns
        False, so a redelivered run can never duplicate history. ``temp:`` keys are never
        stored; ``app:``/``user:`` keys go to their scopes. Refreshes TTLs and enforces the
        event limit. ``session`` is updated in place (events, state, event_count).

        With ``fence``, the append happens only if the session's fence (see
        :meth:`take_fence`) is exactly ``fence``, checked atomically with the write.

        Raises:
            InvalidRequestError: the event is partial or belongs to another session.
            SessionNotFoundError: the session no longer exists.
            FencedError: ``fence`` is not the session's fence; nothing was written.
        """
        ...

    async def get_app_state(self, app_name: str) -> dict[str, Any]:
        """App-scoped state, keys without the ``app:`` prefix."""
        ...

    async def update_app_state(self, app_name: str, delta: dict[str, Any]) -> None: ...

    async def get_user_state(self, app_name: str, user_id: str) -> dict[str, Any]:
        """User-scoped state, keys without the ``user:`` prefix."""
        ...

    async def update_user_state(
        self, app_name: str, user_id: str, delta: dict[str, Any]
    ) -> None: ...

    async def get_summary(
        self, app_name: str, user_id: str, session_id: str, *, filter_key: str = ""
    ) -> Summary | None:
        """The stored summary for ``filter_key`` ("" is the whole session), or None."""
        ...

    async def put_summary(
        self, app_name: str, user_id: str, session_id: str, summary: Summary
    ) -> bool:
        """Store ``summary`` only if it covers more events than the stored one.

        Returns True if stored, False if a summary covering as many or more events is there.
        """
        ...

    async def close(self) -> None:
        """Release what the service opened (connections, cleanup tasks). Idempotent."""
        ...


@runtime_checkable
class SessionOpener(Protocol):
    """A store's optional fast path for :func:`open_session`: all of it in one call.

    A run starts by taking its session's fence (distributed runs), reading the session and
    creating it when it is missing: with the methods of :class:`SessionService` that is up
    to four round trips to the store. A store that can do it in one (a script, a pipeline)
    implements this method; the runner uses it when the store has it, and the method-by-method
    sequence of :func:`open_session` otherwise. Third-party stores need not implement it.
    """

    async def open_session(
        self,
        app_name: str,
        user_id: str,
        session_id: str,
        *,
        fence: int | None = None,
        create: bool = True,
    ) -> Session | None:
        """Exactly what :func:`open_session` does, with the same errors, in one call."""
        ...


async def open_session(
    service: SessionService,
    app_name: str,
    user_id: str,
    session_id: str,
    *,
    fence: int | None = None,
    create: bool = True,
) -> Session | None:
    """Open a session for a run: take its fence, read it, and create it if it is missing.

    - ``fence``: taken first (:meth:`SessionService.take_fence`), so the session read holds
      everything an older owner will ever have stored.
    - ``create``: create an empty session (no initial state) when there is none; a session
      another caller created meanwhile is read instead, never reported as a conflict. With
      ``create=False`` a missing session gives None.

    Uses the store's :meth:`SessionOpener.open_session` when it has one (one round trip),
    else the methods of :class:`SessionService` one after the other.

    Raises:
        FencedError: a greater token holds the fence; nothing was read or created.
        InvalidRequestError: a bad ID or fence token.
    """
    if isinstance(service, SessionOpener):
        return await service.open_session(
            app_name, user_id, session_id, fence=fence, create=create
        )
    if fence is not None:
        await service.take_fence(app_name, user_id, session_id, fence)
    session = await service.get_session(app_name, user_id, session_id)
    if session is not None or not create:
        return session
    try:
        return await service.create_session(app_name, user_id, session_id)
    except InvalidRequestError:
        # Another caller created it between our get and create.
        session = await service.get_session(app_name, user_id, session_id)
        if session is None:
            raise
        return session


# --- rules shared by every backend -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StateDeltaParts:
    """A state delta routed to its scopes; ``app``/``user`` keys have their prefix removed."""

    session: dict[str, Any]
    app: dict[str, Any]
    user: dict[str, Any]


def split_state_delta(delta: dict[str, Any]) -> StateDeltaParts:
    """Route a delta by key prefix and drop ``temp:`` keys."""
    session: dict[str, Any] = {}
    app: dict[str, Any] = {}
    user: dict[str, Any] = {}
    for key, value in delta.items():
        if key.startswith(TEMP_PREFIX):
            continue
        if key.startswith(APP_PREFIX):
            app[key[len(APP_PREFIX) :]] = value
        elif key.startswith(USER_PREFIX):
            user[key[len(USER_PREFIX) :]] = value
        else:
            session[key] = value
    return StateDeltaParts(session=session, app=app, user=user)


def merge_state(
    session_state: dict[str, Any], app_state: dict[str, Any], user_state: dict[str, Any]
) -> dict[str, Any]:
    """The merged view: session keys, then ``app:``/``user:`` keys with their prefix."""
    merged = dict(session_state)
    merged.update({APP_PREFIX + k: v for k, v in app_state.items()})
    merged.update({USER_PREFIX + k: v for k, v in user_state.items()})
    return merged


def summary_replaces(stored: Summary | None, candidate: Summary) -> bool:
    """Whether ``candidate`` replaces the ``stored`` summary of its filter key: only if it
    covers more events. Stores that compare on the server (Redis's script, the SQL upserts)
    hold a copy of this rule that the conformance suite checks against this function."""
    return stored is None or candidate.event_count > stored.event_count


def first_kept_position(*, first: int, count: int, last_user: int, limit: int | None) -> int:
    """The eviction rule: the position of the oldest event a session keeps after an append.

    Positions count every event ever appended (0, 1, 2, ...); the session holds positions
    ``first .. count - 1`` and ``last_user`` is the position of its latest user message (-1
    for none). Past ``limit`` events the oldest are evicted, but never the latest user
    message: the model must always get the question it is answering.

    This is the one copy of the rule in Python: :func:`window_events` and every store's append
    use it. Redis applies it inside its append script for atomicity; the conformance suite
    checks every store against this function.
    """
    if limit is None or count - first <= limit:
        return first
    return _widened(count - limit, first=first, last_user=last_user)


def _widened(start: int, *, first: int, last_user: int) -> int:
    """``start``, moved back to the latest user message if that is older (but kept)."""
    return last_user if first <= last_user < start else start


def window_events(
    events: Sequence[Event],
    *,
    num_events: int | None = None,
    since: datetime | None = None,
) -> list[Event]:
    """Keep the newest ``num_events`` and/or the events at or after ``since``.

    If the kept window holds no user message, it is widened back to the latest user message,
    so the model never gets a history without the question it is answering (the rule of
    :func:`first_kept_position`). If there is no user message at all, the plain window is
    returned.
    """
    if num_events is not None and num_events < 0:
        raise InvalidRequestError("num_events must be >= 0 (or None for all events).")
    start = 0
    if num_events is not None:
        start = max(0, len(events) - num_events)
    if since is not None:
        while start < len(events) and events[start].created_at < since:
            start += 1
    if start == 0:
        return list(events)
    last_user = next(
        (index for index in range(len(events) - 1, -1, -1) if events[index].is_user_message()),
        -1,
    )
    return list(events[_widened(start, first=0, last_user=last_user) :])
