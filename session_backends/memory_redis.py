"""``RedisMemoryService``: long-term memory in Redis, ranked by BM25.

Key layout, per app ``A`` and scope ``S`` (``P`` is ``key_prefix``, default ``agent-runner``;
``{A/S}`` is one hash tag, so one scope's keys share a cluster slot)::

    P:memory:{A/S}:items     hash    item ID -> item JSON
    P:memory:{A/S}:keys      hash    merge key -> item ID (runner_core.memory.merge_key)
    P:memory:{A/S}:order     zset    item ID scored by confidence: ZRANGE 0 is evicted first
                                     (ties go by ID, which sorts by creation: the oldest)
    P:memory:{A/S}:total     string  the words of all items (BM25's average length)
    P:memory:{A/S}:word:W    hash    item ID -> "{count of W} {item's words}" (the postings)
    P:memory:{A/S}:vectors   hash    item ID -> float32 vector (with an embedder)

A search reads how many items hold each query word and the scope's totals, then the postings
of the words worth scoring (:func:`runner_core.memory.scored_terms`), scores them with
:func:`runner_core.memory.bm25_scores` (the in-memory store's ranking), then reads the best
items: three round trips. A write is one ``MULTI``/``EXEC`` under ``WATCH`` of the
scope's items, keys and order, retried when another write to the scope came between (so a
merge is never lost and the cap holds).
"""

from __future__ import annotations

import array
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from runner_core.errors import ConfigurationError, MemoryBackendError
from runner_core.memory import (
    AnyItem,
    Build,
    MemoryHit,
    MemoryKind,
    MemoryService,
    bm25_scores,
    decode_item,
    kind_of_id,
    merge_key,
    scored_terms,
    search_text,
    tokenize,
    top_each_kind,
)

from .redis import _KEY_PREFIX_RE, DEFAULT_KEY_PREFIX, _where_of

__all__ = ["RedisMemoryService"]

T = TypeVar("T")
logger = logging.getLogger(__name__)
_HINT = "is redis-server running and reachable there? Check AGENT_RUNNER_MEMORY_URL"


def _pack(vector: list[float]) -> bytes:
    return array.array("f", vector).tobytes()


def _unpack(raw: bytes) -> list[float]:
    values = array.array("f")
    values.frombytes(raw)
    return values.tolist()


class RedisMemoryService(MemoryService):
    """Memory in Redis. See the module docstring for the keys.

    Args:
        url: ``redis://host:port/db`` (``rediss://``, ``unix://`` too).
        key_prefix: the first part of every key.
        client: an existing ``redis.asyncio.Redis`` (not closed by :meth:`close`; it must not
            decode responses).
        socket_timeout: seconds one command may take.
        options: :class:`~runner_core.memory.MemoryService`'s (``max_items_per_scope``,
            ``embedder``, ``min_similarity``).

    Raises:
        ConfigurationError: a bad URL or option.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        client: aioredis.Redis | None = None,
        socket_timeout: float = 5.0,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if not isinstance(key_prefix, str) or not _KEY_PREFIX_RE.fullmatch(key_prefix):
            raise ConfigurationError(
                f"key_prefix {key_prefix!r} is not allowed: use 1-64 letters, digits or '._:-'."
            )
        self.key_prefix = key_prefix
        self._owns_client = client is None
        if client is None:
            try:
                client = aioredis.Redis.from_url(
                    url, socket_timeout=socket_timeout, decode_responses=False
                )
            except ValueError as exc:
                raise ConfigurationError(f"bad Redis URL for the memory store: {exc}") from exc
        # Typed loosely: redis-py's replies are bytes here (no decode_responses).
        self._client: Any = client
        self.where = f"Redis memory store at {_where_of(url)}"

    def __repr__(self) -> str:
        return f"RedisMemoryService({self.where}, key_prefix={self.key_prefix!r})"

    def _key(self, app_name: str, scope: str, part: str) -> str:
        return f"{self.key_prefix}:memory:{{{app_name}/{scope}}}:{part}"

    async def _call(self, action: str, work: Callable[[], Awaitable[T]]) -> T:
        try:
            return await work()
        except (RedisError, OSError) as exc:
            raise MemoryBackendError(
                f"{self.where} failed while {action}: {type(exc).__name__}: {exc}. {_HINT}."
            ) from exc

    def _decode(self, raw: bytes, item_id: str) -> AnyItem:
        try:
            return decode_item(raw, f"memory item {item_id}")
        except ValueError as exc:
            raise MemoryBackendError(f"{self.where} holds a corrupt item: {exc}") from exc

    # --- writes --------------------------------------------------------------------------

    def _unindex(self, pipe: Any, app_name: str, scope: str, item: AnyItem) -> None:
        words = Counter(tokenize(search_text(item)))
        for word in words:
            pipe.hdel(self._key(app_name, scope, f"word:{word}"), item.id)
        pipe.decrby(self._key(app_name, scope, "total"), sum(words.values()))

    def _index(self, pipe: Any, app_name: str, scope: str, item: AnyItem) -> None:
        words = Counter(tokenize(search_text(item)))
        length = sum(words.values())
        for word, count in words.items():
            pipe.hset(self._key(app_name, scope, f"word:{word}"), item.id, f"{count} {length}")
        pipe.incrby(self._key(app_name, scope, "total"), length)

    def _remove(self, pipe: Any, app_name: str, scope: str, item: AnyItem) -> None:
        pipe.hdel(self._key(app_name, scope, "items"), item.id)
        pipe.zrem(self._key(app_name, scope, "order"), item.id)
        pipe.hdel(self._key(app_name, scope, "vectors"), item.id)
        self._unindex(pipe, app_name, scope, item)

    async def _upsert(
        self,
        app_name: str,
        scope: str,
        key: str,
        build: Build,
        vector: list[float] | None,
    ) -> AnyItem:
        items_key = self._key(app_name, scope, "items")
        keys_key = self._key(app_name, scope, "keys")
        order_key = self._key(app_name, scope, "order")

        async def write() -> AnyItem:
            pipe: Any
            async with self._client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(items_key, keys_key, order_key)
                        existing_id = await pipe.hget(keys_key, key)
                        existing = None
                        if existing_id is not None:
                            raw = await pipe.hget(items_key, existing_id)
                            if raw is not None:
                                existing = self._decode(raw, existing_id.decode())
                        item = build(existing)
                        victims: list[AnyItem] = []
                        count = int(await pipe.zcard(order_key)) + (existing is None)
                        if count > self.max_items_per_scope:
                            ids = await pipe.zrange(
                                order_key, 0, count - self.max_items_per_scope - 1
                            )
                            for raw_victim in await pipe.hmget(items_key, ids) if ids else []:
                                if raw_victim is not None:
                                    victims.append(self._decode(raw_victim, "(evicted)"))
                        pipe.multi()
                        if existing is not None:
                            self._unindex(pipe, app_name, scope, existing)
                        pipe.hset(items_key, item.id, item.model_dump_json())
                        pipe.hset(keys_key, key, item.id)
                        pipe.zadd(order_key, {item.id: item.confidence})
                        self._index(pipe, app_name, scope, item)
                        if vector is not None:
                            pipe.hset(self._key(app_name, scope, "vectors"), item.id, _pack(vector))
                        for victim in victims:
                            self._remove(pipe, app_name, scope, victim)
                            pipe.hdel(keys_key, merge_key(victim))
                        await pipe.execute()
                        return item
                    except WatchError:
                        continue  # another write to the scope came between: read again

        return await self._call("storing a memory item", write)

    async def _delete(self, app_name: str, scope: str, item_id: str) -> bool:
        items_key = self._key(app_name, scope, "items")
        keys_key = self._key(app_name, scope, "keys")
        order_key = self._key(app_name, scope, "order")

        async def delete() -> bool:
            pipe: Any
            async with self._client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(items_key, keys_key, order_key)
                        raw = await pipe.hget(items_key, item_id)
                        if raw is None:
                            await pipe.reset()
                            return False
                        item = self._decode(raw, item_id)
                        pipe.multi()
                        self._remove(pipe, app_name, scope, item)
                        pipe.hdel(keys_key, merge_key(item))
                        await pipe.execute()
                        return True
                    except WatchError:
                        continue

        return await self._call("deleting a memory item", delete)

    # --- reads ---------------------------------------------------------------------------

    async def _keyword_search(
        self,
        app_name: str,
        scope: str,
        terms: list[str],
        limits: Mapping[MemoryKind, int],
    ) -> list[MemoryHit]:
        distinct = list(dict.fromkeys(terms))

        async def read() -> list[MemoryHit]:
            pipe: Any
            async with self._client.pipeline(transaction=False) as pipe:
                for word in distinct:
                    pipe.hlen(self._key(app_name, scope, f"word:{word}"))
                pipe.zcard(self._key(app_name, scope, "order"))
                pipe.get(self._key(app_name, scope, "total"))
                counts = await pipe.execute()
            n_items, total = int(counts[-2]), int(counts[-1] or 0)
            frequency = dict(zip(distinct, map(int, counts[:-2]), strict=True))
            words = scored_terms(distinct, frequency, n_items)
            if not words:
                return []
            async with self._client.pipeline(transaction=False) as pipe:
                for word in words:
                    pipe.hgetall(self._key(app_name, scope, f"word:{word}"))
                replies = await pipe.execute()
            postings: dict[str, dict[str, int]] = {}
            lengths: dict[str, int] = {}
            for word, hits in zip(words, replies, strict=True):
                kept: dict[str, int] = {}
                for raw_id, raw_value in hits.items():
                    item_id = raw_id.decode()
                    if kind_of_id(item_id) not in limits:
                        continue
                    count, _, length = raw_value.decode().partition(" ")
                    kept[item_id] = int(count)
                    lengths[item_id] = int(length)
                postings[word] = kept
            best = top_each_kind(bm25_scores(words, postings, lengths, n_items, total), limits)
            if not best:
                return []
            raws = await self._client.hmget(
                self._key(app_name, scope, "items"), [i for i, _ in best]
            )
            return [
                MemoryHit(self._decode(raw, item_id), score)
                for (item_id, score), raw in zip(best, raws, strict=True)
                if raw is not None
            ]

        return await self._call("searching memory", read)

    async def _vectors(self, app_name: str, scope: str) -> list[tuple[str, list[float]]]:
        async def read() -> list[tuple[str, list[float]]]:
            raw = await self._client.hgetall(self._key(app_name, scope, "vectors"))
            return [(k.decode(), _unpack(v)) for k, v in raw.items()]

        return await self._call("reading memory vectors", read)

    async def _get_many(self, app_name: str, scope: str, ids: list[str]) -> list[AnyItem]:
        if not ids:
            return []

        async def read() -> list[AnyItem]:
            raws = await self._client.hmget(self._key(app_name, scope, "items"), ids)
            return [self._decode(r, i) for i, r in zip(ids, raws, strict=True) if r is not None]

        return await self._call("reading memory items", read)

    async def _all(self, app_name: str, scope: str) -> list[AnyItem]:
        async def read() -> list[AnyItem]:
            raw = await self._client.hgetall(self._key(app_name, scope, "items"))
            return [self._decode(v, k.decode()) for k, v in raw.items()]

        return await self._call("reading memory items", read)

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()
            self._owns_client = False
