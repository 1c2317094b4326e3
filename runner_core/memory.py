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

:class:`MemoryService` is the one base of every store: it checks input, applies the merge and
identity rules, and ranks; a backend implements the few ``_`` primitives that talk to its
server (:class:`~runner_core.memory_store.InMemoryMemoryService`,
``session_backends.memory_redis``, ``session_backends.memory_postgres``).
"""

from __future__ import annotations

import hashlib
import heapq
import math
import re
import secrets
import time
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from .errors import ConfigurationError, InvalidRequestError, describe_validation_error
from .session import Session, validate_identifier

if TYPE_CHECKING:
    from .embeddings import Embedder

__all__ = [
    "APP_SCOPE",
    "DEFAULT_MAX_ITEMS_PER_SCOPE",
    "DEFAULT_SEARCH_LIMIT",
    "EVICTION_ORDER",
    "MAX_EVIDENCE",
    "MAX_QUERY_CHARS",
    "MAX_TEXT_CHARS",
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
    "merge_key",
    "merged",
    "new_item_id",
    "normalize_text",
    "search_text",
    "tokenize",
    "user_scope",
]

MemoryKind = Literal["skill", "experience", "fact"]
KINDS: Final[tuple[MemoryKind, ...]] = ("skill", "experience", "fact")

#: The scope every user and agent of an app shares.
APP_SCOPE: Final = "app"
#: Items one scope holds unless the store is told otherwise.
DEFAULT_MAX_ITEMS_PER_SCOPE: Final = 10_000
#: Items a search returns unless told otherwise.
DEFAULT_SEARCH_LIMIT: Final = 5
#: The longest query, in characters.
MAX_QUERY_CHARS: Final = 2_000
#: The longest text field of an item (a rule, a skill's content, a fact), in characters.
MAX_TEXT_CHARS: Final = 8_000
#: The most evidence references an item keeps (the newest win).
MAX_EVIDENCE: Final = 64
#: Which item a full scope evicts first: the lowest ``confidence``; among equals the lowest
#: ``id``, which is the oldest (IDs sort by creation time, :func:`new_item_id`).
EVICTION_ORDER: Final = ("confidence", "id")

_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_WORD_RE = re.compile(r"\w+")
_TRAILING_PUNCT = " .!;,:\u3002\uff01\uff1b\uff0c"  # and their full-width forms
# Words too common to tell items apart; dropping them keeps posting lists short.
_STOPWORDS: Final = frozenset(
    "a an and are as at be but by do for from has have how i if in is it its of on or so that "
    "the their then there these this to was were what when where which while who will with "
    "you your".split()
)
_KIND_LETTER: Final[dict[str, str]] = {"skill": "s", "experience": "e", "fact": "f"}
_KIND_OF_LETTER: Final[dict[str, MemoryKind]] = {"s": "skill", "e": "experience", "f": "fact"}


def _now() -> datetime:
    return datetime.now(UTC)


# --- scopes and text -------------------------------------------------------------------------


def agent_scope(agent_name: str) -> str:
    """The scope of what the agent ``agent_name`` is told: ``agent:{agent_name}``."""
    return "agent:" + validate_identifier(agent_name, "agent name")


def user_scope(user_id: str) -> str:
    """The scope of one user's memories: ``user:{user_id}``."""
    return "user:" + validate_identifier(user_id, "user_id")


def check_scope(scope: object) -> str:
    """A scope: ``app``, ``agent:{name}`` or ``user:{user_id}``.

    Raises:
        InvalidRequestError: anything else, saying what a scope looks like.
    """
    if scope == APP_SCOPE:
        return APP_SCOPE
    if isinstance(scope, str):
        kind, sep, name = scope.partition(":")
        if sep and kind in ("agent", "user"):
            validate_identifier(name, f"the name in scope {scope!r}")
            return scope
    raise InvalidRequestError(
        f"scope {scope!r} is not a memory scope; use 'app', 'agent:<agent name>' or "
        "'user:<user_id>' (runner_core.memory.agent_scope / user_scope build them)."
    )


def check_query(query: object, *, field: str = "query") -> str:
    """A search query: text of 1 to :data:`MAX_QUERY_CHARS` characters without control
    characters (tab and newlines are fine).

    Raises:
        InvalidRequestError: naming what is wrong.
    """
    if not isinstance(query, str):
        raise InvalidRequestError(f"{field} must be text, got {type(query).__name__}.")
    if not query.strip():
        raise InvalidRequestError(f"{field} is empty; pass the words to search for.")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidRequestError(
            f"{field} is {len(query)} characters long; the limit is {MAX_QUERY_CHARS}. "
            "Search with the gist of the request."
        )
    bad = _CONTROL_RE.search(query)
    if bad is not None:
        raise InvalidRequestError(
            f"{field} holds the control character {bad.group()!r} at position {bad.start()}; "
            "remove control characters (tabs and newlines are allowed)."
        )
    return query


def normalize_text(text: str) -> str:
    """The form two texts are compared in: NFKC, case-folded, whitespace collapsed, without
    trailing punctuation. ``"Always  check the LOGS."`` and ``"always check the logs"`` are
    the same rule."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(folded.split()).rstrip(_TRAILING_PUNCT).strip()


def tokenize(text: str) -> list[str]:
    """The words BM25 counts: NFKC, case-folded runs of letters and digits, without a few
    very common English words."""
    words = _WORD_RE.findall(unicodedata.normalize("NFKC", text).casefold())
    return [word for word in words if word not in _STOPWORDS]


def new_item_id(kind: MemoryKind) -> str:
    """A new item ID: creation time (ns, hex), randomness, then the kind's letter. IDs of one
    store sort by creation time, which :data:`EVICTION_ORDER` relies on."""
    return f"{time.time_ns():016x}{secrets.token_hex(4)}{_KIND_LETTER[kind]}"


def kind_of_id(item_id: str) -> MemoryKind | None:
    """The kind an item ID was made for (its last letter), or None."""
    return _KIND_OF_LETTER.get(item_id[-1:])


# --- items -----------------------------------------------------------------------------------


def _text_field(*, required: bool = True) -> Any:
    if required:
        return Field(min_length=1, max_length=MAX_TEXT_CHARS)
    return Field(default="", max_length=MAX_TEXT_CHARS)


class MemoryItemBase(BaseModel):
    """What every item has. ``id``, ``created_at`` and ``updated_at`` are the store's to set."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    app_name: str
    scope: str
    id: str = Field(default="", description="Set by the store when the item is added.")
    confidence: float = Field(default=1.0, ge=0.0, le=1.0)
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)

    def to_prompt_text(self) -> str:  # pragma: no cover - every kind overrides it
        raise NotImplementedError


class Skill(MemoryItemBase):
    """How to do something; one per name in a scope."""

    kind: Literal["skill"] = "skill"
    name: str = Field(min_length=1, max_length=200)
    description: str = _text_field(required=False)
    content: str = _text_field()

    def to_prompt_text(self) -> str:
        head = f"### {self.name}"
        body = "\n".join(part for part in (self.description, self.content) if part)
        return f"{head}\n{body}"


class Experience(MemoryItemBase):
    """A rule learnt under a condition, with the evidence it came from."""

    kind: Literal["experience"] = "experience"
    condition: str = _text_field(required=False)
    rule: str = _text_field()
    evidence: list[str] = Field(default_factory=list, max_length=MAX_EVIDENCE)
    source: str = Field(default="manual", min_length=1, max_length=200)
    confidence: float = Field(default=0.5, ge=0.0, le=1.0)

    def to_prompt_text(self) -> str:
        if self.condition:
            return f"{self.condition}: {self.rule} (confidence {self.confidence:.1f})"
        return f"{self.rule} (confidence {self.confidence:.1f})"


class Fact(MemoryItemBase):
    """Something said or known, such as a message of a past session."""

    kind: Literal["fact"] = "fact"
    content: str = _text_field()
    source: str = Field(default="manual", min_length=1, max_length=200)
    evidence: list[str] = Field(default_factory=list, max_length=MAX_EVIDENCE)

    def to_prompt_text(self) -> str:
        return self.content


AnyItem: TypeAlias = Skill | Experience | Fact
#: Any memory item; narrow it with ``item.kind``.
MemoryItem: TypeAlias = Annotated[AnyItem, Field(discriminator="kind")]
_ADAPTER: TypeAdapter[MemoryItem] = TypeAdapter(MemoryItem)


def decode_item(data: str | bytes | Mapping[str, Any], where: str) -> MemoryItem:
    """A stored item from its JSON (or dict).

    Raises:
        ValueError: it is not an item; the caller reports it as corrupt data (never skipped).
    """
    try:
        if isinstance(data, Mapping):
            return _ADAPTER.validate_python(data)
        return _ADAPTER.validate_json(data)
    except ValidationError as exc:
        raise ValueError(f"{where} is not a memory item: {exc.errors()[:2]}") from exc


def search_text(item: AnyItem) -> str:
    """The text an item is found by."""
    if isinstance(item, Skill):
        return f"{item.name}\n{item.description}\n{item.content}"
    if isinstance(item, Experience):
        return f"{item.condition}\n{item.rule}"
    return item.content


def merge_key(item: AnyItem) -> str:
    """What makes two items of a scope the same item: a skill's name, an experience's rule,
    a fact's content, each normalised (:func:`normalize_text`) and hashed."""
    if isinstance(item, Skill):
        basis = item.name
    elif isinstance(item, Experience):
        basis = item.rule
    else:
        basis = item.content
    digest = hashlib.sha256(normalize_text(basis).encode()).hexdigest()[:32]
    return f"{_KIND_LETTER[item.kind]}:{digest}"


def _joined(old: Sequence[str], new: Sequence[str]) -> list[str]:
    joined = list(old) + [ref for ref in new if ref not in old]
    return joined[-MAX_EVIDENCE:]


def merged(existing: AnyItem | None, incoming: AnyItem) -> AnyItem:
    """The item to store when ``incoming`` is added and the scope holds ``existing`` with the
    same :func:`merge_key` (or nothing): keeps the stored ID and creation time.

    - skill: ``incoming`` replaces the stored one;
    - experience, fact: the stored text stays, the evidence is joined (oldest dropped past
      :data:`MAX_EVIDENCE`), the confidence is the higher of the two.
    """
    now = _now()
    if existing is None:
        return incoming.model_copy(
            update={"id": new_item_id(incoming.kind), "created_at": now, "updated_at": now}
        )
    keep = {"id": existing.id, "created_at": existing.created_at, "updated_at": now}
    if isinstance(incoming, Skill) or type(existing) is not type(incoming):
        return incoming.model_copy(update=keep)
    assert isinstance(existing, Experience | Fact) and isinstance(incoming, Experience | Fact)
    keep["evidence"] = _joined(existing.evidence, incoming.evidence)
    keep["confidence"] = max(existing.confidence, incoming.confidence)
    return existing.model_copy(update=keep)


def check_item(item: object) -> AnyItem:
    """An item to add: a Skill, Experience or Fact with a valid app name, scope and fields.

    Raises:
        InvalidRequestError: naming the field and the fix.
    """
    if not isinstance(item, Skill | Experience | Fact):
        raise InvalidRequestError(
            f"a memory item must be a Skill, Experience or Fact, got {type(item).__name__}."
        )
    try:
        checked = type(item).model_validate(item.model_dump())  # re-run the field checks
    except ValidationError as exc:
        raise InvalidRequestError(describe_validation_error(exc, whole="memory item")) from None
    validate_identifier(checked.app_name, "app_name")
    check_scope(checked.scope)
    for name in ("name", "description", "content", "condition", "rule"):
        value = getattr(checked, name, None)
        if isinstance(value, str):
            bad = _CONTROL_RE.search(value)
            if bad is not None:
                raise InvalidRequestError(
                    f"the {checked.kind}'s {name} holds the control character {bad.group()!r}; "
                    "remove it."
                )
    key_text = checked.name if isinstance(checked, Skill) else (
        checked.rule if isinstance(checked, Experience) else checked.content
    )
    if not normalize_text(key_text) or not tokenize(search_text(checked)):
        raise InvalidRequestError(
            f"the {checked.kind} has no words to be found by; give it some text."
        )
    return checked


# --- ranking ---------------------------------------------------------------------------------

#: BM25's term-frequency saturation and length normalisation (the usual values).
BM25_K1: Final = 1.2
BM25_B: Final = 0.75


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
        validate_identifier(app_name, "app_name")
        check_query(query)
        scope_list = [scopes] if isinstance(scopes, str) else list(scopes)
        if not scope_list:
            raise InvalidRequestError("scopes is empty; name at least one scope to search.")
        checked_scopes = list(dict.fromkeys(check_scope(s) for s in scope_list))
        wanted = _check_kinds(kinds)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100:
            raise InvalidRequestError(f"limit must be a whole number from 1 to 100, got {limit!r}.")
        if self.embedder is not None:
            return await self._similar(app_name, query, checked_scopes, wanted, limit)
        terms = tokenize(query)
        if not terms:
            return []
        hits: list[MemoryHit] = []
        for scope in checked_scopes:
            hits += await self._keyword_search(app_name, scope, terms, wanted, limit)
        return _best(hits, limit)

    async def get(self, app_name: str, scope: str, item_id: str) -> AnyItem | None:
        """The item ``item_id`` of the scope, or None."""
        validate_identifier(app_name, "app_name")
        found = await self._get_many(app_name, check_scope(scope), [_check_id(item_id)])
        return found[0] if found else None

    async def items(
        self, app_name: str, scope: str, *, kinds: Sequence[MemoryKind] | None = None
    ) -> list[AnyItem]:
        """Every item of the scope (of ``kinds``), oldest first."""
        validate_identifier(app_name, "app_name")
        wanted = _check_kinds(kinds)
        found = await self._all(app_name, check_scope(scope))
        return sorted((i for i in found if i.kind in wanted), key=lambda i: i.id)

    async def delete(self, app_name: str, scope: str, item_id: str) -> bool:
        """Delete one item; True if it was there."""
        validate_identifier(app_name, "app_name")
        return await self._delete(app_name, check_scope(scope), _check_id(item_id))

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
            text = _CONTROL_RE.sub(" ", message.text).strip()[:MAX_TEXT_CHARS]
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
        kinds: frozenset[str],
        limit: int,
    ) -> list[MemoryHit]:
        from .embeddings import rank_by_similarity

        assert self.embedder is not None
        [query_vector] = await self.embedder.embed([query])
        hits: list[MemoryHit] = []
        for scope in scopes:
            stored = [
                (item_id, vector)
                for item_id, vector in await self._vectors(app_name, scope)
                if kind_of_id(item_id) in kinds
            ]
            ranked = [
                (item_id, score)
                for item_id, score in rank_by_similarity(query_vector, stored, limit)
                if score >= self.min_similarity
            ]
            items = {i.id: i for i in await self._get_many(app_name, scope, [i for i, _ in ranked])}
            hits += [MemoryHit(items[i], s) for i, s in ranked if i in items]
        return _best(hits, limit)

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
        kinds: frozenset[str],
        limit: int,
    ) -> list[MemoryHit]:
        """The best ``limit`` items of ``kinds`` holding one of ``terms``, best first."""

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


def _best(hits: list[MemoryHit], limit: int) -> list[MemoryHit]:
    """The ``limit`` best hits of several scopes, as :func:`top` orders them."""
    return heapq.nlargest(limit, hits, key=lambda hit: (hit.score, hit.item.id))


def _check_kinds(kinds: Sequence[MemoryKind] | None) -> frozenset[str]:
    if kinds is None:
        return frozenset(KINDS)
    if isinstance(kinds, str):
        kinds = [kinds]  # type: ignore[list-item]
    wanted = frozenset(kinds)
    unknown = sorted(wanted - set(KINDS))
    if unknown or not wanted:
        raise InvalidRequestError(
            f"kinds {sorted(wanted)!r} must name one or more of {', '.join(KINDS)}."
        )
    return wanted


def _check_id(item_id: object) -> str:
    if not isinstance(item_id, str) or not re.fullmatch(r"[0-9a-f]{24}[sef]", item_id):
        raise InvalidRequestError(
            f"{item_id!r} is not a memory item ID (24 hex digits and a kind letter, as add() "
            "returns)."
        )
    return item_id
