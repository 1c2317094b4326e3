"""Artifacts: versioned files that agents and tools save and load.

An artifact is a named sequence of versions (0, 1, 2, ...); each save adds the next version
and never changes an older one. A version holds bytes, a content type and its size.

Scopes, by name:

- ``report.pdf``: belongs to the session (deleted with it, :meth:`~ArtifactService.
  delete_session_artifacts`);
- ``user:profile.png``: belongs to the user of the app, seen from every one of their sessions,
  kept until deleted.

Names are relative paths (``reports/2026/q1.csv``): no empty, ``.`` or ``..`` segments, no
leading ``/``, no ``\\``, no NUL or control characters, and no ``:`` except in the ``user:``
prefix, so a name can never reach out of its scope (another session, another user's files,
the store's root). :func:`artifact_key` owns these rules; every backend calls it through
:class:`BaseArtifactService`, which also enforces the size limit and the content type.

Writes made during a run are fenced like the session's (:mod:`runner_core.runner`): a run with
a fence takes the artifact store's fence for its session (:meth:`ArtifactService.take_fence`)
and every save or delete it makes carries the token; a write whose token is older than the
session's fence is refused (:class:`~runner_core.errors.FencedError`), atomically with the
write, so a worker that lost its run can never add a version again.

Backends: :class:`~runner_core.memory_artifacts.InMemoryArtifactService` here; a file system or
object store with a Redis or PostgreSQL index, and PostgreSQL alone, in ``session_backends``
(``session_backends.artifacts_from_url``).
"""

from __future__ import annotations

import mimetypes
import re
import unicodedata
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol, runtime_checkable

from .errors import InvalidRequestError, lone_surrogate, shown
from .session import USER_PREFIX, SessionKey, validate_identifier
from .store_support import check_fence

__all__ = [
    "DEFAULT_MAX_ARTIFACT_BYTES",
    "MAX_ARTIFACT_NAME_CHARS",
    "MAX_IDEMPOTENCY_KEY_CHARS",
    "Artifact",
    "ArtifactKey",
    "ArtifactScope",
    "ArtifactService",
    "ArtifactVersion",
    "BaseArtifactService",
    "RunFence",
    "artifact_data",
    "artifact_key",
    "check_artifact_name",
    "check_artifact_service",
    "check_content_type",
    "check_max_size",
]

#: The largest artifact version a store accepts unless its ``max_size`` says otherwise.
DEFAULT_MAX_ARTIFACT_BYTES: Final = 64 * 1024 * 1024
#: The longest artifact name, ``user:`` prefix included.
MAX_ARTIFACT_NAME_CHARS: Final = 512
#: The longest ``idempotency_key`` of a save.
MAX_IDEMPOTENCY_KEY_CHARS: Final = 512
_MAX_CONTENT_TYPE_CHARS: Final = 255
_CONTENT_TYPE_RE = re.compile(r"[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*(\s*;\s*[ -~]*)?")
_DEFAULT_BINARY_TYPE: Final = "application/octet-stream"
_DEFAULT_TEXT_TYPE: Final = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class ArtifactVersion:
    """One stored version of an artifact, without its bytes."""

    #: The name as given, ``user:`` prefix included.
    name: str
    version: int
    content_type: str
    size: int
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``created_at`` in ISO 8601)."""
        return {
            "name": self.name,
            "version": self.version,
            "content_type": self.content_type,
            "size": self.size,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Artifact:
    """One version of an artifact with its bytes."""

    info: ArtifactVersion
    data: bytes = field(repr=False)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def version(self) -> int:
        return self.info.version

    @property
    def content_type(self) -> str:
        return self.info.content_type

    @property
    def size(self) -> int:
        return self.info.size

    def text(self, encoding: str = "utf-8") -> str:
        """The bytes as text (``errors="replace"``: never raises for bad bytes)."""
        return self.data.decode(encoding, errors="replace")


@dataclass(frozen=True, slots=True)
class ArtifactKey:
    """Where an artifact lives: its app and user, its session (None for a user-scoped one),
    and its path (the name without the ``user:`` prefix). Build it with :func:`artifact_key`."""

    app_name: str
    user_id: str
    session_id: str | None
    path: str

    @property
    def user_scoped(self) -> bool:
        return self.session_id is None

    @property
    def name(self) -> str:
        """The name as callers write it (``user:`` prefix for user-scoped ones)."""
        return USER_PREFIX + self.path if self.session_id is None else self.path


@dataclass(frozen=True, slots=True)
class RunFence:
    """The fencing token of the run that writes, for its session."""

    session: SessionKey
    token: int


def check_artifact_name(name: object) -> tuple[bool, str]:
    """Check an artifact name; ``(user_scoped, path)``.

    Raises:
        InvalidRequestError: naming what is wrong with the name and what a valid one is.
    """
    if not isinstance(name, str):
        raise InvalidRequestError(f"artifact name must be a string, got {type(name).__name__}.")
    if not name:
        raise InvalidRequestError("artifact name is empty; give a name like 'report.pdf'.")
    if len(name) > MAX_ARTIFACT_NAME_CHARS:
        raise InvalidRequestError(
            f"artifact name is {len(name)} characters long; the limit is {MAX_ARTIFACT_NAME_CHARS}."
        )
    surrogate = lone_surrogate(name)
    if surrogate is not None:
        raise InvalidRequestError(f"artifact name {shown(name)} has {surrogate}.")
    user_scoped = name.startswith(USER_PREFIX)
    path = name[len(USER_PREFIX) :] if user_scoped else name
    problem = _path_problem(path)
    if problem is not None:
        raise InvalidRequestError(
            f"artifact name {shown(name)} {problem}. Use a relative path such as "
            "'report.pdf' or 'reports/q1.csv' ('user:' in front for the user's scope)."
        )
    return user_scoped, path


def _path_problem(path: str) -> str | None:
    """Why ``path`` (a name without its ``user:`` prefix) could leave its scope, or None."""
    if not path:
        return "has nothing after the 'user:' prefix"
    for char in path:
        if char == "\x00":
            return "contains a NUL character"
        if unicodedata.category(char) == "Cc":
            return f"contains the control character U+{ord(char):04X}"
    if "\\" in path:
        return "contains a backslash; separate folders with '/'"
    if ":" in path:
        return (
            "contains ':', which is reserved for the scope prefix 'user:' (there is no "
            "other scope, and no name may point into another user's)"
        )
    if path.startswith("/"):
        return "is an absolute path"
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            what = "an empty segment ('//' or a trailing '/')" if not segment else repr(segment)
            return f"has {what} as a path segment"
        if segment != segment.strip():
            return "has a path segment that starts or ends with whitespace"
    return None


def artifact_key(app_name: str, user_id: str, session_id: str | None, name: str) -> ArtifactKey:
    """The key of ``name`` as seen from a session: checks the IDs and the name.

    ``session_id`` may be None only for a ``user:`` name.

    Raises:
        InvalidRequestError: a bad ID or name, or a session-scoped name without a session.
    """
    validate_identifier(app_name, "app_name")
    validate_identifier(user_id, "user_id")
    user_scoped, path = check_artifact_name(name)
    if user_scoped:
        if session_id:
            validate_identifier(session_id, "session_id")
        return ArtifactKey(app_name, user_id, None, path)
    if not session_id:
        raise InvalidRequestError(
            f"artifact {shown(name)} belongs to a session, and no session_id was given; pass "
            "the session, or name it 'user:...' for the user's scope."
        )
    validate_identifier(session_id, "session_id")
    return ArtifactKey(app_name, user_id, session_id, path)


def check_content_type(content_type: object) -> str:
    """Check a MIME type (``text/csv``, ``image/png; q=1``).

    Raises:
        InvalidRequestError: not a ``type/subtype`` string of printable ASCII.
    """
    if not isinstance(content_type, str):
        raise InvalidRequestError(
            f"content_type must be a string like 'text/csv', got {type(content_type).__name__}."
        )
    if len(content_type) > _MAX_CONTENT_TYPE_CHARS or not _CONTENT_TYPE_RE.fullmatch(content_type):
        raise InvalidRequestError(
            f"content_type {shown(content_type)} is not a MIME type; write 'type/subtype' "
            "(e.g. 'text/csv', 'image/png', 'application/json')."
        )
    return content_type


def check_max_size(max_size: object) -> int:
    """Check a store's ``max_size`` option (bytes, >= 1)."""
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
        raise InvalidRequestError(
            f"max_size must be a whole number of bytes >= 1, got {shown(max_size)}."
        )
    return max_size


def artifact_data(
    name: str, data: object, content_type: str | None, max_size: int
) -> tuple[bytes, str]:
    """The bytes to store and their content type.

    Text is stored as UTF-8, typed ``text/...; charset=utf-8`` after its name's extension
    (``report.md``: ``text/markdown``), else ``text/plain``; bytes get the type their name
    suggests (``mimetypes``), else ``application/octet-stream``. A ``content_type`` given wins.

    Raises:
        InvalidRequestError: ``data`` is neither bytes nor text, is larger than ``max_size``,
            or ``content_type`` is not a MIME type.
    """
    if isinstance(data, str):
        surrogate = lone_surrogate(data)
        if surrogate is not None:
            raise InvalidRequestError(
                f"artifact {shown(name)}: the text has {surrogate}; it cannot be UTF-8."
            )
        raw = data.encode("utf-8")
        guessed = mimetypes.guess_type(name, strict=False)[0]
        if guessed is not None and guessed.startswith("text/"):
            default = f"{guessed}; charset=utf-8"
        else:
            default = _DEFAULT_TEXT_TYPE
    elif isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        default = mimetypes.guess_type(name, strict=False)[0] or _DEFAULT_BINARY_TYPE
    else:
        raise InvalidRequestError(
            f"artifact {shown(name)}: data must be bytes or str, got {type(data).__name__}."
        )
    if len(raw) > max_size:
        raise InvalidRequestError(
            f"artifact {shown(name)} is {len(raw)} bytes; this store takes at most {max_size} "
            "(its max_size option, AGENT_RUNNER_ARTIFACT_MAX_BYTES for workers)."
        )
    return raw, check_content_type(content_type) if content_type is not None else default


def _check_version(version: object) -> int | None:
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise InvalidRequestError(
            f"version must be a whole number >= 0 (or None for the latest), got {shown(version)}."
        )
    return version


def _check_idempotency_key(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise InvalidRequestError(
            f"idempotency_key must be a non-empty string of at most {MAX_IDEMPOTENCY_KEY_CHARS} "
            f"characters, got {shown(value)}."
        )
    surrogate = lone_surrogate(value)
    if surrogate is not None:
        raise InvalidRequestError(f"idempotency_key has {surrogate}.")
    return value


def _fence_of(
    app_name: str, user_id: str, session_id: str | None, fence: int | None
) -> RunFence | None:
    if fence is None:
        return None
    check_fence(fence)
    if not session_id:
        raise InvalidRequestError("a fenced write needs the session_id of the run that writes.")
    return RunFence(SessionKey(app_name, user_id, session_id), fence)


@runtime_checkable
class ArtifactService(Protocol):
    """What an artifact store does; every backend behaves alike (one conformance suite).

    Every method checks its IDs and names (:func:`artifact_key`) and raises
    :class:`~runner_core.errors.InvalidRequestError` for bad ones; store failures raise
    :class:`~runner_core.errors.ArtifactBackendError`.
    """

    async def save_artifact(
        self,
        app_name: str,
        user_id: str,
        session_id: str | None,
        name: str,
        data: bytes | str,
        *,
        content_type: str | None = None,
        fence: int | None = None,
        idempotency_key: str | None = None,
    ) -> ArtifactVersion:
        """Store ``data`` as the next version of ``name`` (0 for the first) and return it.

        The version is visible to readers only once it is whole. Saves of one name from many
        processes at once each get their own version; none is lost. A save whose
        ``idempotency_key`` an earlier save of the same name used stores nothing and returns
        that save's version (a tool run again after its worker died saves once).

        Raises:
            InvalidRequestError: a bad name or content type, or data over the size limit.
            FencedError: ``fence`` is older than the session's (:meth:`take_fence`); nothing
                was stored.
        """
        ...

    async def load_artifact(
        self,
        app_name: str,
        user_id: str,
        session_id: str | None,
        name: str,
        *,
        version: int | None = None,
    ) -> Artifact | None:
        """The latest version of ``name``, or the given one; None when there is none."""
        ...

    async def list_artifact_names(
        self, app_name: str, user_id: str, session_id: str | None
    ) -> list[str]:
        """The names the session sees, sorted: its own and the user's (``user:...``).
        With ``session_id`` None, the user's only."""
        ...

    async def list_versions(
        self, app_name: str, user_id: str, session_id: str | None, name: str
    ) -> list[ArtifactVersion]:
        """Every version of ``name``, oldest first ([] when there is none)."""
        ...

    async def delete_artifact(
        self,
        app_name: str,
        user_id: str,
        session_id: str | None,
        name: str,
        *,
        fence: int | None = None,
    ) -> None:
        """Delete every version of ``name``; a missing one is a no-op. Its next save starts
        again at version 0."""
        ...

    async def delete_session_artifacts(self, app_name: str, user_id: str, session_id: str) -> None:
        """Delete every session-scoped artifact of the session; the user's stay."""
        ...

    async def take_fence(self, app_name: str, user_id: str, session_id: str, token: int) -> None:
        """Make ``token`` the session's fence for artifact writes, unless a greater one holds it.

        Raises:
            FencedError: a greater token holds it.
        """
        ...

    async def close(self) -> None:
        """Release what the store opened. Idempotent."""
        ...


class BaseArtifactService(ABC):
    """The rules every backend shares, written once: IDs, names, sizes, content types,
    versions and fences are checked here; a backend implements the ``_`` methods, which get
    checked arguments and only talk to their server.

    Args:
        max_size: the largest version accepted, in bytes.
    """

    def __init__(self, *, max_size: int = DEFAULT_MAX_ARTIFACT_BYTES) -> None:
        self.max_size = check_max_size(max_size)

    # --- what a backend implements -------------------------------------------------------

    @abstractmethod
    async def _save(
        self,
        key: ArtifactKey,
        data: bytes,
        content_type: str,
        fence: RunFence | None,
        idempotency_key: str | None,
    ) -> ArtifactVersion:
        """Store a new version, unless a version of ``key`` was saved with
        ``idempotency_key`` (then return that one)."""

    @abstractmethod
    async def _load(self, key: ArtifactKey, version: int | None) -> Artifact | None: ...

    @abstractmethod
    async def _names(self, app_name: str, user_id: str, session_id: str | None) -> list[str]:
        """Every name of the user's scope (``user:`` prefixed) and, with a session, of the
        session's; any order."""

    @abstractmethod
    async def _versions(self, key: ArtifactKey) -> list[ArtifactVersion]: ...

    @abstractmethod
    async def _delete(self, key: ArtifactKey, fence: RunFence | None) -> None: ...

    @abstractmethod
    async def _delete_session(self, session: SessionKey) -> None: ...

    @abstractmethod
    async def _take_fence(self, session: SessionKey, token: int) -> None: ...

    async def close(self) -> None:  # noqa: B027 - a store with nothing to close keeps it
        """Release what the store opened. Idempotent."""

    # --- the contract ----------------------------------------------------------------------

    async def save_artifact(
        self,
        app_name: str,
        user_id: str,
        session_id: str | None,
        name: str,
        data: bytes | str,
        *,
        content_type: str | None = None,
        fence: int | None = None,
        idempotency_key: str | None = None,
    ) -> ArtifactVersion:
        key = artifact_key(app_name, user_id, session_id, name)
        raw, kind = artifact_data(name, data, content_type, self.max_size)
        return await self._save(
            key,
            raw,
            kind,
            _fence_of(app_name, user_id, session_id, fence),
            _check_idempotency_key(idempotency_key),
        )

    async def load_artifact(
        self,
        app_name: str,
        user_id: str,
        session_id: str | None,
        name: str,
        *,
        version: int | None = None,
    ) -> Artifact | None:
        key = artifact_key(app_name, user_id, session_id, name)
        return await self._load(key, _check_version(version))

    async def list_artifact_names(
        self, app_name: str, user_id: str, session_id: str | None
    ) -> list[str]:
        validate_identifier(app_name, "app_name")
        validate_identifier(user_id, "user_id")
        if session_id:
            validate_identifier(session_id, "session_id")
        return sorted(await self._names(app_name, user_id, session_id or None))

    async def list_versions(
        self, app_name: str, user_id: str, session_id: str | None, name: str
    ) -> list[ArtifactVersion]:
        key = artifact_key(app_name, user_id, session_id, name)
        return sorted(await self._versions(key), key=lambda v: v.version)

    async def delete_artifact(
        self,
        app_name: str,
        user_id: str,
        session_id: str | None,
        name: str,
        *,
        fence: int | None = None,
    ) -> None:
        key = artifact_key(app_name, user_id, session_id, name)
        await self._delete(key, _fence_of(app_name, user_id, session_id, fence))

    async def delete_session_artifacts(self, app_name: str, user_id: str, session_id: str) -> None:
        await self._delete_session(SessionKey(app_name, user_id, session_id))

    async def take_fence(self, app_name: str, user_id: str, session_id: str, token: int) -> None:
        checked = _fence_of(app_name, user_id, session_id, token)
        assert checked is not None
        await self._take_fence(checked.session, checked.token)


class ArtifactScope:
    """A session's artifacts as a run sees them: the store, the run's IDs and fence bound,
    and every version saved through it recorded in :attr:`delta` (``{name: version}``, the
    ``artifact_delta`` of the event the step writes).

    Tools reach it through ``ToolContext`` (``save_artifact``, ``load_artifact``,
    ``list_artifacts``), custom agents through ``ctx.artifacts``.
    """

    def __init__(
        self,
        service: ArtifactService,
        *,
        app_name: str,
        user_id: str,
        session_id: str,
        fence: int | None = None,
    ) -> None:
        self.service = service
        self.app_name = app_name
        self.user_id = user_id
        self.session_id = session_id
        self.fence = fence
        #: Versions saved through this scope: ``{name: version}`` (the last save of each name).
        self.delta: dict[str, int] = {}

    async def save(
        self,
        name: str,
        data: bytes | str,
        *,
        content_type: str | None = None,
        idempotency_key: str | None = None,
    ) -> ArtifactVersion:
        """Save a new version of ``name`` (or find the one saved with ``idempotency_key``)
        and record it in :attr:`delta`."""
        saved = await self.service.save_artifact(
            self.app_name,
            self.user_id,
            self.session_id,
            name,
            data,
            content_type=content_type,
            fence=self.fence,
            idempotency_key=idempotency_key,
        )
        self.delta[saved.name] = saved.version
        return saved

    async def load(self, name: str, *, version: int | None = None) -> Artifact | None:
        return await self.service.load_artifact(
            self.app_name, self.user_id, self.session_id, name, version=version
        )

    async def names(self) -> list[str]:
        return await self.service.list_artifact_names(self.app_name, self.user_id, self.session_id)

    async def versions(self, name: str) -> list[ArtifactVersion]:
        return await self.service.list_versions(self.app_name, self.user_id, self.session_id, name)

    async def delete(self, name: str) -> None:
        await self.service.delete_artifact(
            self.app_name, self.user_id, self.session_id, name, fence=self.fence
        )


#: How a run without an artifact store answers a tool or agent that asks for one.
NO_ARTIFACT_SERVICE: Final = (
    "no artifact store is configured: pass Runner(..., artifact_service=...) (workers: set "
    "AGENT_RUNNER_ARTIFACT_URL)."
)


def check_artifact_service(service: object, where: str) -> ArtifactService | None:
    """``service`` if it is None or an :class:`ArtifactService`.

    Raises:
        InvalidRequestError: it is something else.
    """
    if service is None or isinstance(service, ArtifactService):
        return service
    raise InvalidRequestError(
        f"{where} must be an artifact store (runner_core.ArtifactService), got "
        f"{type(service).__name__}."
    )
