"""Artifacts in PostgreSQL: the bytes in the database (:class:`PostgresArtifactService`), or
only the index of a blob store (:class:`PostgresArtifactIndex`).

Tables (``table_prefix`` in front of each name, in ``schema`` when given):

- ``artifact_names (app_name, user_id, scope, name, next_version)``: one row per artifact;
  ``scope`` is the session ID, or ``''`` for ``user:`` names. A save takes the next version
  with ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``: the row lock makes concurrent
  saves of one name wait for each other, so each gets its own version. The whole save (fence
  check, version, version row) is one statement.
- ``artifact_versions (app_name, user_id, scope, name, version, content_type, size,
  created_at, location, data)``: ``data`` holds the bytes, or ``location`` says where a blob
  store keeps them.
- ``artifact_fences (app_name, user_id, session_id, token)``: the fence of each session's
  artifact writes. A save reads it ``FOR SHARE`` in its statement, so a newer owner's
  ``take_fence`` waits for saves in flight and every later save sees the new token.

An index and a store given the same database, schema and prefix share these tables; give each
its own.

A version becomes visible when its transaction commits, whole or not at all.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from runner_core.artifacts import (
    DEFAULT_MAX_ARTIFACT_BYTES,
    Artifact,
    ArtifactKey,
    ArtifactVersion,
    BaseArtifactService,
    RunFence,
)
from runner_core.errors import ArtifactBackendError, ConfigurationError
from runner_core.session import USER_PREFIX, SessionKey
from runner_core.store_support import fenced

__all__ = ["PostgresArtifactIndex", "PostgresArtifactService"]

T = TypeVar("T")
_IDENT_RE = re.compile(r"[a-z_][a-z0-9_]{0,39}")
_PREFIX_RE = re.compile(r"[a-z_][a-z0-9_]{0,29}")
_KEY = "app_name = %s AND user_id = %s AND scope = %s AND name = %s"


class _Tables:
    """The statements, built once from the checked schema and prefix."""

    def __init__(self, schema: str | None, prefix: str) -> None:
        def table(name: str) -> sql.Composable:
            ident = sql.Identifier(prefix + name)
            return sql.SQL("{}.{}").format(sql.Identifier(schema), ident) if schema else ident

        names, versions, fences = (
            table("artifact_names"),
            table("artifact_versions"),
            table("artifact_fences"),
        )

        def q(text: str) -> sql.Composed:
            return sql.SQL(text).format(n=names, v=versions, f=fences)

        create = [
            "CREATE TABLE IF NOT EXISTS {n} (app_name TEXT NOT NULL, user_id TEXT NOT NULL, "
            "scope TEXT NOT NULL, name TEXT NOT NULL, next_version INTEGER NOT NULL, "
            "PRIMARY KEY (app_name, user_id, scope, name))",
            "CREATE TABLE IF NOT EXISTS {v} (app_name TEXT NOT NULL, user_id TEXT NOT NULL, "
            "scope TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, "
            "content_type TEXT NOT NULL, size BIGINT NOT NULL, "
            "created_at TIMESTAMPTZ NOT NULL, location TEXT, data BYTEA, idempotency_key TEXT, "
            "PRIMARY KEY (app_name, user_id, scope, name, version))",
            "CREATE TABLE IF NOT EXISTS {f} (app_name TEXT NOT NULL, user_id TEXT NOT NULL, "
            "session_id TEXT NOT NULL, token BIGINT NOT NULL, "
            "PRIMARY KEY (app_name, user_id, session_id))",
        ]
        # The prefix is a checked plain name, so the index's name is one too.
        create.append(
            f"CREATE UNIQUE INDEX IF NOT EXISTS {prefix}artifact_versions_idempotency ON {{v}} "
            "(app_name, user_id, scope, name, idempotency_key) "
            "WHERE idempotency_key IS NOT NULL"
        )
        self.schema = (
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
            if schema
            else None
        )
        self.create = [q(statement) for statement in create]
        self.fence_for_write = q(
            "SELECT token FROM {f} WHERE app_name = %s AND user_id = %s AND session_id = %s "
            "FOR SHARE"
        )
        self.take_fence = q(
            "INSERT INTO {f} AS f (app_name, user_id, session_id, token) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (app_name, user_id, session_id) DO UPDATE SET token = EXCLUDED.token "
            "WHERE f.token <= EXCLUDED.token RETURNING token"
        )
        self.fence_holder = q(
            "SELECT token FROM {f} WHERE app_name = %s AND user_id = %s AND session_id = %s"
        )
        # One statement, one round trip: the fence row read FOR SHARE (a newer owner's
        # take_fence waits for it, or this sees its token), the version taken from the name's
        # row (its lock orders concurrent saves), the version row written; nothing when a
        # greater token holds the fence, or when a version was saved with the idempotency key.
        # Returns (version or NULL, the fence's token, the earlier version's columns or NULLs).
        self.commit = q(
            "WITH fence AS (SELECT token FROM {f} WHERE app_name = %(app)s "
            "AND user_id = %(user)s AND session_id = %(fenced_session)s FOR SHARE), "
            "earlier AS (SELECT version, content_type, size, created_at FROM {v} "
            "WHERE app_name = %(app)s AND user_id = %(user)s AND scope = %(scope)s "
            "AND name = %(name)s AND idempotency_key = %(idempotency_key)s::text), "
            "allowed AS (SELECT NOT EXISTS "
            "(SELECT 1 FROM fence WHERE token > %(token)s::bigint) "
            "AND NOT EXISTS (SELECT 1 FROM earlier) AS ok), "
            "taken AS (INSERT INTO {n} AS n (app_name, user_id, scope, name, next_version) "
            "SELECT %(app)s, %(user)s, %(scope)s, %(name)s, 1 FROM allowed WHERE ok "
            "ON CONFLICT (app_name, user_id, scope, name) "
            "DO UPDATE SET next_version = n.next_version + 1 "
            "RETURNING n.next_version - 1 AS version), "
            "written AS (INSERT INTO {v} (app_name, user_id, scope, name, version, "
            "content_type, size, created_at, location, data, idempotency_key) "
            "SELECT %(app)s, %(user)s, %(scope)s, %(name)s, taken.version, %(content_type)s::text, "
            "%(size)s::bigint, %(created_at)s::timestamptz, %(location)s::text, %(data)s::bytea, "
            "%(idempotency_key)s::text FROM taken RETURNING version) "
            "SELECT (SELECT version FROM written), (SELECT max(token) FROM fence), "
            "e.version, e.content_type, e.size, e.created_at "
            "FROM (SELECT 1) AS one LEFT JOIN earlier AS e ON true"
        )
        columns = "version, content_type, size, created_at, location"
        self.latest = q(
            f"SELECT {columns}, data FROM {{v}} WHERE {_KEY} ORDER BY version DESC LIMIT 1"
        )
        self.latest_info = q(
            f"SELECT {columns} FROM {{v}} WHERE {_KEY} ORDER BY version DESC LIMIT 1"
        )
        self.one = q(f"SELECT {columns}, data FROM {{v}} WHERE {_KEY} AND version = %s")
        self.one_info = q(f"SELECT {columns} FROM {{v}} WHERE {_KEY} AND version = %s")
        self.versions = q(f"SELECT {columns} FROM {{v}} WHERE {_KEY} ORDER BY version")
        self.names = q(
            "SELECT scope, name FROM {n} WHERE app_name = %s AND user_id = %s AND scope IN ('', %s)"
        )
        self.delete_versions = q(f"DELETE FROM {{v}} WHERE {_KEY} RETURNING location")
        self.delete_name = q(f"DELETE FROM {{n}} WHERE {_KEY}")
        scope = "app_name = %s AND user_id = %s AND scope = %s"
        self.delete_session_versions = q(f"DELETE FROM {{v}} WHERE {scope} RETURNING location")
        self.delete_session_names = q(f"DELETE FROM {{n}} WHERE {scope}")
        self.delete_fence = q(
            "DELETE FROM {f} WHERE app_name = %s AND user_id = %s AND session_id = %s"
        )


def _key_params(key: ArtifactKey) -> tuple[str, str, str, str]:
    return (key.app_name, key.user_id, key.session_id or "", key.path)


def _info(key: ArtifactKey, row: tuple[Any, ...]) -> ArtifactVersion:
    return ArtifactVersion(
        name=key.name, version=row[0], content_type=row[1], size=row[2], created_at=row[3]
    )


class _Postgres:
    """The pool, the tables and the error translation both classes share."""

    def __init__(
        self,
        dsn: str | None,
        pool: psycopg_pool.AsyncConnectionPool[Any] | None,
        *,
        schema: str | None,
        table_prefix: str,
        max_pool_size: int,
        connect_timeout: float,
    ) -> None:
        if (dsn is None) == (pool is None):
            raise ConfigurationError("a PostgreSQL artifact store needs a dsn or a pool (one).")
        if schema is not None and not _IDENT_RE.fullmatch(schema):
            raise ConfigurationError(
                f"schema {schema!r} is not a plain lower-case SQL name (a-z, 0-9, _)."
            )
        if table_prefix and not _PREFIX_RE.fullmatch(table_prefix):
            raise ConfigurationError(
                f"table_prefix {table_prefix!r} is not a plain lower-case SQL name (a-z, 0-9, _)."
            )
        self.where = "the given pool"
        if dsn is not None:
            try:
                params = conninfo_to_dict(dsn)
            except psycopg.ProgrammingError as exc:
                raise ConfigurationError(f"bad PostgreSQL DSN for artifacts: {exc}") from exc
            self.where = f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}"
        self.tables = _Tables(schema, table_prefix)
        self._dsn = dsn
        self._pool = pool
        self._owns_pool = pool is None
        self._max_pool_size = max_pool_size
        self._connect_timeout = connect_timeout
        self._ready_lock = asyncio.Lock()
        self._initialized = False
        self._closed = False

    async def _ready(self) -> psycopg_pool.AsyncConnectionPool[Any]:
        if self._closed:
            raise ArtifactBackendError(f"the PostgreSQL artifact store at {self.where} is closed.")
        if self._pool is not None and self._initialized:
            return self._pool
        async with self._ready_lock:
            if self._pool is None:
                pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
                    self._dsn or "",
                    min_size=1,
                    max_size=self._max_pool_size,
                    open=False,
                    timeout=self._connect_timeout,
                    kwargs={
                        "autocommit": True,
                        "connect_timeout": max(2, round(self._connect_timeout)),
                    },
                )
                await pool.open(wait=False)
                self._pool = pool
            if not self._initialized:
                async with self._pool.connection() as conn, conn.transaction():
                    # One creator at a time across processes (CREATE ... IF NOT EXISTS races).
                    await conn.execute("SELECT pg_advisory_xact_lock(2020112001)")
                    if self.tables.schema is not None:
                        await conn.execute(self.tables.schema)
                    for statement in self.tables.create:
                        await conn.execute(statement)
                self._initialized = True
        return self._pool

    async def run(
        self,
        action: str,
        body: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]],
        *,
        transaction: bool = True,
    ) -> T:
        """Run ``body`` in one transaction (or, for one statement, in autocommit); driver
        failures become ArtifactBackendError. A FencedError raised by ``body`` rolls the
        transaction back and passes as it is."""
        try:
            pool = await self._ready()
            async with pool.connection() as conn:
                if not transaction:
                    return await body(conn)
                async with conn.transaction():
                    return await body(conn)
        except (psycopg.Error, psycopg_pool.PoolTimeout, OSError) as exc:
            raise ArtifactBackendError(
                f"PostgreSQL artifact store at {self.where} failed while {action}: "
                f"{type(exc).__name__}: {' '.join(str(exc).split())}. Check that the server is "
                "up and reachable."
            ) from exc

    async def check_fence(self, conn: psycopg.AsyncConnection[Any], fence: RunFence | None) -> None:
        if fence is None:
            return
        session = fence.session
        cursor = await conn.execute(
            self.tables.fence_for_write, (session.app_name, session.user_id, session.session_id)
        )
        row = await cursor.fetchone()
        if row is not None and row[0] > fence.token:
            raise fenced(session, fence.token, row[0])

    async def commit(
        self,
        key: ArtifactKey,
        *,
        content_type: str,
        size: int,
        created_at: datetime,
        location: str | None,
        data: bytes | None,
        fence: RunFence | None,
        idempotency_key: str | None,
    ) -> tuple[ArtifactVersion, bool]:
        params = {
            "app": key.app_name,
            "user": key.user_id,
            "scope": key.session_id or "",
            "name": key.path,
            # Unfenced: a session ID no fence row has, and a NULL token nothing exceeds.
            "fenced_session": fence.session.session_id if fence is not None else "",
            "token": fence.token if fence is not None else None,
            "content_type": content_type,
            "size": size,
            "created_at": created_at,
            "location": location,
            "data": data,
            "idempotency_key": idempotency_key,
        }

        async def body(conn: psycopg.AsyncConnection[Any]) -> tuple[Any, ...]:
            try:
                cursor = await conn.execute(self.tables.commit, params)
            except psycopg.errors.UniqueViolation:
                # Another save with this idempotency key committed first: it is the earlier.
                cursor = await conn.execute(self.tables.commit, params)
            row = await cursor.fetchone()
            assert row is not None
            return tuple(row)

        written, holder, *earlier = await self.run(f"saving {key.name!r}", body, transaction=False)
        if written is None and holder is not None and fence is not None and holder > fence.token:
            raise fenced(fence.session, fence.token, holder)
        if written is None:
            assert earlier[0] is not None
            return _info(key, tuple(earlier)), False
        info = ArtifactVersion(
            name=key.name,
            version=int(written),
            content_type=content_type,
            size=size,
            created_at=created_at,
        )
        return info, True

    async def find(
        self, key: ArtifactKey, version: int | None, *, with_data: bool
    ) -> tuple[ArtifactVersion, str | None, bytes | None] | None:
        tables = self.tables
        if version is None:
            statement, params = (
                (tables.latest if with_data else tables.latest_info),
                _key_params(key),
            )
        else:
            statement = tables.one if with_data else tables.one_info
            params = (*_key_params(key), version)  # type: ignore[assignment]

        async def body(conn: psycopg.AsyncConnection[Any]) -> tuple[Any, ...] | None:
            cursor = await conn.execute(statement, params)
            return await cursor.fetchone()

        row = await self.run(f"loading {key.name!r}", body, transaction=False)
        if row is None:
            return None
        data = bytes(row[5]) if with_data and row[5] is not None else None
        return _info(key, row), row[4], data

    async def names(self, app_name: str, user_id: str, session_id: str | None) -> list[str]:
        async def body(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cursor = await conn.execute(self.tables.names, (app_name, user_id, session_id or ""))
            return await cursor.fetchall()

        rows = await self.run("listing artifact names", body, transaction=False)
        return [name if scope else USER_PREFIX + name for scope, name in rows]

    async def versions(self, key: ArtifactKey) -> list[ArtifactVersion]:
        async def body(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cursor = await conn.execute(self.tables.versions, _key_params(key))
            return await cursor.fetchall()

        rows = await self.run(f"listing {key.name!r}", body, transaction=False)
        return [_info(key, row) for row in rows]

    async def remove(self, key: ArtifactKey, fence: RunFence | None) -> list[str]:
        async def body(conn: psycopg.AsyncConnection[Any]) -> list[str]:
            await self.check_fence(conn, fence)
            await conn.execute(self.tables.delete_name, _key_params(key))
            cursor = await conn.execute(self.tables.delete_versions, _key_params(key))
            return [row[0] for row in await cursor.fetchall() if row[0] is not None]

        return await self.run(f"deleting {key.name!r}", body)

    async def remove_session(self, session: SessionKey) -> list[str]:
        params = (session.app_name, session.user_id, session.session_id)

        async def body(conn: psycopg.AsyncConnection[Any]) -> list[str]:
            await conn.execute(self.tables.delete_session_names, params)
            await conn.execute(self.tables.delete_fence, params)
            cursor = await conn.execute(self.tables.delete_session_versions, params)
            return [row[0] for row in await cursor.fetchall() if row[0] is not None]

        return await self.run(f"deleting the artifacts of session {session.session_id!r}", body)

    async def take_fence(self, session: SessionKey, token: int) -> None:
        params = (session.app_name, session.user_id, session.session_id)

        async def body(conn: psycopg.AsyncConnection[Any]) -> int | None:
            cursor = await conn.execute(self.tables.take_fence, (*params, token))
            if await cursor.fetchone() is not None:
                return None
            cursor = await conn.execute(self.tables.fence_holder, params)
            row = await cursor.fetchone()
            return int(row[0]) if row is not None else None

        holder = await self.run("taking the artifact fence", body)
        if holder is not None:
            raise fenced(session, token, holder)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_pool and self._pool is not None:
            await self._pool.close()


class PostgresArtifactIndex:
    """The index of a :class:`~session_backends.artifact_blobs.BlobArtifactService` in
    PostgreSQL (the bytes stay in the blob store).

    Args:
        dsn: a libpq URL (``postgresql://user@host:5432/db``), or ``pool``: an existing
            ``psycopg_pool.AsyncConnectionPool`` with ``autocommit=True`` connections (not
            closed by :meth:`close`).
        schema, table_prefix: where the tables go (see the module docstring).
        max_pool_size, connect_timeout: for the pool built from ``dsn``.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool: psycopg_pool.AsyncConnectionPool[Any] | None = None,
        schema: str | None = None,
        table_prefix: str = "",
        max_pool_size: int = 10,
        connect_timeout: float = 5.0,
    ) -> None:
        self._pg = _Postgres(
            dsn,
            pool,
            schema=schema,
            table_prefix=table_prefix,
            max_pool_size=max_pool_size,
            connect_timeout=connect_timeout,
        )

    def __repr__(self) -> str:
        return f"PostgresArtifactIndex({self._pg.where})"

    async def commit(
        self,
        key: ArtifactKey,
        *,
        content_type: str,
        size: int,
        created_at: datetime,
        location: str,
        fence: RunFence | None,
        idempotency_key: str | None,
    ) -> tuple[ArtifactVersion, bool]:
        return await self._pg.commit(
            key,
            content_type=content_type,
            size=size,
            created_at=created_at,
            location=location,
            data=None,
            fence=fence,
            idempotency_key=idempotency_key,
        )

    async def find(
        self, key: ArtifactKey, version: int | None
    ) -> tuple[ArtifactVersion, str] | None:
        found = await self._pg.find(key, version, with_data=False)
        if found is None:
            return None
        info, location, _ = found
        if location is None:
            raise ArtifactBackendError(
                f"artifact {key.name!r} version {info.version} at {self._pg.where} has its bytes "
                "in the database, not in a blob store: read it with PostgresArtifactService."
            )
        return info, location

    async def names(self, app_name: str, user_id: str, session_id: str | None) -> list[str]:
        return await self._pg.names(app_name, user_id, session_id)

    async def versions(self, key: ArtifactKey) -> list[ArtifactVersion]:
        return await self._pg.versions(key)

    async def remove(self, key: ArtifactKey, fence: RunFence | None) -> list[str]:
        return await self._pg.remove(key, fence)

    async def remove_session(self, session: SessionKey) -> list[str]:
        return await self._pg.remove_session(session)

    async def take_fence(self, session: SessionKey, token: int) -> None:
        await self._pg.take_fence(session, token)

    async def close(self) -> None:
        await self._pg.close()


class PostgresArtifactService(BaseArtifactService):
    """Artifacts with their bytes in PostgreSQL, for deployments that keep everything in one
    database (see the module docstring).

    Args:
        dsn, pool, schema, table_prefix, max_pool_size, connect_timeout: as for
            :class:`PostgresArtifactIndex`.
        max_size: the largest version accepted, in bytes.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool: psycopg_pool.AsyncConnectionPool[Any] | None = None,
        schema: str | None = None,
        table_prefix: str = "",
        max_pool_size: int = 10,
        connect_timeout: float = 5.0,
        max_size: int = DEFAULT_MAX_ARTIFACT_BYTES,
    ) -> None:
        super().__init__(max_size=max_size)
        self._pg = _Postgres(
            dsn,
            pool,
            schema=schema,
            table_prefix=table_prefix,
            max_pool_size=max_pool_size,
            connect_timeout=connect_timeout,
        )

    def __repr__(self) -> str:
        return f"PostgresArtifactService({self._pg.where})"

    async def _save(
        self,
        key: ArtifactKey,
        data: bytes,
        content_type: str,
        fence: RunFence | None,
        idempotency_key: str | None,
    ) -> ArtifactVersion:
        info, _ = await self._pg.commit(
            key,
            content_type=content_type,
            size=len(data),
            created_at=datetime.now(UTC),
            location=None,
            data=data,
            fence=fence,
            idempotency_key=idempotency_key,
        )
        return info

    async def _load(self, key: ArtifactKey, version: int | None) -> Artifact | None:
        found = await self._pg.find(key, version, with_data=True)
        if found is None:
            return None
        info, _, data = found
        if data is None or len(data) != info.size:
            raise ArtifactBackendError(
                f"artifact {key.name!r} version {info.version} at {self._pg.where} has no bytes "
                f"of its recorded size {info.size} in the database (written by a blob store "
                "with this database as its index?); read it through that store."
            )
        return Artifact(info, data)

    async def _names(self, app_name: str, user_id: str, session_id: str | None) -> list[str]:
        return await self._pg.names(app_name, user_id, session_id)

    async def _versions(self, key: ArtifactKey) -> list[ArtifactVersion]:
        return await self._pg.versions(key)

    async def _delete(self, key: ArtifactKey, fence: RunFence | None) -> None:
        await self._pg.remove(key, fence)

    async def _delete_session(self, session: SessionKey) -> None:
        await self._pg.remove_session(session)

    async def _take_fence(self, session: SessionKey, token: int) -> None:
        await self._pg.take_fence(session, token)

    async def close(self) -> None:
        await self._pg.close()
