"""``PostgresMemoryService``: long-term memory in PostgreSQL, ranked by full-text search.

One table, ``memory_items`` (with ``table_prefix``, in ``schema`` when set): one row per item,
keyed by (app, scope, ID), unique per (app, scope, merge key); the item as JSONB, its
``confidence``, its search text and a generated ``tsvector`` column under a GIN index, and the
embedding (``real[]``) when the service has an embedder.

Search is PostgreSQL's own ranking: the rows whose ``tsvector`` matches any of the query's
words (``to_tsquery`` of the words joined by ``|``), ordered by ``ts_rank``. The text search
configuration is ``simple`` by default (words as they are, like the other stores); ``english``
adds stemming. With an embedder, the vectors are read and ranked by an exact scan
(:func:`runner_core.embeddings.rank_by_similarity`); pgvector would index them, but the test
servers here do not have it, so it is not used.

A write is one transaction holding a transaction-scoped advisory lock on its (app, scope):
read the row of the merge key, store the merged item, delete past the cap in
:data:`~runner_core.memory.EVICTION_ORDER` (``ORDER BY confidence, id``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import sql

from runner_core.errors import ConfigurationError, MemoryBackendError
from runner_core.memory import (
    AnyItem,
    Build,
    MemoryHit,
    MemoryKind,
    MemoryService,
    decode_item,
    search_text,
)
from runner_core.store_support import check_sql_name

__all__ = ["PostgresMemoryService"]

T = TypeVar("T")
Conn = psycopg.AsyncConnection[Any]
_HINT = "is PostgreSQL running and reachable there? Check AGENT_RUNNER_MEMORY_URL"
_CONFIG_RE = re.compile(r"[a-z_]{1,40}")
_SCOPE = "app_name = %s AND scope = %s"


class PostgresMemoryService(MemoryService):
    """Memory in PostgreSQL. See the module docstring for the table.

    Args:
        dsn: a libpq URL or ``key=value`` string.
        pool: an existing ``psycopg_pool.AsyncConnectionPool`` (autocommit connections; not
            closed by :meth:`close`) instead of ``dsn``.
        schema, table_prefix: where the table lives (as for the session store).
        text_search_config: the full-text configuration (``simple``, ``english``, ...).
        max_pool_size: connections held at most.
        options: :class:`~runner_core.memory.MemoryService`'s (``max_items_per_scope``,
            ``embedder``, ``min_similarity``).

    Raises:
        ConfigurationError: a bad option.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool: psycopg_pool.AsyncConnectionPool[Any] | None = None,
        schema: str | None = None,
        table_prefix: str = "",
        text_search_config: str = "simple",
        max_pool_size: int = 10,
        connect_timeout: float = 5.0,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if (dsn is None) == (pool is None):
            raise ConfigurationError("PostgresMemoryService needs a dsn or a pool (one of them).")
        if schema is not None:
            check_sql_name(schema, "schema", longest=40)
        if table_prefix:
            check_sql_name(table_prefix, "table_prefix", longest=30)
        if not isinstance(text_search_config, str) or not _CONFIG_RE.fullmatch(
            text_search_config
        ):
            raise ConfigurationError(
                f"text_search_config {text_search_config!r} is not a text search configuration "
                "name (e.g. simple, english)."
            )
        self._dsn = dsn
        self._pool = pool
        self._owns_pool = pool is None
        self._max_pool_size = max_pool_size
        self._connect_timeout = connect_timeout
        self._ready_lock = asyncio.Lock()
        self._initialized = False
        self.where = "PostgreSQL memory store"
        name = table_prefix + "memory_items"
        self._table = sql.Identifier(schema, name) if schema else sql.Identifier(name)
        self._schema = schema
        self._prefix = table_prefix
        self._config = text_search_config

    def __repr__(self) -> str:
        return f"PostgresMemoryService(table={self._table.as_string()!r})"

    # --- plumbing ----------------------------------------------------------------------------

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(t=self._table, cfg=sql.Literal(self._config))

    def _ddl(self) -> list[sql.Composed]:
        index = sql.Identifier(f"{self._prefix}memory_items_search")
        order = sql.Identifier(f"{self._prefix}memory_items_order")
        statements = []
        if self._schema:
            statements.append(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self._schema))
            )
        statements += [
            self._q(
                "CREATE TABLE IF NOT EXISTS {t} ("
                "app_name VARCHAR(128) NOT NULL, scope VARCHAR(160) NOT NULL, "
                "id VARCHAR(40) NOT NULL, merge_key VARCHAR(64) NOT NULL, "
                "kind VARCHAR(16) NOT NULL, confidence DOUBLE PRECISION NOT NULL, "
                "item JSONB NOT NULL, search_text TEXT NOT NULL, "
                "search_vector TSVECTOR GENERATED ALWAYS AS "
                "(to_tsvector({cfg}::regconfig, search_text)) STORED, "
                "embedding REAL[], "
                "PRIMARY KEY (app_name, scope, id), UNIQUE (app_name, scope, merge_key))"
            ),
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING GIN (search_vector)").format(
                index, self._table
            ),
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (app_name, scope, confidence, id)").format(
                order, self._table
            ),
        ]
        return statements

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
                    name="agent-runner-memory",
                )
                await self._pool.open(wait=False)
            if not self._initialized:
                async with self._pool.connection() as conn, conn.transaction():
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock(hashtext('agent-runner-memory-ddl'))"
                    )
                    for statement in self._ddl():
                        await conn.execute(statement)
                self._initialized = True
            return self._pool

    async def _run(self, action: str, work: Callable[[Conn], Awaitable[T]]) -> T:
        try:
            pool = await self._ready()
            async with pool.connection() as conn:
                return await work(conn)
        except (psycopg.Error, psycopg_pool.PoolTimeout, OSError) as exc:
            raise MemoryBackendError(
                f"{self.where} failed while {action}: {type(exc).__name__}: "
                f"{' '.join(str(exc).split())}. {_HINT}."
            ) from exc

    def _decode(self, value: Any, item_id: str) -> AnyItem:
        try:
            return decode_item(value, f"memory item {item_id}")
        except ValueError as exc:
            raise MemoryBackendError(f"{self.where} holds a corrupt item: {exc}") from exc

    # --- writes --------------------------------------------------------------------------

    async def _upsert(
        self,
        app_name: str,
        scope: str,
        key: str,
        build: Build,
        vector: list[float] | None,
    ) -> AnyItem:
        async def work(conn: Conn) -> AnyItem:
            async with conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"memory:{app_name}/{scope}",)
                )
                cur = await conn.execute(
                    self._q("SELECT id, item FROM {t} WHERE " + _SCOPE + " AND merge_key = %s"),
                    (app_name, scope, key),
                )
                row = await cur.fetchone()
                existing = self._decode(row[1], row[0]) if row is not None else None
                item = build(existing)
                await conn.execute(
                    self._q(
                        "INSERT INTO {t} (app_name, scope, id, merge_key, kind, confidence, "
                        "item, search_text, embedding) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                        "ON CONFLICT (app_name, scope, id) DO UPDATE SET "
                        "confidence = EXCLUDED.confidence, item = EXCLUDED.item, "
                        "search_text = EXCLUDED.search_text, "
                        "embedding = COALESCE(EXCLUDED.embedding, {t}.embedding)"
                    ),
                    (
                        app_name,
                        scope,
                        item.id,
                        key,
                        item.kind,
                        item.confidence,
                        item.model_dump_json(),
                        search_text(item),
                        vector,
                    ),
                )
                await conn.execute(
                    self._q(
                        "DELETE FROM {t} WHERE " + _SCOPE + " AND id IN (SELECT id FROM {t} "
                        "WHERE " + _SCOPE + " AND id <> %s ORDER BY confidence, id LIMIT "
                        "GREATEST((SELECT count(*) FROM {t} WHERE " + _SCOPE + ") - %s, 0))"
                    ),
                    (
                        app_name,
                        scope,
                        app_name,
                        scope,
                        item.id,
                        app_name,
                        scope,
                        self.max_items_per_scope,
                    ),
                )
                return item

        return await self._run("storing a memory item", work)

    async def _delete(self, app_name: str, scope: str, item_id: str) -> bool:
        async def work(conn: Conn) -> bool:
            cur = await conn.execute(
                self._q("DELETE FROM {t} WHERE " + _SCOPE + " AND id = %s"),
                (app_name, scope, item_id),
            )
            return cur.rowcount > 0

        return await self._run("deleting a memory item", work)

    # --- reads ---------------------------------------------------------------------------

    async def _keyword_search(
        self,
        app_name: str,
        scope: str,
        terms: list[str],
        limits: Mapping[MemoryKind, int],
    ) -> list[MemoryHit]:
        # Words are runs of letters and digits (tokenize), so quoting each is enough.
        query = " | ".join(f"'{word}'" for word in dict.fromkeys(terms))

        async def work(conn: Conn) -> list[MemoryHit]:
            cur = await conn.execute(
                # The best rows of each kind, at most its limit (l.n).
                self._q(
                    "SELECT id, item, rank FROM (SELECT id, item, kind, rank, row_number() OVER "
                    "(PARTITION BY kind ORDER BY rank DESC, id DESC) AS place FROM (SELECT id, "
                    "item, kind, ts_rank(search_vector, q) AS rank "
                    "FROM {t}, to_tsquery({cfg}::regconfig, %s) AS q WHERE "
                    + _SCOPE
                    + " AND kind = ANY(%s) AND search_vector @@ q) AS matched) AS ranked "
                    "JOIN unnest(%s::text[], %s::int[]) AS l(kind, n) USING (kind) "
                    "WHERE place <= l.n"
                ),
                (query, app_name, scope, list(limits), list(limits), list(limits.values())),
            )
            rows = await cur.fetchall()
            return [MemoryHit(self._decode(item, i), float(rank)) for i, item, rank in rows]

        return await self._run("searching memory", work)

    async def _vectors(self, app_name: str, scope: str) -> list[tuple[str, list[float]]]:
        async def work(conn: Conn) -> list[tuple[str, list[float]]]:
            cur = await conn.execute(
                self._q(
                    "SELECT id, embedding FROM {t} WHERE " + _SCOPE + " AND embedding IS NOT NULL"
                ),
                (app_name, scope),
            )
            return [(i, list(v)) for i, v in await cur.fetchall()]

        return await self._run("reading memory vectors", work)

    async def _get_many(self, app_name: str, scope: str, ids: list[str]) -> list[AnyItem]:
        if not ids:
            return []

        async def work(conn: Conn) -> list[AnyItem]:
            cur = await conn.execute(
                self._q("SELECT id, item FROM {t} WHERE " + _SCOPE + " AND id = ANY(%s)"),
                (app_name, scope, ids),
            )
            return [self._decode(item, i) for i, item in await cur.fetchall()]

        return await self._run("reading memory items", work)

    async def _all(self, app_name: str, scope: str) -> list[AnyItem]:
        async def work(conn: Conn) -> list[AnyItem]:
            cur = await conn.execute(
                self._q("SELECT id, item FROM {t} WHERE " + _SCOPE), (app_name, scope)
            )
            return [self._decode(item, i) for i, item in await cur.fetchall()]

        return await self._run("reading memory items", work)

    async def close(self) -> None:
        if self._owns_pool and self._pool is not None:
            await self._pool.close()
            self._pool = None
            self._owns_pool = False
