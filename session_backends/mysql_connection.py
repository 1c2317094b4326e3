"""The MySQL session store's connection to its server: the URL, the pool, table creation,
and running work with driver errors translated (asyncmy).

Connections run in autocommit mode, ``READ COMMITTED`` and strict ``TRADITIONAL`` SQL mode (a
value too long for its column is an error, never silently cut). A transaction the server rolled
back for a deadlock or a lock wait timeout runs again; a connection the server dropped (a
restart) is replaced once. The pool opens on first use (never at import).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import asyncmy
from asyncmy.connection import Connection
from asyncmy.errors import Error as MySQLError
from asyncmy.errors import OperationalError

from runner_core.errors import ConfigurationError, SessionBackendError

__all__ = ["DUPLICATE_KEY", "MySQLDatabase", "MySQLUrl"]

T = TypeVar("T")

_HINT = "is MySQL/MariaDB running and reachable there? Check AGENT_RUNNER_SESSION_URL"
#: The server's code for a duplicate key (a unique key refused a row).
DUPLICATE_KEY = 1062
#: Deadlock found; lock wait timeout exceeded: the transaction was rolled back, try again.
_RETRY_TRANSACTION = frozenset({1213, 1205})
#: The server went away or the connection was lost: a pooled connection it dropped.
_CONNECTION_LOST = frozenset({2006, 2013, 2055})
_TRANSACTION_ATTEMPTS = 5


class MySQLUrl:
    """The parts of a ``mysql://user:password@host:port/database`` URL."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme.lower() != "mysql":
            raise ConfigurationError(
                f"MySQLSessionService needs a mysql:// URL, got scheme {parts.scheme!r}."
            )
        try:
            port = parts.port or 3306
        except ValueError as exc:
            raise ConfigurationError(
                f"the MySQL session store URL has a bad port ({exc}); use "
                "mysql://user:password@host:3306/database (AGENT_RUNNER_SESSION_URL)."
            ) from None
        database = unquote(parts.path.lstrip("/"))
        if not database or "/" in database:
            raise ConfigurationError(
                "the MySQL session store URL names no database: use "
                "mysql://user:password@host:3306/database (AGENT_RUNNER_SESSION_URL)."
            )
        if parts.query or parts.fragment:
            raise ConfigurationError(
                "the MySQL session store URL takes no query parameters or fragment; pass "
                "options (table_prefix, event_limit, ...) as keyword arguments instead."
            )
        self.host = parts.hostname or "127.0.0.1"
        self.port = port
        self.user = unquote(parts.username) if parts.username else "root"
        self.password = unquote(parts.password) if parts.password else ""
        self.database = database

    def __str__(self) -> str:  # never the password
        return f"{self.host}:{self.port}/{self.database}"


class MySQLDatabase:
    """The pool to one MySQL database, opened and checked on first use.

    Args:
        url: the parsed URL.
        connect_timeout: seconds; bounds how long a call waits for an unreachable server.
        max_pool_size: connections held at most.
        tables: the tables that must exist; ``ddl`` creates them (under the server-wide
            ``lock_name``) unless ``skip_db_init``.
        count_tables: a statement counting which of ``tables`` exist.
    """

    def __init__(
        self,
        url: MySQLUrl,
        *,
        connect_timeout: float,
        max_pool_size: int,
        tables: Sequence[str],
        count_tables: str,
        ddl: Sequence[str],
        lock_name: str,
        skip_db_init: bool,
    ) -> None:
        self._url = url
        self.connect_timeout = connect_timeout
        self._max_pool_size = max_pool_size
        self._tables = list(tables)
        self._count_tables = count_tables
        self._ddl = list(ddl)
        self._lock_name = lock_name
        self.skip_db_init = skip_db_init
        self._pool: Any = None
        self._ready_lock: asyncio.Lock | None = None
        self._initialized = False
        #: The server's max_allowed_packet: the largest statement it takes (bytes), once known.
        self.max_packet: int | None = None
        self._closed = False

    def __str__(self) -> str:
        return str(self._url)

    def backend_error(self, action: str, exc: BaseException) -> SessionBackendError:
        return SessionBackendError(
            f"MySQL session store at {self._url} failed while {action}: "
            f"{type(exc).__name__}: {' '.join(str(exc).split())}. {_HINT}."
        )

    async def ready(self, action: str) -> None:
        """Open the pool, create the tables and read the server's limits on first use."""
        if self._closed:
            raise SessionBackendError(
                f"the MySQL session store for {self._url} is closed; build a new one."
            )
        if self._pool is not None and self._initialized:
            return
        if self._ready_lock is None:
            self._ready_lock = asyncio.Lock()
        async with self._ready_lock:
            if self._pool is None:
                try:
                    self._pool = await asyncmy.create_pool(
                        minsize=0,
                        maxsize=self._max_pool_size,
                        pool_recycle=3600,
                        host=self._url.host,
                        port=self._url.port,
                        user=self._url.user,
                        password=self._url.password,
                        database=self._url.database,
                        connect_timeout=max(1, round(self.connect_timeout)),
                        charset="utf8mb4",
                        autocommit=True,
                        sql_mode="TRADITIONAL",
                        init_command="SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
                    )
                except (TimeoutError, MySQLError, OSError) as exc:
                    raise self.backend_error(action, exc) from exc
            if not self._initialized:
                await self.attempt("creating the session tables", self._initialize)
                self._initialized = True

    async def _initialize(self, conn: Connection) -> None:
        """Read max_allowed_packet; create what is missing, once, however many workers start.

        ``CREATE TABLE IF NOT EXISTS`` still waits for metadata locks held by running
        transactions, so it runs only when a table is missing, checked before and again under
        the named lock.
        """
        async with conn.cursor() as cur:
            await cur.execute("SELECT @@max_allowed_packet")
            row = await cur.fetchone()
            self.max_packet = int(row[0])
            if self.skip_db_init:
                return

            async def complete() -> bool:
                await cur.execute(self._count_tables, self._tables)
                found = await cur.fetchone()
                return int(found[0]) == len(self._tables)

            if await complete():
                return
            await cur.execute("SELECT GET_LOCK(%s, 60)", (self._lock_name,))
            try:
                if not await complete():
                    for statement in self._ddl:
                        await cur.execute(statement)
            finally:
                await cur.execute("SELECT RELEASE_LOCK(%s)", (self._lock_name,))

    async def attempt(self, action: str, work: Callable[[Connection], Awaitable[T]]) -> T:
        """Run ``work`` on a pooled connection, translating driver errors.

        A transaction the server rolled back for a deadlock or lock wait timeout runs again; a
        connection the server dropped (a restart) is replaced once. Everything ``work`` does
        is safe to repeat: appends are deduplicated by event ID.
        """
        transactions = 0
        reconnected = False
        while True:
            try:
                async with self._pool.acquire() as conn:
                    try:
                        return await work(conn)
                    except BaseException:
                        # A connection left inside a transaction is closed by the pool.
                        if conn.connected:
                            with contextlib.suppress(MySQLError, OSError):
                                await conn.rollback()
                        raise
            except OperationalError as exc:
                code = exc.args[0] if exc.args else None
                if code in _RETRY_TRANSACTION and transactions < _TRANSACTION_ATTEMPTS:
                    transactions += 1
                    continue
                if code in _CONNECTION_LOST and not reconnected:
                    reconnected = True
                    continue
                raise self.backend_error(action, exc) from exc
            except (TimeoutError, MySQLError, OSError) as exc:
                raise self.backend_error(action, exc) from exc

    async def close(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            with contextlib.suppress(MySQLError, OSError):
                await pool.wait_closed()
