"""``InMemorySessionService``: sessions in this process's memory.

Real shipped code, held to the same conformance suite as Redis and PostgreSQL: for development,
tests and single-process deployments. Nothing survives the process, and two worker processes
do not share sessions; use Redis or PostgreSQL for that.

Events and state are kept JSON-encoded, as the other stores keep them, so what a caller gets
back never aliases what is stored and a value that Redis or PostgreSQL would refuse is refused
here too. TTLs are refreshed on writes, not reads; expired data is hidden at once and swept by a
background task (started on first use when a TTL is set, stopped by :meth:`close`).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .events import Event, decode_event, encode_event, state_delta_of
from .session import (
    DEFAULT_EVENT_LIMIT,
    Session,
    SessionKey,
    Summary,
    first_kept_position,
    merge_state,
    split_state_delta,
    summary_replaces,
    validate_identifier,
    window_events,
)
from .store_support import (
    DEFAULT_CLEANUP_INTERVAL,
    ExpirySweeper,
    already_exists,
    apply_append,
    check_appendable,
    check_delta,
    check_event_limit,
    check_fence,
    check_num_events,
    check_ttl,
    decode_events,
    encode_json,
    fenced,
    loaded_session,
    new_session,
    route_initial_state,
    session_key,
    session_not_found,
    summary_session_not_found,
    utcnow,
)

__all__ = ["InMemorySessionService"]


def _copy(value: dict[str, Any]) -> dict[str, Any]:
    copied: dict[str, Any] = json.loads(encode_json(value, "state"))
    return copied


@dataclass
class _Scope:
    """App or user state, with its own expiry."""

    values: dict[str, Any] = field(default_factory=dict)
    expires_at: float | None = None


@dataclass
class _StoredSession:
    created_at: datetime
    updated_at: datetime
    state: dict[str, Any]
    expires_at: float | None
    events: list[Event] = field(default_factory=list)
    event_json: dict[str, str] = field(default_factory=dict)
    event_count: int = 0
    #: The position of the oldest kept event and of the latest user message (-1: none).
    first: int = 0
    last_user: int = -1
    summaries: dict[str, Summary] = field(default_factory=dict)


def _live(expires_at: float | None, now: float) -> bool:
    return expires_at is None or expires_at > now


class InMemorySessionService:
    """Sessions in process memory. See the module docstring.

    Args:
        event_limit: events kept per session (oldest evicted first, never the latest user
            message); None or 0 keeps all. Default 1000.
        session_ttl: seconds (or a timedelta) a session lives after its last write; None or 0
            never expires. The same for ``app_state_ttl`` and ``user_state_ttl``.
        cleanup_interval: seconds between sweeps of expired data (default 300 when a TTL is set).
    """

    def __init__(
        self,
        *,
        event_limit: int | None = DEFAULT_EVENT_LIMIT,
        session_ttl: float | timedelta | None = None,
        app_state_ttl: float | timedelta | None = None,
        user_state_ttl: float | timedelta | None = None,
        cleanup_interval: float | timedelta | None = None,
    ) -> None:
        self.event_limit = check_event_limit(event_limit)
        self.session_ttl = check_ttl(session_ttl, "session_ttl")
        self.app_state_ttl = check_ttl(app_state_ttl, "app_state_ttl")
        self.user_state_ttl = check_ttl(user_state_ttl, "user_state_ttl")
        self.cleanup_interval = (
            check_ttl(cleanup_interval, "cleanup_interval") or DEFAULT_CLEANUP_INTERVAL
        )
        self._sessions: dict[SessionKey, _StoredSession] = {}
        self._app_state: dict[str, _Scope] = {}
        self._user_state: dict[tuple[str, str], _Scope] = {}
        # The fence of each session (take_fence), apart from the session: it may not exist yet.
        self._fences: dict[SessionKey, int] = {}
        # Workers may share one service between threads; every method holds the lock while it
        # touches the dicts and never awaits while holding it.
        self._lock = threading.Lock()
        self._sweeper = ExpirySweeper(
            self._sweep,
            self.cleanup_interval,
            enabled=bool(self.session_ttl or self.app_state_ttl or self.user_state_ttl),
            name="agent-runner-memory-session-cleanup",
        )
        self._closed = False

    def __repr__(self) -> str:
        return f"InMemorySessionService(event_limit={self.event_limit})"

    # --- expiry ------------------------------------------------------------------------------

    @staticmethod
    def _deadline(ttl: float | None) -> float | None:
        return None if ttl is None else time.monotonic() + ttl

    async def _sweep(self) -> None:
        self.remove_expired()

    def remove_expired(self) -> int:
        """Drop expired sessions and scopes now; returns how many were dropped."""
        now = time.monotonic()
        with self._lock:
            dead_sessions = [k for k, s in self._sessions.items() if not _live(s.expires_at, now)]
            for session_key_ in dead_sessions:
                del self._sessions[session_key_]
                self._fences.pop(session_key_, None)
            dead_apps = [k for k, s in self._app_state.items() if not _live(s.expires_at, now)]
            for app in dead_apps:
                del self._app_state[app]
            dead_users = [k for k, s in self._user_state.items() if not _live(s.expires_at, now)]
            for user in dead_users:
                del self._user_state[user]
        return len(dead_sessions) + len(dead_apps) + len(dead_users)

    def _scope_values(self, scope: _Scope | None, now: float) -> dict[str, Any]:
        if scope is None or not _live(scope.expires_at, now):
            return {}
        return scope.values

    def _write_scope(
        self,
        scopes: dict[Any, _Scope],
        key: Any,
        delta: dict[str, Any],
        ttl: float | None,
        now: float,
    ) -> None:
        if not delta:
            return
        scope = scopes.get(key)
        if scope is None or not _live(scope.expires_at, now):
            scope = scopes[key] = _Scope()
        scope.values.update(_copy(delta))
        scope.expires_at = self._deadline(ttl)

    def _live_session(self, key: SessionKey, now: float) -> _StoredSession | None:
        stored = self._sessions.get(key)
        if stored is None or not _live(stored.expires_at, now):
            return None
        return stored

    def _scopes(
        self, key: SessionKey, stored: _StoredSession, now: float
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Copies of (session state, app state, user state)."""
        return (
            _copy(stored.state),
            _copy(self._scope_values(self._app_state.get(key.app_name), now)),
            _copy(self._scope_values(self._user_state.get((key.app_name, key.user_id)), now)),
        )

    def _merged_state(self, key: SessionKey, stored: _StoredSession, now: float) -> dict[str, Any]:
        return merge_state(*self._scopes(key, stored, now))

    # --- sessions ----------------------------------------------------------------------------

    async def create_session(
        self,
        app_name: str,
        user_id: str,
        session_id: str | None = None,
        *,
        state: dict[str, Any] | None = None,
    ) -> Session:
        key = session_key(app_name, user_id, session_id)
        parts = route_initial_state(state)
        self._sweeper.start()
        now_at = utcnow()
        with self._lock:
            now = time.monotonic()
            if self._live_session(key, now) is not None:
                raise already_exists(key)
            stored = _StoredSession(
                created_at=now_at,
                updated_at=now_at,
                state=_copy(parts.session),
                expires_at=self._deadline(self.session_ttl),
            )
            self._sessions[key] = stored
            self._write_scope(self._app_state, key.app_name, parts.app, self.app_state_ttl, now)
            self._write_scope(
                self._user_state,
                (key.app_name, key.user_id),
                parts.user,
                self.user_state_ttl,
                now,
            )
            merged = self._merged_state(key, stored, now)
        return new_session(key, merged, now_at)

    async def get_session(
        self,
        app_name: str,
        user_id: str,
        session_id: str,
        *,
        num_events: int | None = None,
        since: datetime | None = None,
    ) -> Session | None:
        key = SessionKey(app_name, user_id, session_id)
        check_num_events(num_events)
        self._sweeper.start()
        with self._lock:
            now = time.monotonic()
            stored = self._live_session(key, now)
            if stored is None:
                return None
            # Only the window is decoded (a copy, never the stored objects).
            window = window_events(stored.events, num_events=num_events, since=since)
            event_json = [stored.event_json[e.id] for e in window]
            state, app_state, user_state = self._scopes(key, stored, now)
            summaries = {k: s.model_copy() for k, s in stored.summaries.items()}
            created_at, updated_at = stored.created_at, stored.updated_at
            event_count = stored.event_count
        return loaded_session(
            key,
            state=state,
            app_state=app_state,
            user_state=user_state,
            created_at=created_at,
            updated_at=updated_at,
            event_count=event_count,
            events=decode_events(enumerate(event_json), "memory"),
            summaries=summaries,
        )

    async def list_sessions(self, app_name: str, user_id: str) -> list[Session]:
        validate_identifier(app_name, "app_name")
        validate_identifier(user_id, "user_id")
        self._sweeper.start()
        with self._lock:
            now = time.monotonic()
            sessions: list[Session] = []
            for key, stored in self._sessions.items():
                if (key.app_name, key.user_id) != (app_name, user_id) or not _live(
                    stored.expires_at, now
                ):
                    continue
                state, app_state, user_state = self._scopes(key, stored, now)
                sessions.append(
                    loaded_session(
                        key,
                        state=state,
                        app_state=app_state,
                        user_state=user_state,
                        created_at=stored.created_at,
                        updated_at=stored.updated_at,
                        event_count=stored.event_count,
                    )
                )
        sessions.sort(key=lambda s: (s.created_at, s.id))
        return sessions

    async def delete_session(self, app_name: str, user_id: str, session_id: str) -> None:
        key = SessionKey(app_name, user_id, session_id)
        with self._lock:
            self._sessions.pop(key, None)
            self._fences.pop(key, None)

    async def take_fence(self, app_name: str, user_id: str, session_id: str, token: int) -> None:
        key = SessionKey(app_name, user_id, session_id)
        check_fence(token, "token")
        with self._lock:
            holder = self._fences.get(key, 0)
            if holder > token:
                raise fenced(key, token, holder)
            self._fences[key] = token

    async def append_event(
        self, session: Session, event: Event, *, fence: int | None = None
    ) -> bool:
        key = check_appendable(session, event)
        if fence is not None:
            check_fence(fence)
        parts = split_state_delta(state_delta_of(event))
        raw = encode_event(event)
        stored_event = decode_event(raw)
        is_user = event.is_user_message()
        self._sweeper.start()
        now_at = utcnow()
        with self._lock:
            now = time.monotonic()
            stored = self._live_session(key, now)
            if stored is None:
                raise session_not_found(key)
            if fence is not None and self._fences.get(key) != fence:
                raise fenced(key, fence, self._fences.get(key))
            if event.id in stored.event_json:
                return False
            stored.events.append(stored_event)
            stored.event_json[event.id] = raw
            stored.event_count += 1
            if is_user:
                stored.last_user = stored.event_count - 1
            # Positions: the stored list holds stored.first .. event_count - 1.
            first = first_kept_position(
                first=stored.first,
                count=stored.event_count,
                last_user=stored.last_user,
                limit=self.event_limit,
            )
            for evicted in stored.events[: first - stored.first]:
                del stored.event_json[evicted.id]
            del stored.events[: first - stored.first]
            stored.first = first
            stored.state.update(_copy(parts.session))
            stored.updated_at = now_at
            stored.expires_at = self._deadline(self.session_ttl)
            self._write_scope(self._app_state, key.app_name, parts.app, self.app_state_ttl, now)
            self._write_scope(
                self._user_state, (key.app_name, key.user_id), parts.user, self.user_state_ttl, now
            )
            event_count = stored.event_count
        apply_append(
            session,
            event,
            parts,
            event_count=event_count,
            updated_at=now_at,
            event_limit=self.event_limit,
        )
        return True

    # --- app and user state ------------------------------------------------------------------

    async def get_app_state(self, app_name: str) -> dict[str, Any]:
        validate_identifier(app_name, "app_name")
        with self._lock:
            return _copy(self._scope_values(self._app_state.get(app_name), time.monotonic()))

    async def update_app_state(self, app_name: str, delta: dict[str, Any]) -> None:
        validate_identifier(app_name, "app_name")
        check_delta(delta, "delta")
        self._sweeper.start()
        with self._lock:
            self._write_scope(
                self._app_state, app_name, delta, self.app_state_ttl, time.monotonic()
            )

    async def get_user_state(self, app_name: str, user_id: str) -> dict[str, Any]:
        validate_identifier(app_name, "app_name")
        validate_identifier(user_id, "user_id")
        with self._lock:
            scope = self._user_state.get((app_name, user_id))
            return _copy(self._scope_values(scope, time.monotonic()))

    async def update_user_state(self, app_name: str, user_id: str, delta: dict[str, Any]) -> None:
        validate_identifier(app_name, "app_name")
        validate_identifier(user_id, "user_id")
        check_delta(delta, "delta")
        self._sweeper.start()
        with self._lock:
            self._write_scope(
                self._user_state,
                (app_name, user_id),
                delta,
                self.user_state_ttl,
                time.monotonic(),
            )

    # --- summaries ---------------------------------------------------------------------------

    async def get_summary(
        self, app_name: str, user_id: str, session_id: str, *, filter_key: str = ""
    ) -> Summary | None:
        key = SessionKey(app_name, user_id, session_id)
        with self._lock:
            stored = self._live_session(key, time.monotonic())
            if stored is None:
                return None
            summary = stored.summaries.get(filter_key)
            return None if summary is None else summary.model_copy()

    async def put_summary(
        self, app_name: str, user_id: str, session_id: str, summary: Summary
    ) -> bool:
        key = SessionKey(app_name, user_id, session_id)
        with self._lock:
            stored = self._live_session(key, time.monotonic())
            if stored is None:
                raise summary_session_not_found(key)
            if not summary_replaces(stored.summaries.get(summary.filter_key), summary):
                return False
            stored.summaries[summary.filter_key] = summary.model_copy()
            return True

    async def close(self) -> None:
        self._closed = True
        await self._sweeper.close()
