"""``PostgresSessionService``: sessions in PostgreSQL (psycopg 3, async pool).

The tables are in :mod:`session_backends.postgres_schema`, the statements in
:mod:`session_backends.postgres_statements`; this module runs them. Deletes and expiry set
``deleted_at`` (soft delete, the default) or remove rows (``soft_delete=False``); reads never see
either. Expired rows are hidden at once and swept by a cleanup loop. Events evicted by the event
limit are removed, not soft-deleted: the limit exists to bound storage.

Each append is one statement, so one round trip and one transaction, committed when it
returns (``Statements._append`` in :mod:`~.postgres_statements`): update the session row (which
locks it, so appends to one session queue up, from any number of processes), insert the event
(an ID the session holds fails on the unique index and undoes the statement), evict past the
limit, upsert the user and app state. A fenced append first reads its ``session_fences`` row
``FOR SHARE`` in the same statement: a new owner's ``take_fence`` waits for an append in flight
(and then sees it), and an append after it sees the new token and writes nothing. Schema
creation takes a
transaction-scoped advisory lock, so many workers can start at once. ``schema`` and
``table_prefix`` are checked against a strict pattern and always quoted with
:class:`psycopg.sql.Identifier`; IDs and values only ever travel as query parameters.

The connection pool opens on first use (never at import) and :meth:`close` closes it unless it
was passed in. A pool of ours that lost its server is replaced by a fresh one as soon as the
server answers again, so the first call after an outage succeeds (``_reconnect``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict

from runner_core.errors import (
    ConfigurationError,
    CorruptSessionDataError,
    SessionBackendError,
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
    check_ttl,
    decode_events,
    decode_json_object,
    decode_summary,
    decode_time,
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

from .postgres_schema import Tables
from .postgres_statements import Statements

__all__ = ["PostgresSessionService"]

T = TypeVar("T")
Conn = psycopg.AsyncConnection[Any]

#: Seconds a connection stays out of the pool between calls at most (see ``_take``).
_KEEP_SECONDS = 30.0
#: Tries of open_session when a concurrent caller created the session after its snapshot
#: (each try after the first reads what that caller committed).
_OPEN_ATTEMPTS = 3
_HINT = "is PostgreSQL running and reachable there? Check AGENT_RUNNER_SESSION_URL"


class PostgresSessionService:
    """Sessions in PostgreSQL. See the module docstring for the tables.

    Args:
        dsn: a libpq URL or ``key=value`` string (``postgresql://user@host:5432/db``).
        pool: an existing ``psycopg_pool.AsyncConnectionPool`` to use instead of ``dsn``
            (not closed by :meth:`close`; it must use ``autocommit=True`` connections).
        schema: the schema holding the tables (created if missing); None uses the search path.
        table_prefix: put before every table and index name (``app1_`` -> ``app1_session_states``).
        soft_delete: deletes and expiry set ``deleted_at`` (True, default) or remove rows.
        skip_db_init: do not create the schema and tables (they were created by a migration).
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
        dsn: str | None = None,
        *,
        pool: psycopg_pool.AsyncConnectionPool[Any] | None = None,
        schema: str | None = None,
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
        if (dsn is None) == (pool is None):
            raise ConfigurationError("PostgresSessionService needs a dsn or a pool (one of them).")
        tables = Tables(schema, table_prefix)
        check_pool_options(connect_timeout, max_pool_size)
        self.schema = schema
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
        self._dsn = dsn
        self._max_pool_size = max_pool_size
        self._pool = pool
        self._owns_pool = pool is None
        self._where = self._describe(dsn) if dsn is not None else "the given pool"
        self._tables = tables
        self._sql = Statements(
            tables,
            self.soft_delete,
            event_limit=self.event_limit,
            session_ttl=self.session_ttl,
            user_state_ttl=self.user_state_ttl,
            app_state_ttl=self.app_state_ttl,
        )
        self._ready_lock: asyncio.Lock | None = None
        self._initialized = self.skip_db_init
        self._sweeper = ExpirySweeper(
            self.remove_expired,
            self.cleanup_interval,
            enabled=bool(self.session_ttl or self.app_state_ttl or self.user_state_ttl),
            name="agent-runner-postgres-session-cleanup",
        )
        self._closed = False
        self._connect_kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(2, round(self.connect_timeout)),
        }
        #: Connections of ours out of a pool now: a pool that gives none while this is 0 is
        #: not busy, it cannot reach its server.
        self._lent = 0
        #: The server was unreachable: the next call checks it before using the pool.
        self._server_lost = False
        self._probe: asyncio.Task[None] | None = None
        #: The connection kept out of the pool between calls (:meth:`_take`), its pool, and
        #: when it left the pool.
        self._kept: tuple[psycopg_pool.AsyncConnectionPool[Any], Conn, float] | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    @staticmethod
    def _describe(dsn: str) -> str:
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise ConfigurationError(f"bad PostgreSQL DSN for the session store: {exc}") from exc
        host = str(params.get("host") or "localhost")
        port = str(params.get("port") or "5432")
        return f"{host}:{port}" if not host.startswith("/") else f"socket dir {host} port {port}"

    def __repr__(self) -> str:
        return (
            f"PostgresSessionService({self._where}, schema={self.schema!r}, "
            f"table_prefix={self.table_prefix!r})"
        )

    # --- plumbing ----------------------------------------------------------------------------

    def _backend_error(self, action: str, exc: BaseException) -> SessionBackendError:
        return SessionBackendError(
            f"PostgreSQL session store at {self._where} failed while {action}: "
            f"{type(exc).__name__}: {' '.join(str(exc).split())}. {_HINT}."
        )

    async def _ready(self) -> None:
        """Open the pool and create the schema on first use."""
        if self._closed:
            raise SessionBackendError(
                f"PostgresSessionService for {self._where} is closed; build a new one."
            )
        if self._pool is not None and self._initialized:
            return
        if self._ready_lock is None:
            self._ready_lock = asyncio.Lock()
        async with self._ready_lock:
            if self._pool is None:
                self._pool = self._new_pool()
                await self._pool.open(wait=False)
            if not self._initialized:
                await self._attempt("creating the session tables", self._create_schema)
                self._initialized = True
        self._sweeper.start()

    def _new_pool(self) -> psycopg_pool.AsyncConnectionPool[Any]:
        assert self._dsn is not None
        return psycopg_pool.AsyncConnectionPool(
            self._dsn,
            min_size=1,
            max_size=self._max_pool_size,
            open=False,
            timeout=self.connect_timeout,
            kwargs=self._connect_kwargs,
            name="agent-runner-sessions",
        )

    async def _create_schema(self, conn: Conn) -> None:
        """Create what is missing, once, however many workers start together.

        ``CREATE ... IF NOT EXISTS`` still takes table locks that would queue behind (and can
        deadlock with) running appends, so it runs only when an object is missing, checked
        before and again under the advisory lock.
        """
        names = [obj.as_string(conn) for obj in self._tables.objects]

        async def complete() -> bool:
            cur = await conn.execute(
                "SELECT count(to_regclass(n)) FROM unnest(%s::text[]) AS n", (names,)
            )
            row = await cur.fetchone()
            return row is not None and row[0] == len(names)

        if await complete():
            return
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._tables.lock_key,))
            if await complete():
                return
            for statement in self._tables.ddl:
                await conn.execute(statement)

    async def _attempt(self, action: str, work: Callable[[Conn], Awaitable[T]]) -> T:
        """Run ``work`` on a pooled connection, translating driver errors.

        - A connection the server dropped (a restart) fails at its first statement: the pool's
          idle connections are checked and ``work`` runs once more on a fresh one.
        - A pool of ours that gives no connection while none of ours is out is not busy: it
          cannot reach its server. From then on each call first checks the server itself
          (:meth:`_reconnect`) and fails at once with the reason while it is unreachable; the
          first call that finds it back runs ``work`` on a fresh pool.

        Everything ``work`` does is safe to repeat: appends are deduplicated by event ID.
        """
        checked = reconnected = moved = False
        while True:
            if self._server_lost:
                await self._reconnect(action)
                reconnected = True
            pool = self._pool
            assert pool is not None
            try:
                conn, since = await self._take(pool)
                self._lent += 1
                try:
                    return await work(conn)
                finally:
                    self._lent -= 1
                    await self._give(pool, conn, since)
            except psycopg_pool.PoolTimeout as exc:
                if reconnected or self._lent or not self._owns_pool:
                    raise self._backend_error(action, exc) from exc
                self._server_lost = True
            except psycopg_pool.PoolClosed as exc:
                if moved or pool is self._pool:
                    raise self._backend_error(action, exc) from exc
                moved = True  # replaced by a fresh pool while we waited: use that one
            except psycopg.OperationalError as exc:
                if checked or isinstance(exc, psycopg.errors.QueryCanceled):
                    raise self._backend_error(action, exc) from exc
                checked = True
                with contextlib.suppress(psycopg.Error, OSError):
                    await pool.check()
            except (psycopg.Error, OSError) as exc:
                raise self._backend_error(action, exc) from exc

    async def _take(self, pool: psycopg_pool.AsyncConnectionPool[Any]) -> tuple[Conn, float]:
        """A connection for one call: the one kept from the last call, or one from ``pool``.

        Why keep one: a ``getconn``/``putconn`` pair costs about 80 µs of CPU (the pool's
        locks, logging and checks), a fifth of an append. One connection is kept out between
        calls; concurrent calls take the others from the pool as usual. It goes back to the
        pool when it is broken or was out for :data:`_KEEP_SECONDS` (so the pool's own
        health checks and lifetime apply to it), when the pool is replaced, and at close.
        Returns the connection and when it left the pool.
        """
        kept, self._kept = self._kept, None
        if kept is not None:
            owner, conn, since = kept
            if owner is pool and time.monotonic() - since < _KEEP_SECONDS:
                return conn, since
            await owner.putconn(conn)  # a replaced pool closes it
        return await pool.getconn(), time.monotonic()

    async def _give(
        self, pool: psycopg_pool.AsyncConnectionPool[Any], conn: Conn, since: float
    ) -> None:
        """Keep ``conn`` for the next call if none is kept and it is idle; else give it back
        (``putconn`` rolls back one left in a transaction and replaces a broken one)."""
        if (
            self._kept is None
            and not self._closed
            and pool is self._pool
            and conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
        ):
            self._kept = (pool, conn, since)
        else:
            await pool.putconn(conn)

    async def _reconnect(self, action: str) -> None:
        """Replace the pool by a fresh one once the server answers a connection of our own.

        Why: psycopg_pool reconnects in the background, waiting 1, 2, 4, 8, ... s between
        attempts, and a caller cannot make it try sooner. After an outage of 20 s its next
        attempt can come many seconds after the server is back, and every call meanwhile
        would fail with ``PoolTimeout``. One probe runs at a time; every call that needs it
        waits for the same one.

        Raises:
            SessionBackendError: the server is still unreachable (with the connection error).
        """
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(
                self._replace_pool(), name="agent-runner-postgres-probe"
            )
            self._probe.add_done_callback(_consume_result)
        try:
            await asyncio.shield(self._probe)
        except (psycopg.Error, OSError) as exc:
            raise self._backend_error(action, exc) from exc

    async def _replace_pool(self) -> None:
        assert self._dsn is not None
        probe = await psycopg.AsyncConnection.connect(self._dsn, **self._connect_kwargs)
        await probe.close()
        if self._closed or not self._server_lost:
            return
        old, self._pool = self._pool, self._new_pool()
        await self._pool.open(wait=False)
        self._server_lost = False
        if old is not None:
            # Its waiting callers get PoolClosed and move to the new pool; connections still
            # out of it are closed when given back.
            retiring = asyncio.get_running_loop().create_task(old.close())
            self._retiring.add(retiring)
            retiring.add_done_callback(self._retiring.discard)

    async def _run(self, action: str, work: Callable[[Conn], Awaitable[T]]) -> T:
        if self._closed or self._pool is None or not self._initialized:
            await self._ready()  # opens the pool and the schema once; refuses a closed store
        return await self._attempt(action, work)

    async def remove_expired(self) -> int:
        """Retire expired sessions (with their events and summaries) and state rows now.

        Returns how many session and state rows were retired.
        """

        async def work(conn: Conn) -> int:
            cur = await conn.execute(self._sql.remove_expired)
            row = await cur.fetchone()
            return int(row[0]) if row else 0

        return await self._run("removing expired sessions", work)

    async def _write_scopes(
        self,
        conn: Conn,
        app_name: str,
        user_id: str | None,
        user_delta: dict[str, Any],
        app_delta: dict[str, Any],
    ) -> None:
        if user_delta and user_id is not None:
            keys, values = _columns(user_delta)
            ttl = self.user_state_ttl
            await conn.execute(self._sql.upsert_user_state, (app_name, user_id, ttl, keys, values))
            if ttl is not None:
                await conn.execute(self._sql.refresh_user_state, (ttl, app_name, user_id))
        if app_delta:
            keys, values = _columns(app_delta)
            ttl = self.app_state_ttl
            await conn.execute(self._sql.upsert_app_state, (app_name, ttl, keys, values))
            if ttl is not None:
                await conn.execute(self._sql.refresh_app_state, (ttl, app_name))

    async def _scopes(
        self, conn: Conn, app_name: str, user_id: str | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        cur = await conn.execute(self._sql.scopes, (app_name, user_id, app_name))
        row = await cur.fetchone()
        assert row is not None
        user_state = decode_json_object(row[0], f"user_states of {app_name!r}/{user_id!r}")
        app_state = decode_json_object(row[1], f"app_states of {app_name!r}")
        return user_state, app_state

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
        now = utcnow()
        params = {
            "app": key.app_name, "user": key.user_id, "sid": key.session_id,
            "state": session_json, "now": now,
            "user_delta": encode_json(parts.user, "state") if parts.user else None,
            "app_delta": encode_json(parts.app, "state") if parts.app else None,
        }  # fmt: skip

        async def work(conn: Conn) -> dict[str, Any]:
            # One statement (see Statements.create_session): one round trip.
            try:
                cur = await conn.execute(self._sql.create_session, params)
            except psycopg.errors.UniqueViolation as exc:
                if exc.diag.constraint_name != self._tables.session_index:
                    raise
                raise already_exists(key) from exc
            row = await cur.fetchone()
            assert row is not None
            where = f"of {key.app_name!r}"
            user_state = decode_json_object(row[0], f"user_states {where}/{key.user_id!r}")
            app_state = decode_json_object(row[1], f"app_states {where}")
            # The scopes as they were before the statement, and the deltas it wrote.
            user_state.update(parts.user)
            app_state.update(parts.app)
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

        async def work(conn: Conn) -> list[tuple[Any, ...]]:
            cur = await conn.execute(self._sql.get_session, ids * 3)
            return await cur.fetchall()

        ids = (key.app_name, key.user_id, key.session_id)
        rows = await self._run("reading a session", work)
        return self._session_of(key, rows, num_events=num_events, since=since)

    def _session_of(
        self,
        key: SessionKey,
        rows: Sequence[tuple[Any, ...]],
        *,
        num_events: int | None = None,
        since: datetime | None = None,
    ) -> Session | None:
        """The Session read by the rows of a session read (Statements.get_session): the
        session row as a JSON document at position -1, then the events; None: no -1 row."""
        if not rows or rows[0][0] != -1:
            return None
        where = f"session {key.app_name!r}/{key.user_id!r}/{key.session_id!r}"
        record = decode_json_object(rows[0][1], f"session_states of {where}")
        try:
            state = record["state"] or {}
            created_at = decode_time(record["created_at"], f"session_states of {where}")
            updated_at = decode_time(record["updated_at"], f"session_states of {where}")
            event_count = int(record["event_count"])
            summaries: dict[str, str] = record["summaries"] or {}
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptSessionDataError(
                f"stored session row of {where} is incomplete ({exc!r}); repair or delete it."
            ) from exc
        return loaded_session(
            key,
            state=state,
            app_state=record["app_state"] or {},
            user_state=record["user_state"] or {},
            created_at=created_at,
            updated_at=updated_at,
            event_count=event_count,
            events=decode_events(rows[1:], f"session_events of {where}"),
            summaries={
                fk: decode_summary(raw, f"session_summaries of {where}, filter_key {fk!r}")
                for fk, raw in summaries.items()
            },
            num_events=num_events,
            since=since,
        )

    async def open_session(
        self,
        app_name: str,
        user_id: str,
        session_id: str,
        *,
        fence: int | None = None,
        create: bool = True,
    ) -> Session | None:
        """:func:`runner_core.session.open_session` as one statement (Statements.open_session):
        one round trip where the generic sequence makes up to four."""
        key = SessionKey(app_name, user_id, session_id)
        params: dict[str, Any] = {
            "app": key.app_name, "user": key.user_id, "sid": key.session_id,
            "now": utcnow(), "create": create,
        }  # fmt: skip
        if fence is not None:
            params["fence"] = check_fence(fence)
        statement = self._sql.open_session if fence is None else self._sql.open_session_fenced

        async def work(conn: Conn) -> list[tuple[Any, ...]]:
            cur = await conn.execute(statement, params)
            return await cur.fetchall()

        for _ in range(_OPEN_ATTEMPTS):
            rows = await self._run("opening a session", work)
            if fence is not None:
                holder = int(rows[0][1])
                if holder != fence:
                    raise fenced(key, fence, holder)
                rows = rows[1:]
            session = self._session_of(key, rows)
            if session is not None or not create:
                return session
            # A concurrent call created it after this statement's snapshot: read it now.
        raise SessionBackendError(
            f"opening session {key.app_name!r}/{key.user_id!r}/{key.session_id!r}: it was "
            f"created and removed again by other callers {_OPEN_ATTEMPTS} times in a row; "
            "try again."
        )

    async def list_sessions(self, app_name: str, user_id: str) -> list[Session]:
        validate_identifier(app_name, "app_name")
        validate_identifier(user_id, "user_id")

        async def work(
            conn: Conn,
        ) -> tuple[list[tuple[Any, ...]], dict[str, Any], dict[str, Any]]:
            cur = await conn.execute(self._sql.list_sessions, (app_name, user_id))
            rows = await cur.fetchall()
            user_state, app_state = await self._scopes(conn, app_name, user_id)
            return rows, user_state, app_state

        rows, user_state, app_state = await self._run("listing sessions", work)
        return [
            loaded_session(
                SessionKey(app_name, user_id, sid),
                state=decode_json_object(state_raw, f"session_states of {sid!r}"),
                app_state=app_state,
                user_state=user_state,
                created_at=created_at,
                updated_at=updated_at,
                event_count=int(event_count),
            )
            for sid, state_raw, created_at, updated_at, event_count in rows
        ]

    async def delete_session(self, app_name: str, user_id: str, session_id: str) -> None:
        key = SessionKey(app_name, user_id, session_id)
        ids = (key.app_name, key.user_id, key.session_id)

        async def work(conn: Conn) -> None:
            async with conn.transaction():
                await conn.execute(self._sql.delete_session, ids * 3)
                await conn.execute(self._sql.delete_fence, ids)

        await self._run("deleting a session", work)

    async def take_fence(self, app_name: str, user_id: str, session_id: str, token: int) -> None:
        key = SessionKey(app_name, user_id, session_id)
        check_fence(token, "token")

        async def work(conn: Conn) -> int:
            cur = await conn.execute(
                self._sql.take_fence, (key.app_name, key.user_id, key.session_id, token)
            )
            row = await cur.fetchone()
            assert row is not None
            return int(row[0])

        holder = await self._run("taking a session's fence", work)
        if holder != token:
            raise fenced(key, token, holder)

    async def append_event(
        self, session: Session, event: Event, *, fence: int | None = None
    ) -> bool:
        key = check_appendable(session, event)
        fence = None if fence is None else check_fence(fence)
        parts = split_state_delta(state_delta_of(event))
        event_json = event.to_json()
        session_delta = encode_json(parts.session, "event.state_delta")
        is_user = event.is_user_message()
        now = utcnow()
        limit = self.event_limit

        params = {
            "app": key.app_name, "user": key.user_id, "sid": key.session_id,
            "event_id": event.id, "event": event_json, "now": now, "is_user": is_user,
            "delta": session_delta,
            "user_delta": encode_json(parts.user, "event.state_delta") if parts.user else None,
            "app_delta": encode_json(parts.app, "event.state_delta") if parts.app else None,
        }  # fmt: skip
        if fence is not None:
            params["fence"] = fence
        # The evicting statement only when this append can reach the limit as far as the
        # caller's session knows (a stale one may be behind: then the next append evicts).
        evict = limit is not None and session.event_count + 1 > limit
        statement = self._sql.appends[
            fence is not None, bool(parts.user), bool(parts.app), evict
        ]

        async def work(conn: Conn) -> tuple[Any, ...] | None:
            try:
                cur = await conn.execute(statement, params)
            except psycopg.errors.UniqueViolation as exc:
                if exc.diag.constraint_name != self._tables.event_id_index:
                    raise
                return None  # the session holds this event ID: the statement wrote nothing
            return await cur.fetchone()

        row = await self._run("appending an event", work)
        if row is None:
            return False
        holder, event_count = row
        if fence is not None and holder != fence:
            raise fenced(key, fence, holder)
        if event_count is None:
            raise session_not_found(key)
        apply_append(
            session, event, parts, event_count=event_count, updated_at=now, event_limit=limit
        )
        return True

    # --- app and user state ------------------------------------------------------------------

    async def get_app_state(self, app_name: str) -> dict[str, Any]:
        validate_identifier(app_name, "app_name")

        async def work(conn: Conn) -> dict[str, Any]:
            return (await self._scopes(conn, app_name, None))[1]

        return await self._run("reading app state", work)

    async def update_app_state(self, app_name: str, delta: dict[str, Any]) -> None:
        validate_identifier(app_name, "app_name")
        check_delta(delta, "delta")
        if not delta:
            return

        async def work(conn: Conn) -> None:
            async with conn.transaction():
                await self._write_scopes(conn, app_name, None, {}, delta)

        await self._run("updating app state", work)

    async def get_user_state(self, app_name: str, user_id: str) -> dict[str, Any]:
        validate_identifier(app_name, "app_name")
        validate_identifier(user_id, "user_id")

        async def work(conn: Conn) -> dict[str, Any]:
            return (await self._scopes(conn, app_name, user_id))[0]

        return await self._run("reading user state", work)

    async def update_user_state(self, app_name: str, user_id: str, delta: dict[str, Any]) -> None:
        validate_identifier(app_name, "app_name")
        validate_identifier(user_id, "user_id")
        check_delta(delta, "delta")
        if not delta:
            return

        async def work(conn: Conn) -> None:
            async with conn.transaction():
                await self._write_scopes(conn, app_name, user_id, delta, {})

        await self._run("updating user state", work)

    # --- summaries ---------------------------------------------------------------------------

    async def get_summary(
        self, app_name: str, user_id: str, session_id: str, *, filter_key: str = ""
    ) -> Summary | None:
        key = SessionKey(app_name, user_id, session_id)

        async def work(conn: Conn) -> str | None:
            cur = await conn.execute(
                self._sql.get_summary, (key.app_name, key.user_id, key.session_id, filter_key)
            )
            row = await cur.fetchone()
            return None if row is None else str(row[0])

        raw = await self._run("reading a summary", work)
        if raw is None:
            return None
        return decode_summary(
            raw, f"session_summaries of {session_id!r}, filter_key {filter_key!r}"
        )

    async def put_summary(
        self, app_name: str, user_id: str, session_id: str, summary: Summary
    ) -> bool:
        key = SessionKey(app_name, user_id, session_id)
        ids = (key.app_name, key.user_id, key.session_id)
        summary_json = summary.model_dump_json()

        async def work(conn: Conn) -> bool:
            async with conn.transaction():
                cur = await conn.execute(self._sql.share_session, ids)
                if await cur.fetchone() is None:
                    raise summary_session_not_found(key)
                cur = await conn.execute(
                    self._sql.put_summary,
                    (*ids, summary.filter_key, summary_json, summary.event_count),
                )
                return await cur.fetchone() is not None

        return await self._run("storing a summary", work)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._sweeper.close()
        loop = asyncio.get_running_loop()
        probe, self._probe = self._probe, None
        if probe is not None and not probe.done():
            probe.cancel()
        for pending in [probe, *self._retiring]:
            if pending is not None and pending.get_loop() is loop:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await pending
        kept, self._kept = self._kept, None
        if kept is not None:
            with contextlib.suppress(Exception):
                await kept[0].putconn(kept[1])
        if self._owns_pool and self._pool is not None:
            await self._pool.close()


def _consume_result(task: asyncio.Task[None]) -> None:
    """Mark a probe's failure as seen even if every caller waiting for it went away."""
    if not task.cancelled():
        task.exception()


def _columns(delta: dict[str, Any]) -> tuple[list[str], list[str]]:
    keys = list(delta)
    return keys, [encode_json(delta[k], f"state value {k!r}") for k in keys]
