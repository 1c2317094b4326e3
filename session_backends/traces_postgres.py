"""``PostgresTraceStore``: execution traces in PostgreSQL, beside the sessions.

Tables (names get ``table_prefix`` and live in ``schema`` when set):

- ``traces``: one row per invocation: app, user, session, the header (the trace's JSON
  without steps), ``fence``, ``step_count``, ``expires_at``;
- ``trace_steps``: one row per step (``invocation_id``, ``step_id``, ``position``, JSON),
  deleted with its trace (``ON DELETE CASCADE``).

Each write is one transaction that locks the trace's row (``FOR UPDATE``), checks the fence
when given, then writes: a step only if its ID is new. Expired traces are hidden at once and
deleted by the next start of any trace after ``cleanup_interval``. Schema creation takes a
transaction-scoped advisory lock, so many workers can start at once.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import sql

from runner_core.errors import ConfigurationError, SessionBackendError
from runner_core.session import SessionKey, validate_identifier
from runner_core.store_support import (
    DEFAULT_CLEANUP_INTERVAL,
    check_fence,
    check_sql_name,
    check_ttl,
)
from runner_core.traces import (
    Step,
    Trace,
    check_owner,
    decode_step,
    decode_trace,
    trace_fenced,
    trace_not_found,
    write_step_by_step,
)

__all__ = ["PostgresTraceStore"]

T = TypeVar("T")
Conn = psycopg.AsyncConnection[Any]

_LIVE = "(expires_at IS NULL OR expires_at > now())"


class PostgresTraceStore:
    """Traces in PostgreSQL. See the module docstring for the tables.

    Args:
        dsn: a libpq URL (``postgresql://user@host:5432/db``).
        pool: an existing ``psycopg_pool.AsyncConnectionPool`` (autocommit connections) to
            use instead of ``dsn``; not closed by :meth:`close`.
        schema, table_prefix: where the tables live (as for the session store).
        ttl: seconds (or a timedelta) a trace is kept after its last write; None or 0 keeps it
            until its session's traces are deleted. Give it the session store's
            ``session_ttl`` to keep traces as long as their sessions.
        cleanup_interval: seconds between deletes of expired traces (default 300).
        connect_timeout: seconds a call waits for a connection.
        max_pool_size: connections held at most.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool: psycopg_pool.AsyncConnectionPool[Any] | None = None,
        schema: str | None = None,
        table_prefix: str = "",
        ttl: float | timedelta | None = None,
        cleanup_interval: float | timedelta | None = None,
        connect_timeout: float = 5.0,
        max_pool_size: int = 10,
    ) -> None:
        if (dsn is None) == (pool is None):
            raise ConfigurationError("PostgresTraceStore needs a dsn or a pool (one of them).")
        if schema is not None:
            check_sql_name(schema, "schema", longest=40)
        if table_prefix:
            check_sql_name(table_prefix, "table_prefix", longest=30)
        self.ttl = check_ttl(ttl, "ttl")
        self.cleanup_interval = (
            check_ttl(cleanup_interval, "cleanup_interval") or DEFAULT_CLEANUP_INTERVAL
        )
        self._dsn = dsn
        self._pool = pool
        self._owns_pool = pool is None
        self._connect_timeout = connect_timeout
        self._max_pool_size = max_pool_size
        self._ready_lock = asyncio.Lock()
        self._initialized = False
        self._last_sweep = 0.0

        def name(table: str) -> sql.Composable:
            ident = table_prefix + table
            return sql.Identifier(schema, ident) if schema else sql.Identifier(ident)

        self._schema = sql.Identifier(schema) if schema else None
        self._traces = name("traces")
        self._steps = name("trace_steps")
        self._index = sql.Identifier(table_prefix + "traces_session_idx")
        self._lock_id = zlib.crc32(f"agent-runner-traces:{schema}:{table_prefix}".encode())

    def __repr__(self) -> str:
        return f"PostgresTraceStore(traces={self._traces!r})"

    # --- plumbing ------------------------------------------------------------------------

    async def _ready(self) -> psycopg_pool.AsyncConnectionPool[Any]:
        async with self._ready_lock:
            if self._pool is None:
                assert self._dsn is not None
                self._pool = psycopg_pool.AsyncConnectionPool(
                    self._dsn,
                    min_size=1,
                    max_size=self._max_pool_size,
                    open=False,
                    timeout=self._connect_timeout,
                    kwargs={"autocommit": True},
                    name="agent-runner-traces",
                )
                await self._pool.open(wait=False)
            if not self._initialized:
                async with self._pool.connection() as conn, conn.transaction():
                    await self._create(conn)
                self._initialized = True
        return self._pool

    async def _create(self, conn: Conn) -> None:
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_id,))
        if self._schema is not None:
            await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(self._schema))
        await conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (invocation_id text PRIMARY KEY, "
                "app_name text NOT NULL, user_id text NOT NULL, session_id text NOT NULL, "
                "header jsonb NOT NULL, fence bigint, step_count integer NOT NULL DEFAULT 0, "
                "expires_at timestamptz)"
            ).format(self._traces)
        )
        await conn.execute(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (app_name, user_id, session_id)").format(
                self._index, self._traces
            )
        )
        await conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (invocation_id text NOT NULL REFERENCES {} "
                "ON DELETE CASCADE, step_id text NOT NULL, position integer NOT NULL, "
                "step jsonb NOT NULL, PRIMARY KEY (invocation_id, step_id))"
            ).format(self._steps, self._traces)
        )

    async def _call(self, action: str, work: Callable[[Conn], Awaitable[T]]) -> T:
        try:
            pool = await self._ready()
            async with pool.connection() as conn, conn.transaction():
                return await work(conn)
        except (psycopg.Error, psycopg_pool.PoolTimeout, OSError) as exc:
            raise SessionBackendError(
                f"PostgreSQL trace store failed while {action}: {type(exc).__name__}: "
                f"{' '.join(str(exc).split())}. Is PostgreSQL running and reachable there? "
                "Check AGENT_RUNNER_TRACE_URL."
            ) from exc

    def _expiry(self) -> sql.Composable:
        if self.ttl is None:
            return sql.SQL("NULL")
        return sql.SQL("now() + make_interval(secs => {})").format(sql.Literal(self.ttl))

    async def _lock(self, conn: Conn, invocation_id: str, fence: int | None) -> Any:
        """Lock the live trace's row; check the fence. Returns the row (header, fence, n)."""
        cur = await conn.execute(
            sql.SQL(
                "SELECT header::text, fence, step_count FROM {} WHERE invocation_id = %s AND "
                + _LIVE
                + " FOR UPDATE"
            ).format(self._traces),
            (invocation_id,),
        )
        row = await cur.fetchone()
        if row is None:
            raise trace_not_found(invocation_id)
        if fence is not None and row[1] != fence:
            raise trace_fenced(invocation_id, fence, row[1])
        return row

    # --- the store -----------------------------------------------------------------------

    async def start(self, trace: Trace, *, fence: int | None = None) -> bool:
        key = SessionKey(trace.app_name, trace.user_id, trace.session_id)
        validate_identifier(trace.invocation_id, "invocation_id")
        if fence is not None:
            check_fence(fence)
        sweep = time.monotonic() - self._last_sweep > self.cleanup_interval
        if sweep:
            self._last_sweep = time.monotonic()

        async def work(conn: Conn) -> bool:
            if sweep:
                await conn.execute(
                    sql.SQL("DELETE FROM {} WHERE expires_at <= now()").format(self._traces)
                )
            cur = await conn.execute(
                sql.SQL(
                    "SELECT header::text, fence FROM {} WHERE invocation_id = %s FOR UPDATE"
                ).format(self._traces),
                (trace.invocation_id,),
            )
            row = await cur.fetchone()
            expired = False
            if row is not None:
                cur = await conn.execute(
                    sql.SQL("SELECT NOT " + _LIVE + " FROM {} WHERE invocation_id = %s").format(
                        self._traces
                    ),
                    (trace.invocation_id,),
                )
                live_row = await cur.fetchone()
                expired = bool(live_row and live_row[0])
                if expired:
                    await conn.execute(
                        sql.SQL("DELETE FROM {} WHERE invocation_id = %s").format(self._traces),
                        (trace.invocation_id,),
                    )
            if row is None or expired:
                await conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (invocation_id, app_name, user_id, session_id, header, "
                        "fence, expires_at) VALUES (%s, %s, %s, %s, %s::jsonb, %s, {})"
                    ).format(self._traces, self._expiry()),
                    (
                        trace.invocation_id,
                        key.app_name,
                        key.user_id,
                        key.session_id,
                        trace.header().to_json(),
                        fence,
                    ),
                )
                return True
            stored = decode_trace(row[0], f"{self._traces!r} {trace.invocation_id}")
            check_owner(stored, trace)
            if fence is not None and row[1] is not None and row[1] > fence:
                raise trace_fenced(trace.invocation_id, fence, row[1])
            stored.attempts += 1
            stored.status = "running"
            stored.ended_at = None
            await conn.execute(
                sql.SQL(
                    "UPDATE {} SET header = %s::jsonb, fence = COALESCE(%s, fence), "
                    "expires_at = {} WHERE invocation_id = %s"
                ).format(self._traces, self._expiry()),
                (stored.to_json(), fence, trace.invocation_id),
            )
            return False

        return await self._call("starting a trace", work)

    async def add_step(self, invocation_id: str, step: Step, *, fence: int | None = None) -> bool:
        validate_identifier(invocation_id, "invocation_id")
        if fence is not None:
            check_fence(fence)

        async def work(conn: Conn) -> bool:
            row = await self._lock(conn, invocation_id, fence)
            cur = await conn.execute(
                sql.SQL(
                    "INSERT INTO {} (invocation_id, step_id, position, step) "
                    "VALUES (%s, %s, %s, %s::jsonb) ON CONFLICT DO NOTHING"
                ).format(self._steps),
                (invocation_id, step.step_id, row[2] + 1, step.to_json()),
            )
            if cur.rowcount == 0:
                return False
            await conn.execute(
                sql.SQL(
                    "UPDATE {} SET step_count = step_count + 1, expires_at = {} "
                    "WHERE invocation_id = %s"
                ).format(self._traces, self._expiry()),
                (invocation_id,),
            )
            return True

        return await self._call("adding a trace step", work)

    async def finish(self, trace: Trace, *, fence: int | None = None) -> None:
        validate_identifier(trace.invocation_id, "invocation_id")
        if fence is not None:
            check_fence(fence)

        async def work(conn: Conn) -> None:
            row = await self._lock(conn, trace.invocation_id, fence)
            check_owner(decode_trace(row[0], f"{self._traces!r} {trace.invocation_id}"), trace)
            await conn.execute(
                sql.SQL(
                    "UPDATE {} SET header = %s::jsonb, expires_at = {} WHERE invocation_id = %s"
                ).format(self._traces, self._expiry()),
                (trace.header().to_json(), trace.invocation_id),
            )

        await self._call("finishing a trace", work)

    async def write(
        self,
        invocation_id: str,
        steps: Sequence[Step],
        *,
        header: Trace | None = None,
        fence: int | None = None,
        start: Trace | None = None,
    ) -> None:
        await write_step_by_step(
            self, invocation_id, steps, header=header, fence=fence, start=start
        )

    async def get(self, invocation_id: str) -> Trace | None:
        validate_identifier(invocation_id, "invocation_id")

        async def work(conn: Conn) -> Trace | None:
            cur = await conn.execute(
                sql.SQL(
                    "SELECT header::text FROM {} WHERE invocation_id = %s AND " + _LIVE
                ).format(self._traces),
                (invocation_id,),
            )
            row = await cur.fetchone()
            if row is None:
                return None
            trace = decode_trace(row[0], f"{self._traces!r} {invocation_id}")
            cur = await conn.execute(
                sql.SQL(
                    "SELECT step_id, step::text FROM {} WHERE invocation_id = %s "
                    "ORDER BY position"
                ).format(self._steps),
                (invocation_id,),
            )
            trace.steps = [
                decode_step(raw, f"{self._steps!r} {invocation_id} {step_id}")
                for step_id, raw in await cur.fetchall()
            ]
            return trace

        return await self._call("reading a trace", work)

    async def delete_session(self, app_name: str, user_id: str, session_id: str) -> int:
        key = SessionKey(app_name, user_id, session_id)

        async def work(conn: Conn) -> int:
            cur = await conn.execute(
                sql.SQL(
                    "DELETE FROM {} WHERE app_name = %s AND user_id = %s AND session_id = %s"
                ).format(self._traces),
                (key.app_name, key.user_id, key.session_id),
            )
            return cur.rowcount

        return await self._call("deleting a session's traces", work)

    async def close(self) -> None:
        if self._owns_pool and self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
