"""Artifact stores: save and load throughput, small (1 KiB) and large (10 MiB) artifacts.

Each store is measured against writing the same bytes directly, in the same run, alternating
one store call with one direct call so that drift on the shared machine hits both alike:

- a file system store (``file://``, Redis or PostgreSQL index): the same bytes written to a new
  file in the same folder with ``Path.write_bytes`` (and read back with ``read_bytes``), in a
  worker thread as the store does (async code must not block its loop);
- the PostgreSQL store: the same bytes inserted with psycopg into a plain ``bytea`` table in
  one autocommit statement (read back by its key);
- the in-memory store has no direct counterpart; its figures show the cost of the shared
  checks alone.

What the ratio prices: the checks (name, size, content type), the version allocated atomically
in the index with the fence check, the index entry (JSON in Redis, a row in PostgreSQL), and on
load the index lookup and the size check. Servers are started here on 127.0.0.1 with the helpers
of tests/services.py (PostgreSQL with fsync off, as in the tests).

    python -m bench artifacts [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg

from bench.report import (
    default_output,
    machine,
    machine_line,
    mode_note,
    publish,
    rounded,
    summarize,
)
from runner_core.artifacts import ArtifactService
from session_backends import artifacts_from_url
from tests.services import PostgresServer, RedisServer

NAME = "artifacts"
APP, USER, SESSION = "bench-app", "bench-user", "bench-session"
SMALL, LARGE = 1024, 10 * 1024 * 1024
FULL_COUNTS = {"small": 300, "large": 12}
QUICK_COUNTS = {"small": 60, "large": 4}
MAX_SIZE = 16 * 1024 * 1024

Op = Callable[[], Awaitable[Any]]


class Direct:
    """Writing and reading the same bytes without the store."""

    label = "direct"

    async def save(self, data: bytes) -> str:
        raise NotImplementedError

    async def load(self, key: str) -> bytes:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class DirectFiles(Direct):
    label = "Path.write_bytes in a thread"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    async def save(self, data: bytes) -> str:
        path = self.folder / f"{uuid.uuid4().hex}.bin"
        await asyncio.to_thread(path.write_bytes, data)
        return str(path)

    async def load(self, key: str) -> bytes:
        return await asyncio.to_thread(Path(key).read_bytes)


class DirectPostgres(Direct):
    label = "psycopg INSERT bytea"

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, dsn: str) -> DirectPostgres:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS raw_blobs (id TEXT PRIMARY KEY, data BYTEA NOT NULL)"
        )
        return cls(conn)

    async def save(self, data: bytes) -> str:
        key = uuid.uuid4().hex
        await self.conn.execute("INSERT INTO raw_blobs (id, data) VALUES (%s, %s)", (key, data))
        return key

    async def load(self, key: str) -> bytes:
        cursor = await self.conn.execute("SELECT data FROM raw_blobs WHERE id = %s", (key,))
        row = await cursor.fetchone()
        assert row is not None
        return bytes(row[0])

    async def close(self) -> None:
        await self.conn.close()


async def _timed(op: Op) -> float:
    started = time.perf_counter()
    await op()
    return time.perf_counter() - started


async def measure_store(
    store: ArtifactService, direct: Direct | None, size: int, count: int
) -> dict[str, Any]:
    """``count`` saves then ``count`` loads of ``size`` bytes, each paired with a direct one."""
    data = os.urandom(size)
    name = f"bench-{size}.bin"
    saved: list[float] = []
    raw_saved: list[float] = []
    keys: list[str] = []
    # One warm-up of each (connections, tables, folders), not counted.
    await store.save_artifact(APP, USER, SESSION, "warm-up.bin", data)
    if direct is not None:
        keys.append(await direct.save(data))
    for _ in range(count):
        saved.append(await _timed(lambda: store.save_artifact(APP, USER, SESSION, name, data)))
        if direct is not None:
            started = time.perf_counter()
            keys.append(await direct.save(data))
            raw_saved.append(time.perf_counter() - started)
    loaded: list[float] = []
    raw_loaded: list[float] = []
    for n in range(count):
        loaded.append(
            await _timed(lambda n=n: store.load_artifact(APP, USER, SESSION, name, version=n))  # type: ignore[misc]
        )
        if direct is not None:
            raw_loaded.append(await _timed(lambda n=n: direct.load(keys[n])))  # type: ignore[misc]
    out: dict[str, Any] = {
        "bytes": size,
        "count": count,
        "save_ms": _ms(saved),
        "load_ms": _ms(loaded),
    }
    if direct is not None:
        out["direct"] = direct.label
        out["direct_save_ms"] = _ms(raw_saved)
        out["direct_load_ms"] = _ms(raw_loaded)
        out["save_ratio"] = round(
            out["save_ms"]["median"] / max(out["direct_save_ms"]["median"], 1e-9), 2
        )
        out["load_ratio"] = round(
            out["load_ms"]["median"] / max(out["direct_load_ms"]["median"], 1e-9), 2
        )
    return out


def _ms(samples: list[float]) -> dict[str, Any]:
    stats = summarize([s * 1000 for s in samples])
    return {
        "median": round(stats["median"], 3),
        "p10": round(stats["p10"], 3),
        "p90": round(stats["p90"], 3),
        "samples": rounded([s * 1000 for s in samples], 3),
    }


async def measure_backend(
    label: str, store: ArtifactService, direct: Direct | None, counts: dict[str, int]
) -> dict[str, Any]:
    try:
        return {
            "small": await measure_store(store, direct, SMALL, counts["small"]),
            "large": await measure_store(store, direct, LARGE, counts["large"]),
        }
    finally:
        await store.close()
        if direct is not None:
            await direct.close()


async def measure(counts: dict[str, int]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-artifacts-") as tmp:
        root = Path(tmp)
        results["memory"] = await measure_backend(
            "memory", artifacts_from_url("memory://", max_size=MAX_SIZE), None, counts
        )
        with RedisServer() as redis_server:
            store = artifacts_from_url(
                f"file://{root}/redis-index", index_url=redis_server.url, max_size=MAX_SIZE
            )
            results["files+redis"] = await measure_backend(
                "files+redis", store, DirectFiles(root / "direct-redis"), counts
            )
        with PostgresServer() as pg_server:
            dsn = pg_server.create_database("bench_artifacts")
            store = artifacts_from_url(f"file://{root}/pg-index", index_url=dsn, max_size=MAX_SIZE)
            results["files+postgres"] = await measure_backend(
                "files+postgres", store, DirectFiles(root / "direct-pg"), counts
            )
            # A database of its own: the store's tables are the ones an index uses.
            dsn = pg_server.create_database("bench_artifacts_bytes")
            store = artifacts_from_url(dsn, max_size=MAX_SIZE)
            results["postgres"] = await measure_backend(
                "postgres", store, await DirectPostgres.connect(dsn), counts
            )
    return results


def run(quick: bool = False) -> dict[str, Any]:
    counts = QUICK_COUNTS if quick else FULL_COUNTS
    info = machine()
    results = asyncio.run(measure(counts))
    return {
        "benchmark": NAME,
        "quick": quick,
        "machine": info,
        "counts": counts,
        "results": results,
    }


def _throughput(store: str, size: int, ms: float) -> str:
    if store == "memory":
        return "— (keeps a reference)"
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024) / (ms / 1000):.0f} MiB/s"
    return f"{1000 / ms:.0f}/s"


def render(result: dict[str, Any]) -> str:
    results, counts = result["results"], result["counts"]
    lines = [
        "## Artifact stores",
        "",
        f"`python -m bench artifacts` — per store, {counts['small']} saves then loads of a "
        f"1 KiB artifact and {counts['large']} of a 10 MiB one (random bytes), each paired with "
        "the same bytes written and read directly in the same run: a new file with "
        "`Path.write_bytes` in a worker thread (as the store writes) for the file system stores, a psycopg `INSERT` into a plain `bytea` "
        "table for the PostgreSQL store. Medians (p10-p90); the ratio is store / direct.",
        "",
        "| store | size | save ms | direct save ms | save ratio | load ms | direct load ms "
        "| load ratio | save throughput |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("memory", "files+redis", "files+postgres", "postgres"):
        for kind in ("small", "large"):
            r = results[name][kind]
            size = "1 KiB" if kind == "small" else "10 MiB"
            save, load = r["save_ms"], r["load_ms"]
            raw_save = r.get("direct_save_ms", {}).get("median", "—")
            raw_load = r.get("direct_load_ms", {}).get("median", "—")
            lines.append(
                f"| {name} | {size} | {save['median']} ({save['p10']}-{save['p90']}) "
                f"| {raw_save} | {r.get('save_ratio', '—')} "
                f"| {load['median']} ({load['p10']}-{load['p90']}) | {raw_load} "
                f"| {r.get('load_ratio', '—')} | {_throughput(name, r['bytes'], save['median'])} |"
            )
    lines += [
        "",
        "For small artifacts the index round trip dominates (a Lua script in Redis, one "
        "statement in PostgreSQL, against a bare file write); for 10 MiB the bytes dominate and "
        "the ratio nears 1. Writing the direct file does not fsync, nor "
        "does the store's. The machine is shared with other work, so medians move between "
        "runs.",
        "",
        machine_line(result["machine"]) + mode_note(result),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer saves and loads")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    result = run(args.quick)
    print(render(result))
    if not args.no_write:
        publish(NAME, result, default_output(args.quick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
