"""Long-term memory: skills, experiences and facts, kept per scope and searched by relevance.

Three kinds of item (seed 003's, plus ADK's session memories), one model each:

- :class:`Skill` (``name``, ``description``, ``content``): how to do something. Adding a skill
  whose name is already in the scope replaces it (same ID).
- :class:`Experience` (``condition``, ``rule``, ``evidence``, ``source``, ``confidence``): what
  was learnt, usually from feedback. Adding one whose *normalised* rule is already in the scope
  merges the two: the evidence is joined, the confidence kept at the higher.
- :class:`Fact` (``content``, ``source``, ``evidence``): something said, e.g. a message of a
  finished session (:meth:`MemoryService.add_session_to_memory`). Same-content facts merge
  like experiences.

Every item belongs to an app and a **scope**: ``agent:{name}`` (what one agent is told),
``user:{user_id}`` (one user's), or ``app`` (everyone's); build them with :func:`agent_scope`
and :func:`user_scope`. A scope holds at most ``max_items_per_scope`` items; the one past it
evicts the **least confident, oldest** item (:data:`EVICTION_ORDER`).

Search ranks by relevance to a query: BM25 over words (:func:`bm25_scores`, shared by the
in-memory and Redis stores; PostgreSQL ranks with its own full-text ``ts_rank``), or, when the
service has an :class:`~runner_core.embeddings.Embedder`, the cosine similarity of embeddings,
by an exact scan over the scope's stored vectors.

The items and the rules on them (scopes, text, identity, merge, checks) are
:mod:`runner_core.memory_items`; this module re-exports them, and holds the ranking and the
service. :class:`MemoryService` is the one base of every store: it checks input, applies the
merge and identity rules, and ranks; a backend implements the few ``_`` primitives that talk to its
server (:class:`~runner_core.memory_store.InMemoryMemoryService`,
``session_backends.memory_redis``, ``session_backends.memory_postgres``).
"""

from __future__ import annotations

import heapq
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from .errors import ConfigurationError, InvalidRequestError
from .memory_items import (
    APP_SCOPE,
    CONTROL_RE,
    EVICTION_ORDER,
    MAX_EVIDENCE,
    MAX_QUERY_CHARS,
    MAX_TEXT_CHARS,
    AnyItem,
    Experience,
    Fact,
    MemoryItem,
    MemoryKind,
    Skill,
    agent_scope,
    check_id,
    check_item,
    check_kinds,
    check_query,
    check_scope,
    decode_item,
    kind_of_id,
    merge_key,
    merged,
    new_item_id,
    normalize_text,
    search_text,
    tokenize,
    user_scope,
)
from .session import Session, validate_identifier

if TYPE_CHECKING:
    from .embeddings import Embedder

# The item names are runner_core.memory_items'; re-exported so that one import serves users.
__all__ = [
    "APP_SCOPE",
    "DEFAULT_MAX_ITEMS_PER_SCOPE",
    "DEFAULT_SEARCH_LIMIT",
    "EVICTION_ORDER",
    "MAX_EVIDENCE",
    "MAX_QUERY_CHARS",
    "MAX_TEXT_CHARS",
    "AnyItem",
    "Build",
    "Experience",
    "Fact",
    "MemoryHit",
    "MemoryItem",
    "MemoryKind",
    "MemoryService",
    "Skill",
    "agent_scope",
    "bm25_scores",
    "check_item",
    "check_query",
    "check_scope",
    "decode_item",
    "kind_of_id",
    "merge_key",
    "merged",
    "new_item_id",
    "normalize_text",
    "scored_terms",
    "search_text",
    "tokenize",
    "top",
    "top_each_kind",
    "user_scope",
]

#: Items one scope holds unless the store is told otherwise.
DEFAULT_MAX_ITEMS_PER_SCOPE: Final = 10_000
#: Items a search returns unless told otherwise.
DEFAULT_SEARCH_LIMIT: Final = 5


# --- ranking ---------------------------------------------------------------------------------

#: BM25's term-frequency saturation and length normalisation (the usual values).
BM25_K1: Final = 1.2
BM25_B: Final = 0.75
#: In a scope of at least :data:`PRUNE_FROM_ITEMS` items, a query word held by more than this
#: share of them is not scored when the query has rarer words (:func:`scored_terms`).
COMMON_WORD_SHARE: Final = 0.2
PRUNE_FROM_ITEMS: Final = 500


def scored_terms(
    terms: Iterable[str], document_frequency: Mapping[str, int], n_items: int
) -> list[str]:
    """The query words worth scoring: those the scope holds, without the very common ones.

    A word in more than :data:`COMMON_WORD_SHARE` of a large scope's items (at least
    :data:`PRUNE_FROM_ITEMS`) weighs least in BM25 and costs the most to score (the longest
    posting lists), so it is left out when the query has a rarer word; a query of common words
    only is scored by its rarest. Small scopes score every word.
    """
    held = [t for t in dict.fromkeys(terms) if document_frequency.get(t, 0) > 0]
    if n_items < PRUNE_FROM_ITEMS:
        return held
    rare = [t for t in held if document_frequency[t] <= COMMON_WORD_SHARE * n_items]
    if rare or not held:
        return rare
    return [min(held, key=lambda t: document_frequency[t])]


def bm25_scores(
    terms: Iterable[str],
    postings: Mapping[str, Mapping[str, int]],
    lengths: Mapping[str, int],
    n_items: int,
    total_length: int,
) -> dict[str, float]:
    """BM25 score of every item that holds at least one of ``terms``.

    Args:
        terms: the query's words (:func:`tokenize`); repeats count once.
        postings: for each term, item ID -> how often the term occurs in it.
        lengths: item ID -> its number of words, for every item in ``postings``.
        n_items, total_length: how many items the scope holds, and their words in all.

    Uses the non-negative IDF ``ln(1 + (N - df + 0.5) / (df + 0.5))``.
    """
    scores: dict[str, float] = {}
    if n_items <= 0:
        return scores
    average = max(total_length / n_items, 1.0)
    # norm = k1 * (1 - b + b * length / average), as base + per_word * length
    base, per_word = BM25_K1 * (1.0 - BM25_B), BM25_K1 * BM25_B / average
    get_score, get_length = scores.get, lengths.get
    for term in dict.fromkeys(terms):
        hits = postings.get(term)
        if not hits:
            continue
        df = len(hits)
        weight = math.log(1.0 + (n_items - df + 0.5) / (df + 0.5)) * (BM25_K1 + 1.0)
        for item_id, tf in hits.items():
            norm = base + per_word * get_length(item_id, 0)
            scores[item_id] = get_score(item_id, 0.0) + weight * tf / (tf + norm)
    return scores


def top(scores: Mapping[str, float], limit: int) -> list[tuple[str, float]]:
    """The ``limit`` best ``(id, score)``, best first; ties go to the newer item (the greater
    ID)."""
    return heapq.nlargest(limit, scores.items(), key=lambda pair: (pair[1], pair[0]))


@dataclass(frozen=True, slots=True)
class MemoryHit:
    """One search result: the item and how relevant it is (higher is better; the scale is
    the backend's: BM25, ``ts_rank`` or cosine similarity)."""

    item: MemoryItem
    score: float


# --- the service -----------------------------------------------------------------------------

#: Builds the item to store from the one stored under the same merge key (or None).
Build = Callable[[AnyItem | None], AnyItem]


class MemoryService(ABC):
    """Long-term memory of one or many apps (ADK's ``MemoryService``, adk-rust's ``Memory``).

    Public calls: :meth:`add`, :meth:`search`, :meth:`get`, :meth:`items`, :meth:`delete`,
    :meth:`add_session_to_memory`, :meth:`close`. Backends implement the ``_`` primitives.

    Args:
        max_items_per_scope: the most items one scope of one app holds; adding one past it
            evicts the least confident, oldest (:data:`EVICTION_ORDER`).
        embedder: rank by embedding similarity (exact scan) instead of keywords; items are
            embedded when added.
        min_similarity: with an embedder, hits below this cosine similarity are left out.

    Raises:
        ConfigurationError: a bad option.
    """

    #: Names the store in errors ("Redis memory store at 127.0.0.1:6379").
    where: str = "memory store"

    def __init__(
        self,
        *,
        max_items_per_scope: int = DEFAULT_MAX_ITEMS_PER_SCOPE,
        embedder: Embedder | None = None,
        min_similarity: float = 0.0,
    ) -> None:
        if (
            isinstance(max_items_per_scope, bool)
            or not isinstance(max_items_per_scope, int)
            or max_items_per_scope < 1
        ):
            raise ConfigurationError(
                f"max_items_per_scope must be a whole number >= 1, got {max_items_per_scope!r}."
            )
        if not isinstance(min_similarity, int | float) or not -1.0 <= min_similarity <= 1.0:
            raise ConfigurationError(
                f"min_similarity must be a number from -1 to 1, got {min_similarity!r}."
            )
        self.max_items_per_scope = max_items_per_scope
        self.embedder = embedder
        self.min_similarity = float(min_similarity)

    # --- public calls --------------------------------------------------------------------

    async def add(self, item: AnyItem) -> AnyItem:
        """Store ``item`` in its app and scope; returns what is stored (with its ``id``).

        A skill with a name the scope holds replaces it; an experience (fact) with the same
        normalised rule (content) is merged into it (:func:`merged`). A full scope evicts its
        least confident, oldest item.

        Raises:
            InvalidRequestError: a bad item (naming the field); nothing is stored.
        """
        checked = check_item(item)
        vector = None
        if self.embedder is not None:
            vector = (await self.embedder.embed([search_text(checked)]))[0]
        return await self._upsert(
            checked.app_name,
            checked.scope,
            merge_key(checked),
            lambda existing: merged(existing, checked),
            vector,
        )

    async def search(
        self,
        app_name: str,
        query: str,
        *,
        scopes: str | Sequence[str],
        kinds: Sequence[MemoryKind] | None = None,
        limit: int = DEFAULT_SEARCH_LIMIT,
    ) -> list[MemoryHit]:
        """The items of ``scopes`` most relevant to ``query``, best first.

        Only items that share a word with the query are found (keyword ranking); with an
        embedder, the ``limit`` most similar items at or above ``min_similarity``.

        Raises:
            InvalidRequestError: a bad app name, scope, kind, limit, or query (empty, longer
                than :data:`MAX_QUERY_CHARS`, or with control characters).
        """
        _check_limit(limit, "limit")
        limits = dict.fromkeys(check_kinds(kinds), limit)
        found = await self.search_each_kind(app_name, query, scopes=scopes, limits=limits)
        return _best([hit for hits in found.values() for hit in hits], limit)

    async def search_each_kind(
        self,
        app_name: str,
        query: str,
        *,
        scopes: str | Sequence[str],
        limits: Mapping[MemoryKind, int],
    ) -> dict[MemoryKind, list[MemoryHit]]:
        """The best items of each kind of ``limits`` (at most its limit each), best first, in
        one pass over the store: ``limits={"skill": 3, "experience": 5}`` is what memory
        injection asks for. Found as :meth:`search` finds them.

        Raises:
            InvalidRequestError: as :meth:`search`.
        """
        validate_identifier(app_name, "app_name")
        check_query(query)
        scope_list = [scopes] if isinstance(scopes, str) else list(scopes)
        if not scope_list:
            raise InvalidRequestError("scopes is empty; name at least one scope to search.")
        checked_scopes = list(dict.fromkeys(check_scope(s) for s in scope_list))
        check_kinds(list(limits))
        for kind, value in limits.items():
            _check_limit(value, f"the limit of {kind}")
        hits: list[MemoryHit] = []
        if self.embedder is not None:
            hits = await self._similar(app_name, query, checked_scopes, limits)
        elif terms := tokenize(query):
            for scope in checked_scopes:
                hits += await self._keyword_search(app_name, scope, terms, limits)
        return {
            kind: _best([hit for hit in hits if hit.item.kind == kind], limit)
            for kind, limit in limits.items()
        }

    async def get(self, app_name: str, scope: str, item_id: str) -> AnyItem | None:
        """The item ``item_id`` of the scope, or None."""
        validate_identifier(app_name, "app_name")
        found = await self._get_many(app_name, check_scope(scope), [check_id(item_id)])
        return found[0] if found else None

    async def items(
        self, app_name: str, scope: str, *, kinds: Sequence[MemoryKind] | None = None
    ) -> list[AnyItem]:
        """Every item of the scope (of ``kinds``), oldest first."""
        validate_identifier(app_name, "app_name")
        wanted = check_kinds(kinds)
        found = await self._all(app_name, check_scope(scope))
        return sorted((i for i in found if i.kind in wanted), key=lambda i: i.id)

    async def delete(self, app_name: str, scope: str, item_id: str) -> bool:
        """Delete one item; True if it was there."""
        validate_identifier(app_name, "app_name")
        return await self._delete(app_name, check_scope(scope), check_id(item_id))

    async def add_session_to_memory(self, session: Session) -> list[AnyItem]:
        """Keep what was said in a finished session as facts of its user
        (``user:{user_id}``): one per user or assistant message with text, its evidence the
        event's ID, its source ``session:{session_id}``. Adding a session again merges.

        Returns:
            The facts stored.
        """
        if not isinstance(session, Session):
            raise InvalidRequestError(
                f"add_session_to_memory needs a Session, got {type(session).__name__}."
            )
        stored: list[AnyItem] = []
        for event in session.events:
            message = getattr(event, "message", None)
            if event.type != "message" or message is None or message.role not in (
                "user",
                "assistant",
            ):
                continue
            text = CONTROL_RE.sub(" ", message.text).strip()[:MAX_TEXT_CHARS]
            if not text or not tokenize(text):
                continue
            fact = Fact(
                app_name=session.app_name,
                scope=user_scope(session.user_id),
                content=text,
                source=f"session:{session.id}",
                evidence=[event.id],
            )
            stored.append(await self.add(fact))
        return stored

    async def close(self) -> None:
        """Close what the store opened. Idempotent."""
        return None

    async def _similar(
        self,
        app_name: str,
        query: str,
        scopes: list[str],
        limits: Mapping[MemoryKind, int],
    ) -> list[MemoryHit]:
        """The best items of each kind by embedding similarity: an exact scan per scope."""
        from .embeddings import rank_by_similarity

        assert self.embedder is not None
        [query_vector] = await self.embedder.embed([query])
        hits: list[MemoryHit] = []
        for scope in scopes:
            stored = await self._vectors(app_name, scope)
            ranked = [
                (item_id, score)
                for kind, limit in limits.items()
                for item_id, score in rank_by_similarity(
                    query_vector, [(i, v) for i, v in stored if kind_of_id(i) == kind], limit
                )
                if score >= self.min_similarity
            ]
            items = {i.id: i for i in await self._get_many(app_name, scope, [i for i, _ in ranked])}
            hits += [MemoryHit(items[i], s) for i, s in ranked if i in items]
        return hits

    # --- what a backend implements -------------------------------------------------------

    @abstractmethod
    async def _upsert(
        self,
        app_name: str,
        scope: str,
        key: str,
        build: Build,
        vector: list[float] | None,
    ) -> AnyItem:
        """Atomically: read the item stored under merge ``key`` (or None), store
        ``build(it)`` (with ``vector``, if any, replacing the stored one), and evict past
        :attr:`max_items_per_scope` in :data:`EVICTION_ORDER`. Concurrent calls on one scope
        must not lose a merge (serialize them, or retry on conflict)."""

    @abstractmethod
    async def _keyword_search(
        self,
        app_name: str,
        scope: str,
        terms: list[str],
        limits: Mapping[MemoryKind, int],
    ) -> list[MemoryHit]:
        """For each kind of ``limits``, its best items (at most its limit) holding one of
        ``terms``, in any order."""

    @abstractmethod
    async def _vectors(self, app_name: str, scope: str) -> list[tuple[str, list[float]]]:
        """Every stored ``(item ID, vector)`` of the scope."""

    @abstractmethod
    async def _get_many(self, app_name: str, scope: str, ids: list[str]) -> list[AnyItem]:
        """The items of ``ids`` that exist, in any order."""

    @abstractmethod
    async def _all(self, app_name: str, scope: str) -> list[AnyItem]:
        """Every item of the scope."""

    @abstractmethod
    async def _delete(self, app_name: str, scope: str, item_id: str) -> bool:
        """Delete one item with its index entries and vector; True if it was there."""


def _check_limit(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
        raise InvalidRequestError(f"{what} must be a whole number from 1 to 100, got {value!r}.")


def top_each_kind(
    scores: Mapping[str, float], limits: Mapping[MemoryKind, int]
) -> list[tuple[str, float]]:
    """:func:`top` for each kind of ``limits`` (the kind is the ID's last letter)."""
    by_kind: dict[str, dict[str, float]] = {kind: {} for kind in limits}
    for item_id, score in scores.items():
        kind = kind_of_id(item_id)
        if kind in by_kind:
            by_kind[kind][item_id] = score
    return [pair for kind, limit in limits.items() for pair in top(by_kind[kind], limit)]


def _best(hits: list[MemoryHit], limit: int) -> list[MemoryHit]:
    """The ``limit`` best hits of several scopes, as :func:`top` orders them."""
    return heapq.nlargest(limit, hits, key=lambda hit: (hit.score, hit.item.id))
