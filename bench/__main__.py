"""One command for every benchmark, its JSON result, and the report with plots.

    python -m bench all [--quick] [WHERE]      every benchmark, then the report
    python -m bench <name> [--quick] [WHERE]   one of: runtime, peers, sessions, events,
                                               distributed, summaries, telemetry, memory, artifacts,
                                               gateway;
                                               then the report
    python -m bench report [--quick | --out DIR]
                                               rebuild the report and its plots from the JSON
                                               results already written, measuring nothing
    python -m bench clean [--out DIR]          remove the peers' venvs and the quick output

A full run writes the figures of record: ``bench/results/<name>.json``, ``docs/benchmarks.md``
and ``docs/benchmarks/*.png``. A ``--quick`` run writes the same three to ``bench/.quick/``
(``results/``, ``benchmarks.md``, ``benchmarks/``; git-ignored) so it never changes tracked
files. WHERE overrides both: ``--write`` (the figures of record, even when quick), ``--out DIR``
(``DIR/results/``, ``DIR/benchmarks.md``, ``DIR/benchmarks/``) or ``--no-write`` (print each
section, write nothing: CI's smoke run). Every run that writes ends by printing where.

``all`` runs each benchmark in a process of its own (they start servers and workers and set
Celery up, and must not inherit that from each other), goes on after one fails or is missing,
and exits 1 if any failed. The peers' venvs live outside the checkout (see
``bench/peers/envs.py``); the ``peers`` benchmark and ``all`` print where and how big they are.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.peers.envs import cached_venvs, describe_venvs, format_size, remove_venvs
from bench.report import (
    BENCHMARKS,
    BY_NAME,
    QUICK_DIR,
    RECORD,
    ROOT,
    Benchmark,
    BenchmarkMissing,
    Output,
    default_output,
    load_module,
    report,
    save_result,
    shown,
)


def measure(benchmark: Benchmark, quick: bool, output: Output | None) -> tuple[str, float]:
    """Run one benchmark, saving its result to ``output`` (``None``: print only); returns its
    outcome (``ok``, ``skipped: ...``, ``FAILED: ...``) and how long it took."""
    started = time.perf_counter()
    print(f"\n=== {benchmark.name}: {benchmark.about}{' (quick)' if quick else ''}", flush=True)
    try:
        module = load_module(benchmark)
        result: dict[str, Any] = module.run(quick)
        print(module.render(result), flush=True)
        if output is not None:
            print(f"wrote {shown(save_result(benchmark.name, result, output))}")
        outcome = "ok"
    except BenchmarkMissing as exc:
        outcome = f"skipped: {exc}"
    except Exception as exc:  # one broken benchmark must not cost the others their figures
        traceback.print_exc()
        outcome = f"FAILED: {type(exc).__name__}: {exc}"
    elapsed = time.perf_counter() - started
    print(f"=== {benchmark.name}: {outcome} ({elapsed:.1f} s)", flush=True)
    return outcome, elapsed


def _where_flags(output: Output | None) -> list[str]:
    """The command-line flags that select ``output`` (for a child run of ``all``)."""
    if output is None:
        return ["--no-write"]
    if output.of_record:
        return ["--write"]
    return ["--out", str(output.doc.parent)]


def measure_in_child(benchmark: Benchmark, quick: bool, output: Output | None) -> tuple[str, float]:
    """Run one benchmark in a fresh interpreter (``python -m bench <name> --no-report``)."""
    if importlib.util.find_spec(benchmark.module) is None:
        outcome = f"skipped: {benchmark.module} is not in this checkout"
        print(f"\n=== {benchmark.name}: {outcome}", flush=True)
        return outcome, 0.0
    command = [sys.executable, "-m", "bench", benchmark.name, "--no-report"]
    command += ["--quick"] * quick + _where_flags(output)
    started = time.perf_counter()
    code = subprocess.run(command, cwd=ROOT, check=False).returncode
    elapsed = time.perf_counter() - started
    return ("ok" if code == 0 else f"FAILED: exit status {code}"), elapsed


def clean(output: Output) -> int:
    """Remove the peers' venvs and what a quick run wrote to ``output``; never the figures of
    record, and only files the benchmarks write (a ``--out`` folder may hold other things)."""
    freed = remove_venvs()
    written = [
        *(output.results / f"{b.name}.json" for b in BENCHMARKS),
        output.doc,
        *(output.plots.glob("*.png") if output.plots.is_dir() else ()),
    ]
    removed = [path for path in written if path.is_file()]
    for path in removed:
        freed += path.stat().st_size
        path.unlink()
    for folder in (output.results, output.plots, output.doc.parent):
        try:
            folder.rmdir()
        except OSError:  # missing, or holds something that is not ours
            pass
    print(f"removed {len(removed)} files from {shown(output.doc.parent)}/")
    print(f"freed {format_size(freed)}")
    return 0


def _output(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Output | None:
    """Where this run writes, from the flags; ``None`` for ``--no-write``."""
    if args.target == "report" and args.no_write:
        parser.error("report only writes; drop --no-write")
    if args.target == "clean" and (args.write or args.no_write):
        parser.error("clean removes the peers' venvs and the quick output (bench/.quick/ or "
                     "--out DIR); it never touches the figures of record")  # fmt: skip
    if args.no_write:
        return None
    if args.out is not None:
        output = Output.under(args.out)
        if args.target == "clean" and {output.results, output.doc, output.plots} & {
            RECORD.results, RECORD.doc, RECORD.plots
        }:
            parser.error(f"--out {args.out} holds figures of record; clean never removes those")
        return output
    if args.write:
        return RECORD
    return default_output(args.quick or args.target == "clean")


def main(argv: list[str] | None = None) -> int:
    names = [b.name for b in BENCHMARKS]
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog=f"Quick runs write to {shown(QUICK_DIR)}/ unless given --write, --out or --no-write.",
    )
    parser.add_argument("target", choices=["all", "report", "clean", *names], help="what to run")
    parser.add_argument(
        "--quick", action="store_true",
        help=f"small sizes: a few minutes for all; writes to {shown(QUICK_DIR)}/",
    )  # fmt: skip
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--write", action="store_true",
        help="write the figures of record (bench/results, docs/benchmarks.md), even with --quick",
    )  # fmt: skip
    where.add_argument(
        "--out", type=Path, metavar="DIR",
        help="write DIR/results/*.json, DIR/benchmarks.md and DIR/benchmarks/*.png instead",
    )  # fmt: skip
    where.add_argument(
        "--no-write", action="store_true", help="print only: no JSON, no report, no plots"
    )
    parser.add_argument("--no-report", action="store_true", help="write the JSON only")
    args = parser.parse_args(argv)
    output = _output(args, parser)
    if args.target == "clean":
        assert output is not None
        return clean(output)
    if args.target == "report":
        assert output is not None
        return report(output)

    started = time.perf_counter()
    if args.target == "all":
        outcomes = {b.name: measure_in_child(b, args.quick, output) for b in BENCHMARKS}
    else:
        benchmark = BY_NAME[args.target]
        outcomes = {benchmark.name: measure(benchmark, args.quick, output)}
    total = time.perf_counter() - started

    if args.target == "all":
        print("\nsummary:")
        for name, (outcome, elapsed) in outcomes.items():
            print(f"  {name:<12} {elapsed:7.1f} s  {outcome}")
        print(f"  {'total':<12} {total:7.1f} s")
        if cached_venvs():
            print(describe_venvs())
    failed = [name for name, (outcome, _) in outcomes.items() if outcome.startswith("FAILED")]
    status = 1 if failed else 0
    if output is not None and not args.no_report:  # children of ``all`` run with --no-report
        status = max(status, report(output))
        print(f"output: {output.where}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
