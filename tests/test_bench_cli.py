"""``python -m bench``, run as a subprocess the way a user runs it: tracked files stay put.

Only the in-process runtime benchmark runs (at ``--quick`` sizes, a few seconds), and ``report``
redraws from a copied result; nothing builds the peers' venvs. No timing is asserted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest

from runner_core.events import EventType

ROOT = Path(__file__).resolve().parent.parent
#: The figures of record: what a bench run must not change unless asked.
RECORD_PATHS = ("docs/benchmarks.md", "docs/benchmarks", "bench/results")
QUICK_DIR = ROOT / "bench" / ".quick"

#: A hang guard, not a time limit: a bench run as a subprocess takes a few times
#: longer while the other xdist workers load the cores.
pytestmark = pytest.mark.timeout(600)


def bench(
    *args: str, cache: Path, timeout: float = 540, quick_dir: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m bench ARGS`` from the checkout, with the peers' cache in ``cache`` (and the
    quick output in ``quick_dir`` when given)."""
    env = {**os.environ, "AGENT_RUNNER_BENCH_CACHE": str(cache)}
    if quick_dir is not None:
        env["AGENT_RUNNER_BENCH_QUICK_DIR"] = str(quick_dir)
    paths = [str(ROOT), os.environ.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def record_state() -> tuple[str, dict[str, str]]:
    """``git status`` of the figures of record, and a digest of every file in them."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all", "--", *RECORD_PATHS],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    digests = {}
    for name in RECORD_PATHS:
        path = ROOT / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            digests[file.relative_to(ROOT).as_posix()] = hashlib.sha256(
                file.read_bytes()
            ).hexdigest()
    return status, digests


def bytes_table(text: str) -> dict[str, list[str]]:
    """The rows of the "Bytes per event type" table in ``text``, by event type."""
    _, found, rest = text.partition("### Bytes per event type")
    assert found, "no bytes-per-event-type table"
    table = rest[rest.index("\n| type |") :].split("\n\n", 1)[0]
    rows = {}
    for line in table.strip().splitlines()[2:]:  # past the header and the |---| line
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1:]
    return rows


@pytest.fixture
def record_untouched() -> Iterator[None]:
    """Fails the test if it changed, added or removed anything among the figures of record."""
    before = record_state()
    yield
    assert record_state() == before, "a bench run changed the figures of record"


@pytest.mark.usefixtures("record_untouched")
def test_quick_run_writes_to_the_ignored_quick_dir(tmp_path: Path) -> None:
    # Given the figures of record as they are
    # When a user runs one benchmark quickly, asking for nothing else
    done = bench("runtime", "--quick", cache=tmp_path / "cache")

    # Then its result, page and plot land in bench/.quick/, which git ignores, and it says so
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "wrote bench/.quick/results/runtime.json" in done.stdout
    assert "output: bench/.quick/" in done.stdout.splitlines()[-1]
    written = [QUICK_DIR / "results" / "runtime.json", QUICK_DIR / "benchmarks.md"]
    assert all(path.is_file() for path in written)
    page = (QUICK_DIR / "benchmarks.md").read_text()
    assert "not the figures of record" in page
    # ... and the page has the bytes of every event type, from the result file
    assert set(bytes_table(page)) == set(get_args(EventType))
    ignored = subprocess.run(
        ["git", "check-ignore", *(str(path) for path in written)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    ).stdout.splitlines()  # fmt: skip
    assert ignored == [str(path) for path in written], "bench/.quick/ must be git-ignored"
    # ... and nothing went near the peers' cache
    assert not (tmp_path / "cache").exists()


@pytest.mark.usefixtures("record_untouched")
def test_no_write_prints_and_writes_nothing(tmp_path: Path) -> None:
    # Given a quick output directory of its own (CI's smoke run uses --no-write)
    quick_dir = tmp_path / "quick"

    # When the runtime benchmark runs with --no-write
    done = bench("runtime", "--quick", "--no-write", cache=tmp_path / "cache", quick_dir=quick_dir)

    # Then it prints its section and writes no file anywhere
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "## Runtime overhead" in done.stdout
    # ... with a row of wire bytes (case, per run, n, min, median, max) for every event type
    table = bytes_table(done.stdout)
    assert set(table) == set(get_args(EventType))
    for row in table.values():
        assert len(row) == 6 and all(cell.isdigit() for cell in (row[2], row[3], row[5]))
    # ... with a row for a transfer and one for a parallel fan-out, each against the raw client
    trees = done.stdout.partition("### Trees of agents")[2].split("\n\n###", 1)[0]
    rows = [line for line in trees.splitlines() if line.startswith("| a ")]
    assert [row.split(" | ")[0] for row in rows] == [
        "| a transfer (root model call, transfer, sub-agent answers)",
        "| a parallel fan-out of 3 branches, one call each",
    ]
    assert [row.split(" | ")[1] for row in rows] == ["2", "3"]  # model calls per run
    for row in rows:
        assert re.search(r"\| \*\*-?\d+\.\d+\*\* \(-?\d+\.\d+\) \|", row), row  # overhead
        assert re.search(r"\| \d+\.\d+x \|$", row), row  # Runner / raw
    # ... and the transfer's bytes come from the measured transfer runs
    assert table["agent.transfer"][0].startswith("a transfer")
    # ... and the reference delta held against its target
    assert re.search(r"Reference event.*\*\*\d+ bytes\*\*, target ≤ 200: (meets|misses) it",
                     done.stdout)  # fmt: skip
    assert "wrote " not in done.stdout
    assert not quick_dir.exists()
    # ... which is where that run would have written without --no-write
    where = subprocess.run(
        [sys.executable, "-c", "from bench.report import QUICK_DIR; print(QUICK_DIR)"],
        cwd=ROOT, env={**os.environ, "AGENT_RUNNER_BENCH_QUICK_DIR": str(quick_dir)},
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert where == str(quick_dir)


@pytest.mark.usefixtures("record_untouched")
def test_report_with_out_redraws_there_and_says_where_the_peer_venvs_live(
    tmp_path: Path,
) -> None:
    # Given a results folder outside the checkout holding one result of record
    out = tmp_path / "out"
    (out / "results").mkdir(parents=True)
    shutil.copy(ROOT / "bench" / "results" / "runtime.json", out / "results")

    # When the report is redrawn into it
    done = bench("report", "--out", str(out), cache=tmp_path / "cache")

    # Then the page is there, drawn from that result, and names itself a copy
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"wrote {out / 'benchmarks.md'}" in done.stdout
    page = (out / "benchmarks.md").read_text()
    assert "## Runtime overhead per run" in page
    assert "Not measured yet: `python -m bench peers`" in page
    assert f"This copy is in `{out}/`" in page
    assert "![" not in page or (out / "benchmarks" / "runtime_overhead.png").is_file()
    # ... and it says where the peers' venvs live and how to remove them
    assert "~/.cache/agent-runner-bench/venvs/" in page
    assert "AGENT_RUNNER_BENCH_CACHE=DIR" in page
    assert "`python -m bench clean` removes them" in page
    assert "rm -rf ~/.cache/agent-runner-bench" in page


@pytest.mark.usefixtures("record_untouched")
def test_clean_removes_peer_venvs_and_quick_output_and_nothing_else(tmp_path: Path) -> None:
    # Given a cache with a peer venv and a folder that is not one
    cache = tmp_path / "cache"
    venv = cache / "venvs" / "adk-0123456789ab"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (venv / "bin" / "python").symlink_to(sys.executable)
    (cache / "venvs" / "not-a-venv").mkdir()
    # ... and an output folder with a bench run's files next to a file of the user's
    out = tmp_path / "out"
    (out / "results").mkdir(parents=True)
    (out / "benchmarks").mkdir()
    (out / "results" / "runtime.json").write_text("{}\n")
    (out / "benchmarks.md").write_text("# Benchmarks\n")
    (out / "benchmarks" / "runtime_overhead.png").write_bytes(b"png")
    (out / "notes.txt").write_text("mine\n")

    # When the user cleans up
    done = bench("clean", "--out", str(out), cache=cache)

    # Then the venv and the bench files are gone, with what was removed printed
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"removed {venv}" in done.stdout
    assert not venv.exists()
    assert not (out / "results").exists() and not (out / "benchmarks").exists()
    assert not (out / "benchmarks.md").exists()
    # ... and what is not the bench's (or what the symlink pointed at) is left alone
    assert (cache / "venvs" / "not-a-venv").is_dir()
    assert (out / "notes.txt").read_text() == "mine\n"
    assert Path(sys.executable).exists()


@pytest.mark.usefixtures("record_untouched")
@pytest.mark.parametrize(
    "args", [("clean", "--out", "bench"), ("clean", "--out", "docs"), ("clean", "--write")]
)
def test_clean_refuses_the_figures_of_record(tmp_path: Path, args: tuple[str, ...]) -> None:
    # When clean is pointed at the figures of record
    done = bench(*args, cache=tmp_path / "cache")

    # Then it refuses with a usage error that says why, and removes nothing
    assert done.returncode == 2
    assert "figures of record" in done.stderr


def _with_scale_out_and_memory(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with the scale-out and memory parts a ``bench distributed`` run writes, in its
    shape, made up here so the rendering can be checked without measuring for minutes."""
    cpu = {"worker": 8.0, "redis-server": 2.0, "model server": 1.5, "producer": 1.0}

    def point(processes: int, runs: float) -> dict[str, Any]:
        return {
            "processes": processes,
            "rates": {
                "runs": [runs], "model_call": [200.0], "async_model_call": [160.0],
                "noop": [400.0],
            },
            "per_s": {"runs": runs, "model_call": 200.0, "async_model_call": 160.0, "noop": 400.0},
            "cpu_ms_per_task": {
                path: dict(cpu) for path in ("runs", "model_call", "async_model_call", "noop")
            },
        }

    def held(idle: int, peak: int, outcomes: dict[str, int]) -> dict[str, Any]:
        return {
            "tasks": 1000, "submitted_s": 5.0, "seconds": 60.0, "max_in_flight": 1000,
            "max_in_flight_at_s": 30.0, "outcomes": outcomes, "errors": {},
            "rss_idle_kib": idle, "rss_peak_kib": peak, "rss_after_kib": peak, "hwm_kib": peak,
            "per_task_kib": round((peak - idle) / 1000, 1),
        }  # fmt: skip

    runs = held(100_000, 300_000, {"completed": 1000})
    runs["held"] = {"at_s": 40.0, "model_calls_held": 1000, "in_flight": 1000, "rss_kib": 290_000}
    return {
        **result,
        "async_model_call_tasks_per_s": 160.0,
        "scale_out": [point(1, 120.0), point(2, 150.0)],
        "memory": {
            "concurrency": 1000, "sleep_s": 30.0,
            "runs": runs, "sleep": {**held(100_000, 220_000, {"SUCCESS": 1000}), "held": None},
        },
    }  # fmt: skip


def _distributed_page(result: dict[str, Any], out: Path, cache: Path) -> str:
    (out / "results").mkdir(parents=True)
    (out / "results" / "distributed.json").write_text(json.dumps(result))
    done = bench("report", "--out", str(out), cache=cache)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    page = (out / "benchmarks.md").read_text()
    return page.partition("## Distributed runs")[2].partition('<a id="summaries">')[0]


@pytest.mark.usefixtures("record_untouched")
def test_distributed_section_says_what_the_targets_leave() -> None:
    from bench.bench_distributed import _reach_text

    base: dict[str, Any] = {"model_call_tasks_per_s": 100.0}
    # Given a bare AsyncOpenAI path below the throughput target's level, and raw-client 1 s
    # tasks already past the concurrency target
    text = _reach_text(
        {
            **base,
            "async_model_call_tasks_per_s": 79.0,
            "concurrent_floors_s": {"sleep_s": 2.0, "model_call_s": 4.0},
        }
    )
    # Then the section says no runtime on that path could meet either
    assert "asks 80.0 runs/s" in text and "reached 79.0/s (0.790x)" in text
    assert "even a runtime that did nothing around the call would miss it" in text
    assert "took 2.00x, more than the target allows a run" in text

    # Given bare paths within the targets, it says how much they leave for agent-runner
    text = _reach_text(
        {
            **base,
            "async_model_call_tasks_per_s": 100.0,
            "concurrent_floors_s": {"sleep_s": 2.0, "model_call_s": 2.4},
        }
    )
    assert "leaves 20% of that path's time per task" in text
    assert "took 1.20x, which leaves 0.30x for agent-runner's own work" in text

    # A result from before the context paths were measured gets no paragraph
    assert _reach_text({"runs_per_s": 1.0}) == ""


def test_distributed_section_has_the_floors_with_targets_scale_out_and_memory(
    tmp_path: Path,
) -> None:
    # Given the distributed result of record, with a scale-out and a memory part
    record = json.loads((ROOT / "bench" / "results" / "distributed.json").read_text())
    result = _with_scale_out_and_memory(record)

    # When the report is drawn from it
    section = _distributed_page(result, tmp_path / "new", tmp_path / "cache")

    # Then runs/s is held against the raw-client floor (>= 0.8x) and the 200 concurrent runs
    # against bare sleeping tasks (<= 1.5x), each saying whether it met the target
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    ratio = result["runs_per_s"] / result["model_call_tasks_per_s"]
    met = "met" if ratio >= 0.8 else "missed"
    assert any(
        "raw `openai` client" in row and f"| {ratio:.2f}x | >= 0.8x: **{met}** |" in row
        for row in rows
    ), rows
    sleep_ratio = result["concurrent_completion_s"] / result["concurrent_floors_s"]["sleep_s"]
    met = "met" if sleep_ratio <= 1.5 else "missed"
    assert any(
        "sleeping 1 s" in row and f"| {sleep_ratio:.2f}x | <= 1.5x: **{met}** |" in row
        for row in rows
    ), rows
    # ... the AsyncOpenAI row, the no-op row and the raw-client 1 s row are context, without
    # targets
    context = [row for row in rows if row.endswith("| (no target) |")]
    assert len(context) == 3
    async_ratio = result["runs_per_s"] / 160.0
    assert "`AsyncOpenAI` on one asyncio loop thread: 160.0/s" in context[0]
    assert f"| {async_ratio:.2f}x |" in context[0]
    assert "no-op" in context[1] and "raw client" in context[2]
    # ... the scale-out table has 1 and 2 worker processes, 2 processes against 1, and
    # against both the raw-client floor and the AsyncOpenAI path
    assert "| 2 | 150.0 | 1.25x | 200.0 | 0.75x | 160.0 | 0.94x | 400.0 |" in section
    # ... with the CPU of every component per task, and their total
    header = next(row for row in rows if row.startswith("| path | worker processes |"))
    assert header.split(" | ")[2:6] == ["worker", "redis-server", "model server", "producer"]
    assert "| agent-runner run | 2 | 8.00 | 2.00 | 1.50 | 1.00 | **12.50** |" in section
    # ... and the memory per run in flight against bare sleeping tasks: (peak - idle) / tasks
    assert "1000 (1000 model calls held at once) | 1000 completed | 98 | 293 | 293 | **200** |" in (
        section
    )
    assert "| 1000 | 1000 | 1000 SUCCESS | 98 | 215 | 215 | **120** |" in section
    assert "1.7x the memory of a bare sleeping task" in section

    # When the result has no scale-out or memory part (a run from before they were measured)
    old = {
        k: v
        for k, v in result.items()
        if k not in ("scale_out", "memory", "async_model_call_tasks_per_s")
    }
    section = _distributed_page(old, tmp_path / "old", tmp_path / "cache")

    # Then the section still renders, with its headline rows and without those tables
    assert ">= 0.8x" in section and "<= 1.5x" in section
    assert "### Scale-out" not in section and "### Memory per run in flight" not in section
