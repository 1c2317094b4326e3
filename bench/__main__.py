"""One command for every benchmark, its JSON result, and the report with plots.

    python -m bench all [--quick] [--no-write]     every benchmark, then the report
    python -m bench <name> [--quick] [--no-write]  one of: runtime, peers, sessions, events,
                                                   distributed, summaries; then the report
    python -m bench report                         rebuild docs/benchmarks.md and the plots
                                                   from bench/results/*.json, measuring nothing

Results go to ``bench/results/<name>.json``; the report to ``docs/benchmarks.md`` and
``docs/benchmarks/*.png``. ``--no-write`` prints each section and writes nothing (CI's smoke
run). ``all`` runs each benchmark in a process of its own (they start servers and workers and
set Celery up, and must not inherit that from each other), goes on after one fails or is
missing, and exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
import traceback
from typing import Any

from bench.report import (
    BENCHMARKS,
    BY_NAME,
    DOC,
    ROOT,
    Benchmark,
    BenchmarkMissing,
    load_module,
    save_result,
    write_report,
)


def measure(benchmark: Benchmark, quick: bool, write: bool) -> tuple[str, float]:
    """Run one benchmark; returns its outcome (``ok``, ``skipped: ...``, ``FAILED: ...``)."""
    started = time.perf_counter()
    print(f"\n=== {benchmark.name}: {benchmark.about}{' (quick)' if quick else ''}", flush=True)
    try:
        module = load_module(benchmark)
        result: dict[str, Any] = module.run(quick)
        print(module.render(result), flush=True)
        if write:
            print(f"wrote {save_result(benchmark.name, result).relative_to(ROOT)}")
        outcome = "ok"
    except BenchmarkMissing as exc:
        outcome = f"skipped: {exc}"
    except Exception as exc:  # one broken benchmark must not cost the others their figures
        traceback.print_exc()
        outcome = f"FAILED: {type(exc).__name__}: {exc}"
    elapsed = time.perf_counter() - started
    print(f"=== {benchmark.name}: {outcome} ({elapsed:.1f} s)", flush=True)
    return outcome, elapsed


def measure_in_child(benchmark: Benchmark, quick: bool, write: bool) -> tuple[str, float]:
    """Run one benchmark in a fresh interpreter (``python -m bench <name> --no-report``)."""
    if importlib.util.find_spec(benchmark.module) is None:
        outcome = f"skipped: {benchmark.module} is not in this checkout"
        print(f"\n=== {benchmark.name}: {outcome}", flush=True)
        return outcome, 0.0
    command = [sys.executable, "-m", "bench", benchmark.name, "--no-report"]
    command += ["--quick"] * quick + ["--no-write"] * (not write)
    started = time.perf_counter()
    code = subprocess.run(command, cwd=ROOT, check=False).returncode
    elapsed = time.perf_counter() - started
    return ("ok" if code == 0 else f"FAILED: exit status {code}"), elapsed


def report() -> int:
    problems = write_report()
    for problem in problems:
        print(f"report: {problem}", file=sys.stderr)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    names = [b.name for b in BENCHMARKS]
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("target", choices=["all", "report", *names], help="what to run")
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes for all")
    parser.add_argument(
        "--no-write", action="store_true", help="print only: no JSON, no report, no plots"
    )
    parser.add_argument("--no-report", action="store_true", help="write the JSON only")
    args = parser.parse_args(argv)
    if args.target == "report":
        return report()

    write = not args.no_write
    started = time.perf_counter()
    if args.target == "all":
        outcomes = {b.name: measure_in_child(b, args.quick, write) for b in BENCHMARKS}
    else:
        benchmark = BY_NAME[args.target]
        outcomes = {benchmark.name: measure(benchmark, args.quick, write)}
    total = time.perf_counter() - started

    if args.target == "all":
        print("\nsummary:")
        for name, (outcome, elapsed) in outcomes.items():
            print(f"  {name:<12} {elapsed:7.1f} s  {outcome}")
        print(f"  {'total':<12} {total:7.1f} s")
    failed = [name for name, (outcome, _) in outcomes.items() if outcome.startswith("FAILED")]
    status = 1 if failed else 0
    if write and not args.no_report:
        status = max(status, report())
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
