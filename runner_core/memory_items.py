"""Memory items and the rules on them: the three kinds, scopes, the text rules, identity and
merge, and the checks of what callers pass (:mod:`runner_core.memory` has the service).

- :class:`Skill` (``name``, ``description``, ``content``): how to do something. Adding a skill
  whose name is already in the scope replaces it (same ID).
- :class:`Experience` (``condition``, ``rule``, ``evidence``, ``source``, ``confidence``): what
  was learnt, usually from feedback. Adding one whose *normalised* rule
  (:func:`normalize_text`) is already in the scope merges the two (:func:`merged`): the
  evidence is joined, the confidence kept at the higher.
- :class:`Fact` (``content``, ``source``, ``evidence``): something said, e.g. a message of a
  finished session. Same-content facts merge like experiences.

Every item belongs to an app and a **scope**: ``agent:{name}``, ``user:{user_id}`` or ``app``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from .errors import InvalidRequestError, describe_validation_error
from .session import validate_identifier

__all__ = [
    "APP_SCOPE",
    "CONTROL_RE",
    "EVICTION_ORDER",
    "KINDS",
    "MAX_EVIDENCE",
    "MAX_QUERY_CHARS",
    "MAX_TEXT_CHARS",
    "AnyItem",
    "Experience",
    "Fact",
    "MemoryItem",
    "MemoryKind",
    "Skill",
    "agent_scope",
    "check_id",
    "check_item",
    "check_kinds",
    "check_query",
    "check_scope",
    "decode_item",
    "kind_of_id",
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
#: The longest query, in characters.
MAX_QUERY_CHARS: Final = 2_000
#: The longest text field of an item (a rule, a skill's content, a fact), in characters.
MAX_TEXT_CHARS: Final = 8_000
#: The most evidence references an item keeps (the newest win).
MAX_EVIDENCE: Final = 64
#: Which item a full scope evicts first: the lowest ``confidence``; among equals the lowest
#: ``id``, which is the oldest (IDs sort by creation time, :func:`new_item_id`).
EVICTION_ORDER: Final = ("confidence", "id")

#: The control characters no text may hold (tab, newline and carriage return are allowed).
CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
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
    bad = CONTROL_RE.search(query)
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
            bad = CONTROL_RE.search(value)
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


def check_kinds(kinds: Sequence[MemoryKind] | None) -> frozenset[MemoryKind]:
    """The kinds asked for (all three for None).

    Raises:
        InvalidRequestError: none, or one that is not a kind.
    """
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


def check_id(item_id: object) -> str:
    if not isinstance(item_id, str) or not re.fullmatch(r"[0-9a-f]{24}[sef]", item_id):
        raise InvalidRequestError(
            f"{item_id!r} is not a memory item ID (24 hex digits and a kind letter, as add() "
            "returns)."
        )
    return item_id
