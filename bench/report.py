"""Shared by the benchmarks: machine facts, statistics, result files and the report.

Every benchmark module has the same shape: ``run(quick) -> dict`` measures and returns a
JSON-able result (its ``machine``, its sizes, its summaries and the raw per-run samples), and
``render(result) -> str`` turns a result into a markdown section. ``save_result`` writes
``<name>.json`` into an :class:`Output`'s results; ``write_report`` rebuilds its whole page and
plots from those files, so a report never needs a re-measurement. The figures of record
(:data:`RECORD`) are ``bench/results/`` and ``docs/benchmarks.md`` with ``docs/benchmarks/``;
quick runs write to :data:`QUICK_DIR` (git-ignored) unless asked otherwise.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import re
import statistics
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Output:
    """Where a run writes: its JSON samples, the report page and the page's plots."""

    #: ``<name>.json`` per benchmark, every per-run sample kept.
    results: Path
    #: The markdown report, drawn from ``results`` alone.
    doc: Path
    #: The report's PNG plots.
    plots: Path

    @classmethod
    def under(cls, directory: Path) -> Output:
        """``directory/results/``, ``directory/benchmarks.md`` and ``directory/benchmarks/``."""
        directory = directory.expanduser().resolve()
        return cls(directory / "results", directory / "benchmarks.md", directory / "benchmarks")

    @property
    def of_record(self) -> bool:
        """True for the tracked figures of record (``bench/results``, ``docs/benchmarks.md``)."""
        return self == RECORD

    @property
    def where(self) -> str:
        """The output in a few words, for messages."""
        if self.of_record:
            return f"{shown(self.results)}/ and {shown(self.doc)} (the figures of record)"
        return (
            f"{shown(self.doc.parent)}/ (results/*.json, benchmarks.md, benchmarks/*.png; "
            "not the figures of record)"
        )


#: Full runs write here: the figures of record, tracked in git.
RECORD = Output(ROOT / "bench" / "results", ROOT / "docs" / "benchmarks.md", ROOT / "docs" / "benchmarks")
#: ``--quick`` runs write here unless given ``--write`` or ``--out``; git-ignored.
#: ``AGENT_RUNNER_BENCH_QUICK_DIR`` moves it (the CLI tests give a run a directory of its own, so
#: tests running at the same time never see each other's files).
QUICK_DIR = Path(os.environ.get("AGENT_RUNNER_BENCH_QUICK_DIR") or ROOT / "bench" / ".quick")


def default_output(quick: bool) -> Output:
    """Where a run writes unless told otherwise: quick runs never touch tracked files."""
    return Output.under(QUICK_DIR) if quick else RECORD


def shown(path: Path) -> str:
    """``path`` relative to the checkout when it is inside it, else absolute."""
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: ``python -m bench <name>`` runs ``bench.<module>``."""

    name: str
    module: str
    about: str


#: In report order. ``peers`` is written separately and may be missing from a checkout.
BENCHMARKS = (
    Benchmark("runtime", "bench.bench_runtime", "the runtime's own cost per run, in-process"),
    Benchmark("peers", "bench.bench_peers", "the same run through other agent runtimes"),
    Benchmark("sessions", "bench.bench_sessions", "session store append and read costs"),
    Benchmark("events", "bench.bench_events", "event latency, client vs raw pub/sub"),
    Benchmark("distributed", "bench.bench_distributed", "runs through Celery workers"),
    Benchmark("summaries", "bench.bench_summaries", "summaries through the shard queues"),
    Benchmark("telemetry", "bench.bench_telemetry", "a run with OpenTelemetry on vs off"),
    Benchmark("memory", "bench.bench_memory", "memory injection per run, per store, vs none"),
    Benchmark("artifacts", "bench.bench_artifacts", "artifact save and load vs direct writes"),
    Benchmark("gateway", "bench.bench_gateway", "1,000 SSE clients via the gateway vs direct"),
)
BY_NAME = {b.name: b for b in BENCHMARKS}


class BenchmarkMissing(RuntimeError):
    """The benchmark's module is not in this checkout (``bench_peers`` is written separately)."""


def load_module(benchmark: Benchmark) -> ModuleType:
    """Import a benchmark module; a module that is absent raises :class:`BenchmarkMissing`."""
    try:
        return importlib.import_module(benchmark.module)
    except ModuleNotFoundError as exc:
        if exc.name == benchmark.module:
            raise BenchmarkMissing(
                f"{benchmark.module} is not in this checkout; skipped {benchmark.name!r}"
            ) from exc
        raise


# --- machine and statistics ------------------------------------------------------------------


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
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def machine_line(info: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    load = info.get("load_average")
    load_text = f", load average {' / '.join(f'{x:.1f}' for x in load)} at the start" if load else ""
    return (
        f"Machine: {info['cores']} cores, {info['memory_gib']} GiB, Python {info['python']}, "
        f"{info['date']}{load_text}; {versions}."
    )


def machine_short(info: dict[str, Any]) -> str:
    """The machine in one line for a figure's footer."""
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    return (
        f"{info['cores']} cores, {info['memory_gib']} GiB, Python {info['python']}, "
        f"{info['date']}\n{versions}"
    )


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """Median, p10/p90/p99, mean and count of a sample (in the samples' unit)."""
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


def rounded(samples: Sequence[float], digits: int) -> list[float]:
    """Samples as stored in the JSON: enough digits for the plots, no more."""
    return [round(x, digits) for x in samples]


def mode_note(result: dict[str, Any]) -> str:
    """A sentence for sections measured with ``--quick``; empty for a full run."""
    if not result.get("quick"):
        return ""
    return (
        "\n\n*Quick run (`--quick`, smaller sizes): a smoke check of the machinery, noisier "
        "than a full run; `python -m bench all` measures the figures of record.*"
    )


# --- result files ----------------------------------------------------------------------------

_NUMBER_LIST = re.compile(r"\[\s*(-?[\d.eE+-]+(?:\s*,\s*-?[\d.eE+-]+)*)\s*\]")


def save_result(name: str, result: dict[str, Any], output: Output) -> Path:
    """Write ``<name>.json`` into ``output.results``; sample lists stay on one line each."""
    output.results.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2)
    text = _NUMBER_LIST.sub(lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text)
    path = output.results / f"{name}.json"
    path.write_text(text + "\n", encoding="utf-8")
    return path


def load_result(name: str, output: Output) -> dict[str, Any] | None:
    path = output.results / f"{name}.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


# --- the report ------------------------------------------------------------------------------

DOC_HEADER = """# Benchmarks

Every figure compares agent-runner with a baseline measured in the same run on the same
machine, because these machines are noisy and absolute times do not carry over. Tests never
assert on timing; these numbers live here.

```sh
pip install -e '.[dev,bench]'
python -m bench all --quick   # every benchmark at small sizes, a few minutes; writes bench/.quick/
python -m bench all          # the figures of record: bench/results/ and this page
python -m bench runtime      # one benchmark: runtime, peers, sessions, events, distributed, summaries
python -m bench report       # rebuild this page and its plots from bench/results/*.json
python -m bench clean        # remove the peers' venvs and bench/.quick/
```

This page is generated from `bench/results/<name>.json` (which keep every per-run sample) by
`python -m bench report`; edit `bench/` rather than this file. Plots are in `docs/benchmarks/`.

**Where runs write.** A full run (`all` or one benchmark) writes the figures of record: its
samples to `bench/results/`, this page and its plots to `docs/`. A `--quick` run writes the same
three to `bench/.quick/` instead (`results/`, `benchmarks.md`, `benchmarks/`; git-ignored), so it
never changes tracked files; `--write` sends it to the figures of record, `--out DIR` to `DIR`,
and `--no-write` only prints. The path is printed at the end of every run.

**Peer environments.** The `peers` benchmark installs Google ADK, the OpenAI Agents SDK and
LangGraph in a venv each (their `openai` requirements conflict), about 500 MB in all, built on
first use and reused after. They live in `~/.cache/agent-runner-bench/venvs/`
(`$XDG_CACHE_HOME/agent-runner-bench/venvs/` when that is set;
`{variable}=DIR` puts them in `DIR/venvs/`); the benchmark prints the path and
size whenever it builds or uses them. `python -m bench clean` removes them (and
`bench/.quick/`); so does `rm -rf ~/.cache/agent-runner-bench`.
"""


def _header(output: Output) -> str:
    from bench.peers.envs import CACHE_VARIABLE

    title, rest = DOC_HEADER.format(variable=CACHE_VARIABLE).rstrip().split("\n\n", 1)
    if output.of_record:
        return f"{title}\n\n{rest}"
    note = (
        f"> This copy is in `{shown(output.doc.parent)}/`, drawn from "
        f"`{shown(output.results)}/*.json` by a `--quick` or `--out` run: not the figures of "
        "record, which are in `docs/benchmarks.md`."
    )
    return f"{title}\n\n{note}\n\n{rest}"


def write_report(output: Output) -> list[str]:
    """Rebuild ``output.doc`` and its plots from the JSON results in ``output.results``.

    A benchmark without a result file gets a line saying how to measure it; a section whose
    rendering fails is reported (and returned) instead of stopping the others.

    Returns:
        The problems found, one line each (empty when every section rendered).
    """
    from bench import plots

    problems: list[str] = []
    results = {b.name: load_result(b.name, output) for b in BENCHMARKS}
    can_plot = plots.available()
    if can_plot:
        output.plots.mkdir(parents=True, exist_ok=True)
    parts = [_header(output)]
    if not can_plot:
        print(
            "plots skipped: matplotlib is not installed (pip install -e '.[bench]')",
            file=sys.stderr,
        )
        parts.append(
            "> Plots were skipped: matplotlib is not installed. Install it with "
            "`pip install -e '.[bench]'` and run `python -m bench report`."
        )
    contents = [f"- [{b.name}](#{b.name}): {b.about}" for b in BENCHMARKS if results[b.name]]
    if contents:
        parts.append("\n".join(contents))
    for benchmark in BENCHMARKS:
        result = results[benchmark.name]
        if result is None:
            parts.append(
                f'<a id="{benchmark.name}"></a>\n\n## {benchmark.name}\n\nNot measured yet: '
                f"`python -m bench {benchmark.name}`."
            )
            continue
        section = _render_section(benchmark, result, output, problems).rstrip()
        if can_plot:
            section += _plot_section(benchmark, result, results, output, problems)
        parts.append(f'<a id="{benchmark.name}"></a>\n\n{section.strip()}')
    output.doc.parent.mkdir(parents=True, exist_ok=True)
    output.doc.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return problems


def _render_section(
    benchmark: Benchmark, result: dict[str, Any], output: Output, problems: list[str]
) -> str:
    try:
        render: Callable[[dict[str, Any]], str] = load_module(benchmark).render
        return render(result)
    except Exception as exc:  # one broken section must not cost the others
        problems.append(f"{benchmark.name}: rendering failed: {exc!r}")
        traceback.print_exc()
        path = shown(output.results / f"{benchmark.name}.json")
        return (
            f"## {benchmark.name}\n\nThe result in `{path}` could not be rendered "
            f"({type(exc).__name__}: {exc}); rerun `python -m bench {benchmark.name}`."
        )


def _plot_section(
    benchmark: Benchmark,
    result: dict[str, Any],
    results: dict[str, dict[str, Any] | None],
    output: Output,
    problems: list[str],
) -> str:
    from bench import plots

    try:
        figures = plots.draw(benchmark.name, result, results, output.plots)
    except Exception as exc:
        problems.append(f"{benchmark.name}: plotting failed: {exc!r}")
        traceback.print_exc()
        return f"\n\n(Plot failed: {type(exc).__name__}: {exc}.)"
    rel = output.plots.relative_to(output.doc.parent).as_posix()
    return "".join(f"\n\n![{alt}]({rel}/{path.name})" for path, alt in figures)


def report(output: Output) -> int:
    """Rebuild ``output``'s page and plots, printing what it wrote; returns an exit status."""
    problems = write_report(output)
    for problem in problems:
        print(f"report: {problem}", file=sys.stderr)
    print(f"wrote {shown(output.doc)}")
    return 1 if problems else 0


def publish(name: str, result: dict[str, Any], output: Output) -> None:
    """Save one benchmark's result and rebuild ``output``'s report from all its results."""
    print(f"wrote {shown(save_result(name, result, output))}")
    report(output)
    print(f"output: {output.where}")
