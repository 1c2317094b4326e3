"""One conformance suite for every artifact store: memory, a file system with a Redis index, a
file system with a PostgreSQL index, and PostgreSQL alone.

The Redis and PostgreSQL servers are real ones (tests/services.py); the blob store is the
local file system through fsspec (``file://``), as ``s3://`` or ``gs://`` would be.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from runner_core.artifacts import ArtifactService
from runner_core.errors import (
    ArtifactBackendError,
    ConfigurationError,
    FencedError,
    InvalidRequestError,
)
from runner_core.memory_artifacts import InMemoryArtifactService
from session_backends import artifacts_from_url
from session_backends.artifact_blobs import BlobArtifactService
from session_backends.artifact_index_redis import RedisArtifactIndex
from session_backends.artifacts_postgres import PostgresArtifactService
from tests.services import free_port

APP = "reports"
USER = "alice"
SESSION = "s1"

BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("files+redis", id="files+redis", marks=pytest.mark.redis),
    pytest.param("files+postgres", id="files+postgres", marks=pytest.mark.postgres),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]

Make = Callable[..., Awaitable[ArtifactService]]


def _urls(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str | None]:
    """(store URL, index URL) of a backend."""
    blobs = f"file://{tmp_path}/blobs"
    if backend == "memory":
        return "memory://", None
    if backend == "files+redis":
        return blobs, request.getfixturevalue("redis_url")
    dsn: str = request.getfixturevalue("postgres_dsn")
    return (blobs, dsn) if backend == "files+postgres" else (dsn, None)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def make_store(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Make]:
    """Build stores of this backend (they share the servers, so they see each other's
    artifacts, except memory); all closed after the test."""
    url, index_url = _urls(backend, request, tmp_path)
    built: list[ArtifactService] = []
    shared: list[ArtifactService] = []

    async def make(**options: Any) -> ArtifactService:
        if backend == "memory" and shared and not options:
            return shared[0]  # one process's memory is the only place it can be shared
        store = artifacts_from_url(url, index_url=index_url, **options)
        built.append(store)
        if not shared:
            shared.append(store)
        return store

    yield make
    for store in built:
        await store.close()


@pytest.fixture
async def store(make_store: Make) -> ArtifactService:
    return await make_store()


# --- save and load ---------------------------------------------------------------------------


async def test_each_save_is_a_new_version_and_older_ones_stay(store: ArtifactService) -> None:
    first = await store.save_artifact(APP, USER, SESSION, "report.md", "# draft")
    second = await store.save_artifact(APP, USER, SESSION, "report.md", "# final")

    assert (first.version, second.version) == (0, 1)
    latest = await store.load_artifact(APP, USER, SESSION, "report.md")
    assert latest is not None and latest.version == 1 and latest.text() == "# final"
    old = await store.load_artifact(APP, USER, SESSION, "report.md", version=0)
    assert old is not None and old.data == b"# draft"
    assert await store.load_artifact(APP, USER, SESSION, "report.md", version=2) is None
    assert await store.load_artifact(APP, USER, SESSION, "missing.md") is None


async def test_bytes_come_back_exactly_with_type_and_size(store: ArtifactService) -> None:
    payload = bytes(range(256)) * 40 + b"\x00"
    saved = await store.save_artifact(APP, USER, SESSION, "img/chart.png", payload)
    typed = await store.save_artifact(
        APP, USER, SESSION, "data", b'{"a": 1}', content_type="application/json"
    )
    empty = await store.save_artifact(APP, USER, SESSION, "empty.bin", b"")

    assert (saved.content_type, saved.size) == ("image/png", len(payload))
    assert typed.content_type == "application/json"
    assert empty.size == 0
    loaded = await store.load_artifact(APP, USER, SESSION, "img/chart.png")
    assert loaded is not None and loaded.data == payload and loaded.size == len(payload)
    again = await store.load_artifact(APP, USER, SESSION, "empty.bin")
    assert again is not None and again.data == b""
    text = await store.save_artifact(APP, USER, SESSION, "notes.md", "héllo")
    assert text.content_type == "text/markdown; charset=utf-8"
    assert text.size == len("héllo".encode())


async def test_list_versions_holds_every_version_oldest_first(store: ArtifactService) -> None:
    for n in range(3):
        await store.save_artifact(APP, USER, SESSION, "log.txt", "x" * n)

    versions = await store.list_versions(APP, USER, SESSION, "log.txt")

    assert [(v.version, v.size, v.name) for v in versions] == [
        (0, 0, "log.txt"),
        (1, 1, "log.txt"),
        (2, 2, "log.txt"),
    ]
    assert versions[0].created_at <= versions[2].created_at
    assert await store.list_versions(APP, USER, SESSION, "nothing.txt") == []


async def test_a_save_under_an_idempotency_key_already_used_stores_nothing(
    store: ArtifactService, backend: str, tmp_path: Path
) -> None:
    first = await store.save_artifact(APP, USER, SESSION, "a.txt", "one", idempotency_key="k1")
    again = await store.save_artifact(APP, USER, SESSION, "a.txt", b"2!", idempotency_key="k1")
    other = await store.save_artifact(APP, USER, SESSION, "a.txt", "three", idempotency_key="k2")
    plain = await store.save_artifact(APP, USER, SESSION, "a.txt", "four")

    assert (again.version, again.size, again.content_type) == (0, 3, first.content_type)
    assert (other.version, plain.version) == (1, 2)
    assert [v.version for v in await store.list_versions(APP, USER, SESSION, "a.txt")] == [0, 1, 2]
    kept = await store.load_artifact(APP, USER, SESSION, "a.txt", version=0)
    assert kept is not None and kept.text() == "one"
    if backend.startswith("files"):
        assert len(_files(tmp_path / "blobs")) == 3  # the repeat's bytes were removed
    # A key is per name, and a deleted name's keys go with it.
    elsewhere = await store.save_artifact(APP, USER, SESSION, "b.txt", "x", idempotency_key="k1")
    assert elsewhere.version == 0
    await store.delete_artifact(APP, USER, SESSION, "a.txt")
    fresh = await store.save_artifact(APP, USER, SESSION, "a.txt", "five", idempotency_key="k1")
    loaded = await store.load_artifact(APP, USER, SESSION, "a.txt")
    assert fresh.version == 0 and loaded is not None and loaded.text() == "five"
    await store.delete_session_artifacts(APP, USER, SESSION)
    again_fresh = await store.save_artifact(APP, USER, SESSION, "b.txt", "y", idempotency_key="k1")
    assert again_fresh.version == 0


# --- scopes ----------------------------------------------------------------------------------


async def test_session_names_stay_in_their_session_and_user_names_follow_the_user(
    store: ArtifactService,
) -> None:
    await store.save_artifact(APP, USER, "s1", "report.md", "s1's")
    await store.save_artifact(APP, USER, "s2", "report.md", "s2's")
    await store.save_artifact(APP, USER, "s1", "user:profile.json", "{}")
    await store.save_artifact(APP, "bob", "s1", "user:profile.json", "bob's")

    assert await store.list_artifact_names(APP, USER, "s1") == ["report.md", "user:profile.json"]
    assert await store.list_artifact_names(APP, USER, "s3") == ["user:profile.json"]
    assert await store.list_artifact_names(APP, USER, None) == ["user:profile.json"]
    s2 = await store.load_artifact(APP, USER, "s2", "report.md")
    assert s2 is not None and s2.text() == "s2's"
    from_s3 = await store.load_artifact(APP, USER, "s3", "user:profile.json")
    assert from_s3 is not None and from_s3.text() == "{}"
    bobs = await store.load_artifact(APP, "bob", None, "user:profile.json")
    assert bobs is not None and bobs.text() == "bob's"
    assert await store.list_artifact_names("other-app", USER, "s1") == []


async def test_a_session_name_needs_a_session(store: ArtifactService) -> None:
    with pytest.raises(InvalidRequestError, match="belongs to a session"):
        await store.save_artifact(APP, USER, None, "report.md", "x")


# --- delete ----------------------------------------------------------------------------------


async def test_delete_removes_every_version_and_the_next_save_starts_over(
    store: ArtifactService,
) -> None:
    await store.save_artifact(APP, USER, SESSION, "a.txt", "1")
    await store.save_artifact(APP, USER, SESSION, "a.txt", "2")
    await store.save_artifact(APP, USER, SESSION, "b.txt", "kept")

    await store.delete_artifact(APP, USER, SESSION, "a.txt")
    await store.delete_artifact(APP, USER, SESSION, "never-saved.txt")  # a no-op

    assert await store.load_artifact(APP, USER, SESSION, "a.txt") is None
    assert await store.list_versions(APP, USER, SESSION, "a.txt") == []
    assert await store.list_artifact_names(APP, USER, SESSION) == ["b.txt"]
    again = await store.save_artifact(APP, USER, SESSION, "a.txt", "3")
    assert again.version == 0


async def test_deleting_a_sessions_artifacts_keeps_the_users_and_other_sessions(
    store: ArtifactService,
) -> None:
    await store.save_artifact(APP, USER, "s1", "report.md", "gone")
    await store.save_artifact(APP, USER, "s1", "deep/nested/table.csv", "gone")
    await store.save_artifact(APP, USER, "s1", "user:profile.json", "stays")
    await store.save_artifact(APP, USER, "s2", "report.md", "stays")

    await store.delete_session_artifacts(APP, USER, "s1")

    assert await store.list_artifact_names(APP, USER, "s1") == ["user:profile.json"]
    assert await store.load_artifact(APP, USER, "s1", "report.md") is None
    assert await store.list_artifact_names(APP, USER, "s2") == ["report.md", "user:profile.json"]
    fresh = await store.save_artifact(APP, USER, "s1", "report.md", "new")
    assert fresh.version == 0


# --- limits and bad input --------------------------------------------------------------------


async def test_the_size_limit_refuses_a_larger_version_and_stores_nothing(
    make_store: Make,
) -> None:
    store = await make_store(max_size=1024)

    with pytest.raises(InvalidRequestError, match="1025 bytes; this store takes at most 1024"):
        await store.save_artifact(APP, USER, SESSION, "big.bin", b"x" * 1025)
    saved = await store.save_artifact(APP, USER, SESSION, "big.bin", b"x" * 1024)

    assert saved.version == 0


BAD_NAMES = [
    ("", "empty"),
    ("../other-session/report.md", "'..'"),
    ("reports/../../bob/x", "'..'"),
    ("./report.md", "'.'"),
    ("/etc/passwd", "absolute path"),
    ("user:/etc/passwd", "absolute path"),
    ("C:\\Windows\\x", "backslash"),
    ("a\\..\\b", "backslash"),
    ("report\x00.md", "NUL"),
    ("line\nbreak", "control character U\\+000A"),
    ("tab\there", "control character U\\+0009"),
    ("reports//q1.csv", "empty segment"),
    ("reports/", "empty segment"),
    ("user:", "nothing after"),
    ("user:bob:report.md", "reserved for the scope prefix"),
    ("user:user:report.md", "reserved for the scope prefix"),
    ("app:shared.md", "reserved for the scope prefix"),
    ("session:s2:report.md", "reserved for the scope prefix"),
    ("s3://bucket/key", "reserved for the scope prefix"),
    (" padded.md", "whitespace"),
    ("x" * 513, "limit is 512"),
    ("bad\udfffsurrogate", "lone surrogate"),
]


@pytest.mark.parametrize(("name", "why"), BAD_NAMES)
async def test_names_that_could_leave_their_scope_are_refused(
    store: ArtifactService, name: str, why: str
) -> None:
    with pytest.raises(InvalidRequestError, match=why):
        await store.save_artifact(APP, USER, SESSION, name, b"x")
    with pytest.raises(InvalidRequestError, match=why):
        await store.load_artifact(APP, USER, SESSION, name)
    with pytest.raises(InvalidRequestError, match=why):
        await store.delete_artifact(APP, USER, SESSION, name)
    assert await store.list_artifact_names(APP, USER, SESSION) == []


@pytest.mark.parametrize(
    ("call", "problem"),
    [
        (lambda s: s.save_artifact(APP, USER, SESSION, "a", 123), "data must be bytes or str"),
        (
            lambda s: s.save_artifact(APP, USER, SESSION, "a", b"x", content_type="png"),
            "not a MIME type",
        ),
        (lambda s: s.load_artifact(APP, USER, SESSION, "a", version=-1), "version must be"),
        (lambda s: s.save_artifact(APP, "../bob", SESSION, "a", b"x"), "user_id"),
        (lambda s: s.save_artifact(APP, USER, "s/1", "a", b"x"), "session_id"),
        (lambda s: s.save_artifact(APP, USER, SESSION, "a", b"x", fence=0), "fence"),
        (
            lambda s: s.save_artifact(APP, USER, SESSION, "a", b"x", idempotency_key=""),
            "idempotency_key",
        ),
    ],
)
async def test_bad_arguments_name_the_field(
    store: ArtifactService, call: Callable[[ArtifactService], Awaitable[Any]], problem: str
) -> None:
    with pytest.raises(InvalidRequestError, match=problem):
        await call(store)


# --- fencing ---------------------------------------------------------------------------------


async def test_a_write_with_an_older_fence_is_refused_and_leaves_nothing(
    store: ArtifactService,
) -> None:
    await store.take_fence(APP, USER, SESSION, 1)
    kept = await store.save_artifact(APP, USER, SESSION, "a.txt", "owner 1", fence=1)
    await store.take_fence(APP, USER, SESSION, 2)  # a newer owner took the session

    with pytest.raises(FencedError):
        await store.save_artifact(APP, USER, SESSION, "a.txt", "zombie", fence=1)
    with pytest.raises(FencedError):
        await store.save_artifact(APP, USER, SESSION, "user:b.txt", "zombie", fence=1)
    with pytest.raises(FencedError):
        await store.delete_artifact(APP, USER, SESSION, "a.txt", fence=1)
    with pytest.raises(FencedError):
        await store.take_fence(APP, USER, SESSION, 1)

    assert [v.version for v in await store.list_versions(APP, USER, SESSION, "a.txt")] == [
        kept.version
    ]
    assert await store.list_artifact_names(APP, USER, SESSION) == ["a.txt"]
    newer = await store.save_artifact(APP, USER, SESSION, "a.txt", "owner 2", fence=2)
    assert newer.version == 1
    # Other sessions are not fenced by this one.
    await store.save_artifact(APP, USER, "s2", "a.txt", "other", fence=1)


# --- many writers ----------------------------------------------------------------------------

WRITERS = 4
SAVES_PER_WRITER = 8


def _writer(url: str, index_url: str | None, writer: int, out: Any) -> None:
    async def main() -> None:
        store = artifacts_from_url(url, index_url=index_url)
        try:
            for n in range(SAVES_PER_WRITER):
                body = f"writer {writer} save {n}"
                saved = await store.save_artifact(APP, USER, SESSION, "shared.txt", body)
                out.put((saved.version, body))
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    "backend",
    [param for param in BACKENDS if param.values[0] != "memory"],
    indirect=True,
)
async def test_concurrent_saves_from_many_processes_each_get_a_version_and_none_is_lost(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url, index_url = _urls(backend, request, tmp_path)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [
        context.Process(target=_writer, args=(url, index_url, w, results)) for w in range(WRITERS)
    ]
    for process in processes:
        process.start()
    saved = [results.get(timeout=90) for _ in range(WRITERS * SAVES_PER_WRITER)]
    for process in processes:
        process.join(timeout=30)
    assert [p.exitcode for p in processes] == [0] * WRITERS

    total = WRITERS * SAVES_PER_WRITER
    assert sorted(version for version, _ in saved) == list(range(total))
    store = artifacts_from_url(url, index_url=index_url)
    try:
        versions = await store.list_versions(APP, USER, SESSION, "shared.txt")
        assert [v.version for v in versions] == list(range(total))
        for version, body in saved:
            loaded = await store.load_artifact(APP, USER, SESSION, "shared.txt", version=version)
            assert loaded is not None and loaded.text() == body
    finally:
        await store.close()


# --- blob stores: never half-written ---------------------------------------------------------


def _files(root: Path) -> list[Path]:
    """The files under ``root`` (the blob store's bytes)."""
    return [path for path in root.rglob("*") if path.is_file()]


@pytest.mark.redis
async def test_a_save_whose_index_commit_fails_is_never_visible_and_leaves_no_bytes(
    redis_url: str, tmp_path: Path
) -> None:
    blobs = tmp_path / "blobs"
    down = BlobArtifactService(
        f"file://{blobs}", RedisArtifactIndex(f"redis://127.0.0.1:{free_port()}/0")
    )
    up = artifacts_from_url(f"file://{blobs}", index_url=redis_url)
    try:
        with pytest.raises(ArtifactBackendError, match="Redis artifact index"):
            await down.save_artifact(APP, USER, SESSION, "report.md", "half")

        assert await up.load_artifact(APP, USER, SESSION, "report.md") is None
        assert await up.list_artifact_names(APP, USER, SESSION) == []
        assert _files(blobs) == []
    finally:
        await down.close()
        await up.close()


@pytest.mark.redis
async def test_a_blob_cut_short_outside_the_store_is_reported_not_returned(
    redis_url: str, tmp_path: Path
) -> None:
    store = artifacts_from_url(f"file://{tmp_path}", index_url=redis_url)
    try:
        await store.save_artifact(APP, USER, SESSION, "report.md", "the whole report")
        (blob,) = _files(tmp_path)
        blob.write_bytes(b"the whole")

        with pytest.raises(ArtifactBackendError, match="its index says 16"):
            await store.load_artifact(APP, USER, SESSION, "report.md")
        blob.unlink()
        with pytest.raises(ArtifactBackendError, match="blob store"):
            await store.load_artifact(APP, USER, SESSION, "report.md")
    finally:
        await store.close()


@pytest.mark.redis
async def test_blob_names_never_leave_the_root_and_deleted_sessions_leave_no_files(
    redis_url: str, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    store = artifacts_from_url(f"file://{root}", index_url=redis_url)
    try:
        # IDs may be '.' or '..' (valid session IDs): the blob layout still stays inside.
        await store.save_artifact(APP, "..", "..", "reports/q1.csv", "a,b")
        await store.save_artifact(APP, USER, "s1", "x" * 500, "long name")
        files = _files(tmp_path)
        assert files and all(root in p.parents for p in files)

        await store.delete_session_artifacts(APP, "..", "..")
        await store.delete_session_artifacts(APP, USER, "s1")
        assert _files(tmp_path) == []
    finally:
        await store.close()


# --- URLs ------------------------------------------------------------------------------------


def test_urls_pick_the_store_and_bad_ones_say_what_to_write(tmp_path: Path) -> None:
    assert isinstance(artifacts_from_url("memory://"), InMemoryArtifactService)
    assert isinstance(artifacts_from_url("postgresql://u@127.0.0.1:1/db"), PostgresArtifactService)
    blob = artifacts_from_url(f"file://{tmp_path}", index_url="redis://127.0.0.1:1/0")
    assert isinstance(blob, BlobArtifactService)

    with pytest.raises(ConfigurationError, match="needs an index"):
        artifacts_from_url(f"file://{tmp_path}")
    with pytest.raises(ConfigurationError, match="cannot hold artifacts' bytes"):
        artifacts_from_url("redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigurationError, match="has no scheme"):
        artifacts_from_url("/var/lib/artifacts")
    with pytest.raises(ConfigurationError, match="redis:// or postgresql://"):
        artifacts_from_url(f"file://{tmp_path}", index_url="mysql://x")
    with pytest.raises(ConfigurationError, match="fsspec driver"):
        artifacts_from_url("nosuchproto://bucket/x", index_url="redis://127.0.0.1:1/0")
    with pytest.raises(InvalidRequestError, match="max_size"):
        artifacts_from_url("memory://", max_size=0)


@pytest.mark.postgres
async def test_postgres_store_down_is_a_backend_error_naming_it() -> None:
    store = PostgresArtifactService(
        f"postgresql://nobody@127.0.0.1:{free_port()}/none", connect_timeout=1
    )
    try:
        with pytest.raises(
            ArtifactBackendError, match=r"PostgreSQL artifact store at 127\.0\.0\.1:"
        ):
            await store.save_artifact(APP, USER, SESSION, "a.txt", "x")
    finally:
        await store.close()
