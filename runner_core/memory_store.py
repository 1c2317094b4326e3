"""``InMemoryMemoryService``: long-term memory in this process (tests, scripts, one worker).

It keeps, per (app, scope), the items, the merge-key index and an inverted index of words, and
ranks with :func:`~runner_core.memory.bm25_scores`, as the Redis store does. It lives in
``runner_core`` so a :class:`~runner_core.runner.Runner` can use it without ``session_backends``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from .embeddings import Embedder
from .memory import (
    DEFAULT_MAX_ITEMS_PER_SCOPE,
    AnyItem,
    Build,
    MemoryHit,
    MemoryKind,
    MemoryService,
    bm25_scores,
    scored_terms,
    search_text,
    tokenize,
    top_each_kind,
)

__all__ = ["InMemoryMemoryService"]


@dataclass(slots=True)
class _Scope:
    items: dict[str, AnyItem] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    postings: dict[str, dict[str, int]] = field(default_factory=dict)
    lengths: dict[str, int] = field(default_factory=dict)
    total_length: int = 0
    vectors: dict[str, list[float]] = field(default_factory=dict)

    def index(self, item: AnyItem) -> None:
        words = Counter(tokenize(search_text(item)))
        for word, count in words.items():
            self.postings.setdefault(word, {})[item.id] = count
        self.lengths[item.id] = sum(words.values())
        self.total_length += self.lengths[item.id]

    def unindex(self, item: AnyItem) -> None:
        for word in set(tokenize(search_text(item))):
            hits = self.postings.get(word)
            if hits is not None:
                hits.pop(item.id, None)
                if not hits:
                    del self.postings[word]
        self.total_length -= self.lengths.pop(item.id, 0)

    def remove(self, item_id: str, key: str | None = None) -> bool:
        item = self.items.pop(item_id, None)
        if item is None:
            return False
        self.unindex(item)
        self.vectors.pop(item_id, None)
        for k, v in list(self.keys.items()) if key is None else [(key, item_id)]:
            if v == item_id:
                del self.keys[k]
        return True


class InMemoryMemoryService(MemoryService):
    """Memory in a dict. Options: see :class:`~runner_core.memory.MemoryService`."""

    where = "in-memory memory store"

    def __init__(
        self,
        *,
        max_items_per_scope: int = DEFAULT_MAX_ITEMS_PER_SCOPE,
        embedder: Embedder | None = None,
        min_similarity: float = 0.0,
    ) -> None:
        super().__init__(
            max_items_per_scope=max_items_per_scope,
            embedder=embedder,
            min_similarity=min_similarity,
        )
        self._scopes: dict[tuple[str, str], _Scope] = {}
        self._lock = asyncio.Lock()

    def _scope(self, app_name: str, scope: str) -> _Scope:
        return self._scopes.setdefault((app_name, scope), _Scope())

    async def _upsert(
        self,
        app_name: str,
        scope: str,
        key: str,
        build: Build,
        vector: list[float] | None,
    ) -> AnyItem:
        async with self._lock:
            data = self._scope(app_name, scope)
            existing_id = data.keys.get(key)
            existing = data.items.get(existing_id) if existing_id else None
            item = build(existing)
            if existing is not None:
                data.unindex(existing)
            data.items[item.id] = item
            data.keys[key] = item.id
            data.index(item)
            if vector is not None:
                data.vectors[item.id] = list(vector)
            excess = len(data.items) - self.max_items_per_scope
            if excess > 0:
                # The item just added is never its own victim.
                others = (i for i in data.items.values() if i.id != item.id)
                victims = sorted(others, key=lambda i: (i.confidence, i.id))[:excess]
                for victim in victims:
                    data.remove(victim.id)
            return item

    async def _keyword_search(
        self,
        app_name: str,
        scope: str,
        terms: list[str],
        limits: Mapping[MemoryKind, int],
    ) -> list[MemoryHit]:
        data = self._scopes.get((app_name, scope))
        if data is None:
            return []
        frequency = {t: len(data.postings[t]) for t in terms if t in data.postings}
        scored = scored_terms(terms, frequency, len(data.items))
        scores = bm25_scores(
            scored, data.postings, data.lengths, len(data.items), data.total_length
        )
        return [MemoryHit(data.items[i], s) for i, s in top_each_kind(scores, limits)]

    async def _vectors(self, app_name: str, scope: str) -> list[tuple[str, list[float]]]:
        data = self._scopes.get((app_name, scope))
        return list(data.vectors.items()) if data is not None else []

    async def _get_many(self, app_name: str, scope: str, ids: list[str]) -> list[AnyItem]:
        data = self._scopes.get((app_name, scope))
        if data is None:
            return []
        return [data.items[i] for i in ids if i in data.items]

    async def _all(self, app_name: str, scope: str) -> list[AnyItem]:
        data = self._scopes.get((app_name, scope))
        return list(data.items.values()) if data is not None else []

    async def _delete(self, app_name: str, scope: str, item_id: str) -> bool:
        async with self._lock:
            data = self._scopes.get((app_name, scope))
            return data is not None and data.remove(item_id)
