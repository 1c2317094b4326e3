"""``python -m bench``, run as a subprocess the way a user runs it: tracked files stay put.

Only the in-process runtime benchmark runs (at ``--quick`` sizes, a few seconds), and ``report``
redraws from a copied result; nothing builds the peers' venvs. No timing is asserted.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import pytest

from runner_core.events import EventType

ROOT = Path(__file__).resolve().parent.parent
#: The figures of record: what a bench run must not change unless asked.
RECORD_PATHS = ("docs/benchmarks.md", "docs/benchmarks", "bench/results")
QUICK_DIR = ROOT / "bench" / ".quick"


def bench(*args: str, cache: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m bench ARGS`` from the checkout, with the peers' cache in ``cache``."""
    env = {**os.environ, "AGENT_RUNNER_BENCH_CACHE": str(cache)}
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
    # Given the quick output as it is (CI's smoke run uses --no-write)
    quick_before = sorted(QUICK_DIR.rglob("*")) if QUICK_DIR.exists() else []

    # When the runtime benchmark runs with --no-write
    done = bench("runtime", "--quick", "--no-write", cache=tmp_path / "cache")

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
    assert (sorted(QUICK_DIR.rglob("*")) if QUICK_DIR.exists() else []) == quick_before


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
