"""``MySQLSessionService``: sessions in MySQL or MariaDB (asyncmy, an asyncio driver).

The tables and statements are in :mod:`session_backends.mysql_statements`, the connection to
the server (URL, pool, table creation, retries, driver errors) in
:mod:`session_backends.mysql_connection`; this module runs the statements. Every table has
``deleted_at``: deletes and expiry set it (soft delete, the default) or remove rows
(``soft_delete=False``); reads never see either. Expired rows are hidden at once and swept by a
cleanup loop. Events evicted by the event limit are removed, not soft-deleted: the limit exists
to bound storage.

Each append is one transaction: ``SELECT ... FOR UPDATE`` the session row (so appends to one
session queue up, from any number of processes), insert the event (a duplicate event ID ends
the transaction with nothing written), apply the state delta to the three scopes, evict past
the limit (:func:`~runner_core.session.first_kept_position`, the one eviction rule). A fenced
append first reads its ``session_fences`` row ``LOCK IN SHARE MODE`` in the same transaction: a
new owner's ``take_fence`` waits for an append in flight (and then sees it), and an append after
it sees the new token and writes nothing. The session state is merged in Python under the row
lock, so a ``null`` value is stored as ``null`` (as everywhere else) instead of deleting the key
as ``JSON_MERGE_PATCH`` would. An event larger than the server's ``max_allowed_packet`` is
refused before anything is sent. Tested on MariaDB 10.11; see docs/sessions.md for MySQL 8.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from asyncmy.connection import Connection
from asyncmy.errors import IntegrityError

from runner_core.errors import (
    ConfigurationError,
    CorruptSessionDataError,
    InvalidRequestError,
)
from runner_core.events import Event, state_delta_of
from runner_core.session import (
    DEFAULT_EVENT_LIMIT,
    Session,
    SessionKey,
    Summary,
    merge_state,
    split_state_delta,
    validate_identifier,
)
from runner_core.store_support import (
    DEFAULT_CLEANUP_INTERVAL,
    ExpirySweeper,
    already_exists,
    apply_append,
    check_appendable,
    check_delta,
    check_event_limit,
    check_fence,
    check_num_events,
    check_pool_options,
    check_sql_name,
    check_ttl,
    decode_events,
    decode_json_object,
    decode_json_value,
    decode_summary,
    encode_json,
    fenced,
    first_kept_position,
    loaded_session,
    new_session,
    route_initial_state,
    session_key,
    session_not_found,
    summary_session_not_found,
    utcnow,
)

from .mysql_connection import DUPLICATE_KEY, MySQLDatabase, MySQLUrl
from .mysql_statements import MAX_KEY_LENGTH, Statements

__all__ = ["MySQLSessionService"]

T = TypeVar("T")

#: Room left in a statement for everything but the event JSON (bytes).
_STATEMENT_OVERHEAD = 64 * 1024


def _naive(moment: datetime) -> datetime:
    """A UTC datetime as the naive value a DATETIME(6) column holds."""
    return moment.astimezone(UTC).replace(tzinfo=None)


def _aware(value: object, where: str) -> datetime:
    if not isinstance(value, datetime):
        raise CorruptSessionDataError(
            f"stored session data at {where} has a time of type {type(value).__name__}; "
            "repair or delete the row."
        )
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


def _check_length(value: str, what: str) -> None:
    if len(value) > MAX_KEY_LENGTH:
        raise InvalidRequestError(
            f"{what} is {len(value)} characters long; the MySQL session store holds at most "
            f"{MAX_KEY_LENGTH}. Use a shorter one."
        )


def _scope_rows(delta: dict[str, Any], *head: str) -> list[Any]:
    """Parameters of a scope upsert, sorted by key: concurrent writers lock rows in one order."""
    params: list[Any] = []
    for name in sorted(delta):
        _check_length(name, f"state key {name[:40]!r}...")
        params += [*head, name, encode_json(delta[name], f"state value {name!r}")]
    return params


class MySQLSessionService:
    """Sessions in MySQL 8 or MariaDB 10.11+. See the module docstring.

    Args:
        url: ``mysql://user:password@host:3306/database`` (user and password percent-encoded).
        table_prefix: put before every table name (``app1_`` -> ``app1_session_states``).
        soft_delete: deletes and expiry set ``deleted_at`` (True, default) or remove rows.
        skip_db_init: do not create the tables (they were created by a migration).
        event_limit: events kept per session (oldest evicted first, never the latest user
            message); None or 0 keeps all. Default 1000.
        session_ttl, app_state_ttl, user_state_ttl: seconds (or timedelta) after the last write;
            None or 0 never expires.
        cleanup_interval: seconds between sweeps of expired rows (default 300 when a TTL is set).
        connect_timeout: seconds; bounds how long a call waits for an unreachable server.
        max_pool_size: connections held at most.
    """

    def __init__(
        self,
        url: str,
        *,
        table_prefix: str = "",
        soft_delete: bool = True,
        skip_db_init: bool = False,
        event_limit: int | None = DEFAULT_EVENT_LIMIT,
        session_ttl: float | timedelta | None = None,
        app_state_ttl: float | timedelta | None = None,
        user_state_ttl: float | timedelta | None = None,
        cleanup_interval: float | timedelta | None = None,
        connect_timeout: float = 5.0,
        max_pool_size: int = 10,
    ) -> None:
        if not isinstance(url, str):
            raise ConfigurationError(f"MySQLSessionService needs a mysql:// URL, got {url!r}.")
        self._url = MySQLUrl(url)
        if table_prefix:
            check_sql_name(table_prefix, "table_prefix", longest=30)
        check_pool_options(connect_timeout, max_pool_size)
        self.table_prefix = table_prefix
        self.soft_delete = bool(soft_delete)
        self.skip_db_init = bool(skip_db_init)
        self.event_limit = check_event_limit(event_limit)
        self.session_ttl = check_ttl(session_ttl, "session_ttl")
        self.app_state_ttl = check_ttl(app_state_ttl, "app_state_ttl")
        self.user_state_ttl = check_ttl(user_state_ttl, "user_state_ttl")
        self.cleanup_interval = (
            check_ttl(cleanup_interval, "cleanup_interval") or DEFAULT_CLEANUP_INTERVAL
        )
        self.connect_timeout = float(connect_timeout)
        self._sql = Statements(
            table_prefix,
            soft_delete=self.soft_delete,
            session_ttl=self.session_ttl,
            app_state_ttl=self.app_state_ttl,
            user_state_ttl=self.user_state_ttl,
        )
        self._db = MySQLDatabase(
            self._url,
            connect_timeout=self.connect_timeout,
            max_pool_size=max_pool_size,
            tables=self._sql.tables,
            count_tables=self._sql.count_tables,
            ddl=self._sql.ddl,
            lock_name=self._sql.lock_name,
            skip_db_init=self.skip_db_init,
        )
        self._sweeper = ExpirySweeper(
            self.remove_expired,
            self.cleanup_interval,
            enabled=bool(self.session_ttl or self.app_state_ttl or self.user_state_ttl),
            name="agent-runner-mysql-session-cleanup",
        )
        self._closed = False

    def __repr__(self) -> str:
        return f"MySQLSessionService({self._url}, table_prefix={self.table_prefix!r})"

    # --- plumbing ----------------------------------------------------------------------------

    async def _run(self, action: str, work: Callable[[Connection], Awaitable[T]]) -> T:
        await self._db.ready(action)
        self._sweeper.start()
        return await self._db.attempt(action, work)

    async def remove_expired(self) -> int:
        """Retire expired sessions (with their events and summaries) and state rows now.

        Returns how many session and state rows were retired.
        """
        sql = self._sql

        async def work(conn: Connection) -> int:
            async with conn.cursor() as cur:
                await cur.execute("SELECT UTC_TIMESTAMP(6)")
                (now,) = await cur.fetchone()
                await conn.begin()
                both = (now,) * sql.sweep_times
                await cur.execute(sql.sweep_events, both)
                await cur.execute(sql.sweep_summaries, both)
                await cur.execute(sql.sweep_fences, (now,))
                retired = await cur.execute(sql.sweep_sessions, both)
                retired += await cur.execute(sql.sweep_app_states, both)
                retired += await cur.execute(sql.sweep_user_states, both)
                await conn.commit()
                return int(retired)

        return await self._run("removing expired sessions", work)

    async def _write_scopes(
        self,
        cur: Any,
        app_name: str,
        user_id: str | None,
        user_delta: dict[str, Any],
        app_delta: dict[str, Any],
    ) -> None:
        sql = self._sql
        if user_delta and user_id is not None:
            await cur.execute(
                sql.upsert_user_state(len(user_delta)), _scope_rows(user_delta, app_name, user_id)
            )
            if sql.refresh_user_state is not None:
                await cur.execute(sql.refresh_user_state, (app_name, user_id))
        if app_delta:
            await cur.execute(
                sql.upsert_app_state(len(app_delta)), _scope_rows(app_delta, app_name)
            )
            if sql.refresh_app_state is not None:
                await cur.execute(sql.refresh_app_state, (app_name,))

    async def _scopes(
        self, cur: Any, app_name: str, user_id: str | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(user state, app state) without their prefixes."""
        await cur.execute(self._sql.scopes, (app_name, user_id or "", app_name))
        return _scope_values(await cur.fetchall(), f"{app_name!r}/{user_id!r}")

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
        session_json = encode_json(parts.session, "state")
        _scope_rows(parts.user)  # check the key lengths before anything is written
        _scope_rows(parts.app)
        now = utcnow()
        ids = (key.app_name, key.user_id, key.session_id)
        sql = self._sql

        async def work(conn: Connection) -> dict[str, Any]:
            async with conn.cursor() as cur:
                await conn.begin()
                if await cur.execute(sql.retire_expired_session, ids):
                    await cur.execute(sql.retire_events, ids)
                    await cur.execute(sql.retire_summaries, ids)
                try:
                    await cur.execute(
                        sql.insert_session, (*ids, session_json, _naive(now), _naive(now))
                    )
                except IntegrityError as exc:
                    if exc.args and exc.args[0] == DUPLICATE_KEY:
                        raise already_exists(key) from exc
                    raise
                await self._write_scopes(cur, key.app_name, key.user_id, parts.user, parts.app)
                user_state, app_state = await self._scopes(cur, key.app_name, key.user_id)
                await conn.commit()
            return merge_state(parts.session, app_state, user_state)

        merged = await self._run("creating a session", work)
        return new_session(key, merged, now)

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
        ids = (key.app_name, key.user_id, key.session_id)
        params = (*ids, key.app_name, key.user_id, key.app_name, *ids, *ids)

        async def work(conn: Connection) -> Sequence[tuple[Any, ...]]:
            async with conn.cursor() as cur:
                await cur.execute(self._sql.get_session, params)
                rows: Sequence[tuple[Any, ...]] = await cur.fetchall()
                return rows

        rows = await self._run("reading a session", work)
        if not rows or rows[0][0] != 0:
            return None
        where = f"session {key.app_name!r}/{key.user_id!r}/{key.session_id!r}"
        _, _, _, state_raw, event_count, created_at, updated_at = rows[0]
        user_state, app_state = _scope_values(
            [r[:1] + r[2:4] for r in rows if r[0] in (1, 2)], where
        )
        summaries = {
            _text(r[2]): decode_summary(
                r[3], f"session_summaries of {where}, filter_key {_text(r[2])!r}"
            )
            for r in rows
            if r[0] == 3
        }
        events = decode_events(
            ((r[1], r[3]) for r in rows if r[0] == 4), f"session_events of {where}"
        )
        return loaded_session(
            key,
            state=decode_json_object(state_raw, f"session_states of {where}"),
            app_state=app_state,
            user_state=user_state,
            created_at=_aware(created_at, f"session_states of {where}"),
            updated_at=_aware(updated_at, f"session_states of {where}"),
            event_count=int(event_count),
            events=events,
            summaries=summaries,
            num_events=num_events,
            since=since,
        )

    async def list_sessions(self, app_name: str, user_id: str) -> list[Session]:
        validate_identifier(app_name, "app_name")
        validate_identifier(user_id, "user_id")

        async def work(
            conn: Connection,
        ) -> tuple[Sequence[tuple[Any, ...]], dict[str, Any], dict[str, Any]]:
            async with conn.cursor() as cur:
                await cur.execute(self._sql.list_sessions, (app_name, user_id))
                rows: Sequence[tuple[Any, ...]] = await cur.fetchall()
                user_state, app_state = await self._scopes(cur, app_name, user_id)
            return rows, user_state, app_state

        rows, user_state, app_state = await self._run("listing sessions", work)
        return [
            loaded_session(
                SessionKey(app_name, user_id, _text(sid)),
                state=decode_json_object(state_raw, f"session_states of {_text(sid)!r}"),
                app_state=app_state,
                user_state=user_state,
                created_at=_aware(created_at, f"session_states of {_text(sid)!r}"),
                updated_at=_aware(updated_at, f"session_states of {_text(sid)!r}"),
                event_count=int(event_count),
            )
            for sid, state_raw, created_at, updated_at, event_count in rows
        ]

    async def delete_session(self, app_name: str, user_id: str, session_id: str) -> None:
        key = SessionKey(app_name, user_id, session_id)
        ids = (key.app_name, key.user_id, key.session_id)
        sql = self._sql

        async def work(conn: Connection) -> None:
            async with conn.cursor() as cur:
                await conn.begin()
                await cur.execute(sql.retire_session, ids)
                await cur.execute(sql.retire_events, ids)
                await cur.execute(sql.retire_summaries, ids)
                await cur.execute(sql.delete_fence, ids)
                await conn.commit()

        await self._run("deleting a session", work)

    async def take_fence(self, app_name: str, user_id: str, session_id: str, token: int) -> None:
        key = SessionKey(app_name, user_id, session_id)
        check_fence(token, "token")
        ids = (key.app_name, key.user_id, key.session_id)

        async def work(conn: Connection) -> int:
            async with conn.cursor() as cur:
                await conn.begin()
                await cur.execute(self._sql.take_fence, (*ids, token))
                await cur.execute(self._sql.read_fence, ids)
                row = await cur.fetchone()
                await conn.commit()
            return int(row[0])

        holder = await self._run("taking a session's fence", work)
        if holder != token:
            raise fenced(key, token, holder)

    def _check_event_size(self, event_json: str) -> None:
        size = len(event_json.encode())
        limit = self._db.max_packet
        if limit is not None and size + _STATEMENT_OVERHEAD > limit:
            raise InvalidRequestError(
                f"the event is {size} bytes of JSON; the MySQL server at {self._url} takes "
                f"statements of at most {limit} bytes (max_allowed_packet). Nothing "
                "was written. Make the event smaller (large tool results belong in an artifact "
                "store), or raise max_allowed_packet on the server."
            )

    async def append_event(
        self, session: Session, event: Event, *, fence: int | None = None
    ) -> bool:
        key = check_appendable(session, event)
        fence = None if fence is None else check_fence(fence)
        _check_length(event.id, f"event ID {event.id[:40]!r}...")
        parts = split_state_delta(state_delta_of(event))
        _scope_rows(parts.user)
        _scope_rows(parts.app)
        event_json = event.to_json()
        is_user = event.is_user_message()
        now = utcnow()
        ids = (key.app_name, key.user_id, key.session_id)
        limit = self.event_limit
        sql = self._sql
        await self._db.ready("appending an event")
        self._sweeper.start()
        self._check_event_size(event_json)

        async def work(conn: Connection) -> int | None:
            async with conn.cursor() as cur:
                await conn.begin()
                if fence is not None:
                    # Read first, so a stale owner stops before anything is written.
                    await cur.execute(sql.share_fence, ids)
                    holder = await cur.fetchone()
                    if holder is None or holder[0] != fence:
                        raise fenced(key, fence, None if holder is None else holder[0])
                await cur.execute(sql.lock_session, ids)
                row = await cur.fetchone()
                if row is None:
                    raise session_not_found(key)
                pk, position, first, last_user, state_raw = row
                try:
                    await cur.execute(
                        sql.insert_event,
                        (*ids, event.id, position, event_json, _naive(event.created_at)),
                    )
                except IntegrityError as exc:
                    if exc.args and exc.args[0] == DUPLICATE_KEY:
                        await conn.rollback()  # the event ID is there already
                        return None
                    raise
                count = position + 1
                if is_user:
                    last_user = position
                new_first = first_kept_position(
                    first=first, count=count, last_user=last_user, limit=limit
                )
                state = decode_json_object(state_raw, f"session_states of {key.session_id!r}")
                state.update(parts.session)
                await cur.execute(
                    sql.update_session,
                    (
                        encode_json(state, "session state"),
                        count,
                        new_first,
                        last_user,
                        _naive(now),
                        pk,
                    ),
                )
                if new_first > first:
                    await cur.execute(sql.evict_events, (*ids, new_first))
                await self._write_scopes(cur, key.app_name, key.user_id, parts.user, parts.app)
                await conn.commit()
                return int(count)

        event_count = await self._db.attempt("appending an event", work)
        if event_count is None:
            return False
        apply_append(
            session, event, parts, event_count=event_count, updated_at=now, event_limit=limit
        )
        return True

    # --- app and user state ------------------------------------------------------------------

    async def get_app_state(self, app_name: str) -> dict[str, Any]:
        validate_identifier(app_name, "app_name")

        async def work(conn: Connection) -> dict[str, Any]:
            async with conn.cursor() as cur:
                return (await self._scopes(cur, app_name, None))[1]

        return await self._run("reading app state", work)

    async def update_app_state(self, app_name: str, delta: dict[str, Any]) -> None:
        validate_identifier(app_name, "app_name")
        check_delta(delta, "delta")
        if not delta:
            return
        _scope_rows(delta)

        async def work(conn: Connection) -> None:
            async with conn.cursor() as cur:
                await conn.begin()
                await self._write_scopes(cur, app_name, None, {}, delta)
                await conn.commit()

        await self._run("updating app state", work)

    async def get_user_state(self, app_name: str, user_id: str) -> dict[str, Any]:
        validate_identifier(app_name, "app_name")
        validate_identifier(user_id, "user_id")

        async def work(conn: Connection) -> dict[str, Any]:
            async with conn.cursor() as cur:
                return (await self._scopes(cur, app_name, user_id))[0]

        return await self._run("reading user state", work)

    async def update_user_state(self, app_name: str, user_id: str, delta: dict[str, Any]) -> None:
        validate_identifier(app_name, "app_name")
        validate_identifier(user_id, "user_id")
        check_delta(delta, "delta")
        if not delta:
            return
        _scope_rows(delta)

        async def work(conn: Connection) -> None:
            async with conn.cursor() as cur:
                await conn.begin()
                await self._write_scopes(cur, app_name, user_id, delta, {})
                await conn.commit()

        await self._run("updating user state", work)

    # --- summaries ---------------------------------------------------------------------------

    async def get_summary(
        self, app_name: str, user_id: str, session_id: str, *, filter_key: str = ""
    ) -> Summary | None:
        key = SessionKey(app_name, user_id, session_id)
        if len(filter_key) > MAX_KEY_LENGTH:
            return None  # never stored: put_summary refuses such keys

        async def work(conn: Connection) -> object | None:
            async with conn.cursor() as cur:
                await cur.execute(
                    self._sql.get_summary, (key.app_name, key.user_id, key.session_id, filter_key)
                )
                row = await cur.fetchone()
            return None if row is None else row[0]

        raw = await self._run("reading a summary", work)
        if raw is None:
            return None
        return decode_summary(
            _text(raw), f"session_summaries of {session_id!r}, filter_key {filter_key!r}"
        )

    async def put_summary(
        self, app_name: str, user_id: str, session_id: str, summary: Summary
    ) -> bool:
        key = SessionKey(app_name, user_id, session_id)
        _check_length(summary.filter_key, "the summary's filter_key")
        ids = (key.app_name, key.user_id, key.session_id)
        summary_json = summary.model_dump_json()

        async def work(conn: Connection) -> bool:
            async with conn.cursor() as cur:
                await conn.begin()
                await cur.execute(self._sql.share_session, ids)
                if await cur.fetchone() is None:
                    raise summary_session_not_found(key)
                changed = await cur.execute(
                    self._sql.put_summary,
                    (*ids, summary.filter_key, summary_json, summary.event_count),
                )
                await conn.commit()
            return int(changed) > 0

        return await self._run("storing a summary", work)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._sweeper.close()
        await self._db.close()


def _scope_values(
    rows: Sequence[Sequence[Any]], where: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(user state, app state) from ``(kind, key, value JSON)`` rows: kind 1 user, 2 app."""
    user_state: dict[str, Any] = {}
    app_state: dict[str, Any] = {}
    for kind, name, raw in rows:
        scope = user_state if kind == 1 else app_state
        text = _text(name)
        scope[text] = decode_json_value(
            _text(raw), f"{'user' if kind == 1 else 'app'}_states of {where}, key {text!r}"
        )
    return user_state, app_state
