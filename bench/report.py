"""Shared by the benchmarks: machine facts, statistics, and writing results.

Each benchmark writes ``bench/results/<name>.json`` and replaces its own section of
``docs/benchmarks.md``, delimited by ``<!-- bench:<name> -->`` ... ``<!-- /bench:<name> -->``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
DOC_HEADER = """# Benchmarks

Every figure compares agent-runner with a baseline measured in the same run on the same
machine, because these machines are noisy and absolute times do not carry over. Regenerate a
section with the command named in it. Tests never assert on timing; these numbers live here.
"""


def machine() -> dict[str, Any]:
    mem_gib = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            kib = int(fh.readline().split()[1])
            mem_gib = round(kib / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    versions = {}
    for dist in ("openai", "celery", "kombu", "redis", "psycopg", "pydantic"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "missing"
    return {
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def machine_line(info: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    return (
        f"Machine: {info['cores']} cores, {info['memory_gib']} GiB, Python {info['python']}, "
        f"{info['date']}; {versions}."
    )


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """Median, p10/p90/p99, and count of a sample (in the samples' unit)."""
    ordered = sorted(samples)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    return {
        "n": float(len(ordered)),
        "median": statistics.median(ordered),
        "p10": pct(10),
        "p90": pct(90),
        "p99": pct(99),
        "mean": statistics.fmean(ordered),
    }


def write_results(name: str, data: dict[str, Any], markdown: str) -> None:
    """Save JSON results and replace this benchmark's section of docs/benchmarks.md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    section = f"{begin}\n{markdown.strip()}\n{end}"
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else DOC_HEADER
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + section + tail
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text, encoding="utf-8")
