"""Plots for docs/benchmarks.md, drawn from the JSON results (matplotlib, Agg backend).

``draw(name, result, results, directory)`` writes the PNG files of one benchmark and returns
``(path, alt text)`` pairs for the report. Every figure carries, in its footer, the machine
(cores, memory, Python, date), the library versions and whether it was a quick run, and every
series states its count, median and p10/p90 in its label. A result without the samples a plot
needs (one saved before samples were kept) gets no plot rather than a wrong one.

matplotlib is optional (the ``bench`` extra): :func:`available` says whether it is installed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from bench.report import machine_short, summarize

Figure = tuple[Path, str]
Results = dict[str, dict[str, Any] | None]

OURS, BASELINE, ACCENT = "#1f77b4", "#7f7f7f", "#d62728"


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def draw(name: str, result: dict[str, Any], results: Results, directory: Path) -> list[Figure]:
    """Write the plots of benchmark ``name`` into ``directory``; return (path, alt) pairs."""
    import matplotlib

    matplotlib.use("Agg")
    figures = []
    for drawer in DRAWERS.get(name, ()):
        drawn = drawer(result, results, directory)
        if drawn is not None:
            figures.append(drawn)
    return figures


# --- shared helpers --------------------------------------------------------------------------


def _stats_label(
    label: str, samples: Sequence[float], unit: str, digits: int = 2, *, p99: bool = False,
    sep: str = ": ",
) -> str:
    """``label: median M unit (p10 a, p90 b[, p99 c]), n=N``; ``sep="\\n"`` for tick labels."""
    s = summarize(samples)
    tail = f", p99 {s['p99']:.{digits}f}" if p99 else ""
    return (
        f"{label}{sep}median {s['median']:.{digits}f} {unit} "
        f"(p10 {s['p10']:.{digits}f}, p90 {s['p90']:.{digits}f}{tail}), n={int(s['n'])}"
    )


def _plain_log_x(ax: Any) -> None:
    """Log-scale x ticks as plain numbers (200, 500, 1000) instead of powers of ten."""
    import math

    from matplotlib.ticker import FuncFormatter, LogLocator

    low, high = ax.get_xlim()
    narrow = math.log10(high / low) < 1.2
    subs = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0) if narrow else (1.0, 2.0, 5.0)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: ""))


def _figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (10, 4.8)) -> Any:
    import matplotlib.pyplot as plt

    return plt.subplots(rows, cols, figsize=size, layout="constrained")


def _save(fig: Any, result: dict[str, Any], directory: Path, filename: str, note: str) -> Path:
    import matplotlib.pyplot as plt

    quick = "quick run (--quick); " if result.get("quick") else ""
    footer = f"{quick}{note}\n{machine_short(result['machine'])}"
    height = fig.get_size_inches()[1]
    reserved = (0.12 * (footer.count("\n") + 1) + 0.06) / height  # 7 pt lines, in inches
    fig.get_layout_engine().set(rect=(0, reserved, 1, 1 - reserved))
    fig.text(0.005, 0.005, footer, fontsize=7, color="0.35", va="bottom", ha="left")
    path = directory / filename
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _percentile_lines(ax: Any, samples: Sequence[float], color: str, vertical: bool = True) -> None:
    s = summarize(samples)
    line = ax.axvline if vertical else ax.axhline
    line(s["median"], color=color, linewidth=1.6)
    line(s["p10"], color=color, linewidth=0.9, linestyle="--")
    line(s["p90"], color=color, linewidth=0.9, linestyle="--")


def _box(
    ax: Any, data: list[Sequence[float]], labels: list[str], colors: list[str],
    fliers: bool = True,
) -> None:
    parts = ax.boxplot(
        data, vert=False, whis=(10, 90), showfliers=fliers, patch_artist=True,
        flierprops={"markersize": 2, "alpha": 0.4}, medianprops={"color": "black"},
    )  # fmt: skip
    for patch, color in zip(parts["boxes"], colors, strict=True):
        patch.set_facecolor(color)
        patch.set_alpha(0.55)
    ax.set_yticks(range(1, len(labels) + 1), labels)


# --- runtime ---------------------------------------------------------------------------------


def runtime_overhead(result: dict[str, Any], results: Results, directory: Path) -> Figure | None:
    samples = result.get("samples")
    if not samples:
        return None
    raw, ours = samples["raw_ms"], samples["runner_ms"]
    overhead = [r - b for r, b in zip(ours, raw, strict=True)]
    fig, (left, right) = _figure(2, 1, (10, 7.5))
    _box(
        left, [raw, ours],
        [_stats_label("raw openai client", raw, "ms", sep="\n"),
         _stats_label("Runner + LLMAgent", ours, "ms", sep="\n")],
        [BASELINE, OURS],
    )  # fmt: skip
    left.set_xlabel("ms per run (two streamed model calls + one tool call)")
    left.set_title("Time per run: box p25-p75, whiskers p10-p90", fontsize=10)
    left.yaxis.set_tick_params(labelsize=8)
    right.hist(overhead, bins=40, color=OURS, alpha=0.7)
    _percentile_lines(right, overhead, "black")
    right.axvline(3.0, color=ACCENT, linestyle=":", label="target 3 ms")
    right.set_xlabel("overhead per run, ms (paired: Runner run - raw run just before it)")
    right.set_ylabel("runs")
    right.set_title(_stats_label("paired overhead", overhead, "ms", p99=True), fontsize=10)
    right.legend(loc="upper right", fontsize=8)
    fig.suptitle("Runtime overhead per run, in-process, vs the raw openai client")
    path = _save(
        fig, result, directory, "runtime_overhead.png",
        f"{result['runs']} interleaved run pairs; lines: median (solid), p10/p90 (dashed)",
    )  # fmt: skip
    return path, "Runtime overhead per run: distribution of Runner vs raw client, and paired overhead"


# --- peers -----------------------------------------------------------------------------------


CASE_LABELS = {"framework": "in-memory", "framework_db": "PostgreSQL", "distributed": "distributed"}


class PeerSeries(NamedTuple):
    label: str
    case: str
    overhead_ms: list[float]
    ours: bool


def peer_series(result: dict[str, Any]) -> list[PeerSeries]:
    """Overhead samples in ms per runtime and case, from ``peers.json``.

    ``peers.json`` (``bench.bench_peers``) holds ``peers[name]["cases"][case]
    ["overhead_samples_ms"]``: per round, the case's time minus the same runtime's raw-client
    baseline of that round.
    """
    series = []
    for name, entry in result.get("peers", {}).items():
        for case, case_result in entry.get("cases", {}).items():
            samples = case_result.get("overhead_samples_ms")
            if samples:
                label = f"{entry.get('title', name)}, {CASE_LABELS.get(case, case)}"
                series.append(
                    PeerSeries(label, case, [float(x) for x in samples], name == "agent_runner")
                )
    return series


def peers_overhead(result: dict[str, Any], results: Results, directory: Path) -> Figure | None:
    series = peer_series(result)
    if not series:
        return None
    # Grouped by case (in-memory first, at the top), fastest first within a case.
    order = list(CASE_LABELS)
    series.sort(
        key=lambda s: (
            order.index(s.case) if s.case in order else len(order),
            summarize(s.overhead_ms)["median"],
        ),
        reverse=True,  # boxes are drawn bottom-up
    )
    fig, ax = _figure(1, 1, (10, 2.2 + 0.6 * len(series)))
    _box(
        ax, [s.overhead_ms for s in series],
        [_stats_label(s.label, s.overhead_ms, "ms", sep="\n") for s in series],
        [OURS if s.ours else BASELINE for s in series],
        fliers=False,  # a few runs of ±300 ms (GC, scheduling) would squash every box
    )  # fmt: skip
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_xlabel("overhead per run over the raw openai client, ms (same task, same server)")
    ax.yaxis.set_tick_params(labelsize=8)
    ax.set_title("Runtime overhead per run, by runtime (box p25-p75, whiskers p10-p90)")
    versions = "\n".join(
        f"{entry.get('title', name)} {', '.join(f'{k} {v}' for k, v in entry.get('versions', {}).items())}"
        for name, entry in result.get("peers", {}).items()
        if name != "agent_runner" and entry.get("versions")
    )
    path = _save(
        fig, result, directory, "peers_overhead.png",
        f"{result.get('rounds', '?')} rounds, each runtime paired with its own raw-client run of "
        f"the round; box p25-p75, whiskers p10-p90, runs beyond them not drawn\n{versions}",
    )  # fmt: skip
    return path, "Overhead per run of each agent runtime over the raw client"


# --- sessions --------------------------------------------------------------------------------


def sessions_costs(result: dict[str, Any], results: Results, directory: Path) -> Figure | None:
    stores = result.get("results", {})
    if not all("samples" in stores.get(n, {}) for n in ("memory", "redis", "postgres")):
        return None
    fig, (left, right) = _figure(2, 1, (10, 9.5))
    for ax, key, raw_key, unit, title in (
        (left, "append_us", "raw_append_us", "µs", "one append"),
        (right, "read_ms", "raw_read_ms", "ms", f"read a {stores['memory']['events_read']}-event session"),
    ):  # fmt: skip
        data, labels, colors = [], [], []
        for name in ("memory", "redis", "postgres", "mysql"):
            if name not in stores:  # results from before the MySQL store
                continue
            samples = stores[name]["samples"]
            data.append(samples[key])
            labels.append(_stats_label(name, samples[key], unit, 1, sep="\n"))
            colors.append(OURS)
            if raw_key in samples:
                raw_label = "raw client" + (", undecoded" if key == "read_ms" else "")
                data.append(samples[raw_key])
                labels.append(_stats_label(f"{name} {raw_label}", samples[raw_key], unit, 1, sep="\n"))
                colors.append(BASELINE)
        _box(ax, data[::-1], labels[::-1], colors[::-1])
        ax.set_xscale("log")
        _plain_log_x(ax)
        ax.set_xlabel(f"{unit}, log scale")
        ax.set_title(f"Session store: {title} (store vs raw client)", fontsize=10)
        ax.yaxis.set_tick_params(labelsize=7)
    path = _save(
        fig, result, directory, "sessions_costs.png",
        f"{result['appends']} appends and {result.get('reads', '?')} reads per store; "
        "box p25-p75, whiskers p10-p90; PostgreSQL with fsync off, MariaDB flushing once a second",
    )  # fmt: skip
    return path, "Session store append and read costs, memory/Redis/PostgreSQL/MySQL vs raw clients"


# --- events ----------------------------------------------------------------------------------


def events_latency(result: dict[str, Any], results: Results, directory: Path) -> Figure | None:
    per_round = result.get("samples_us")
    if not per_round:
        return None
    import numpy as np

    fig, ax = _figure(1, 1, (10, 5))
    for mode, label, color in (("raw", "raw pub/sub", BASELINE), ("client", "client (stream)", OURS)):
        samples = np.sort([x for r in per_round[mode] for x in r])
        fraction = np.arange(1, len(samples) + 1) / len(samples)
        ax.plot(samples, fraction, color=color, label=_stats_label(label, samples, "µs", 0, p99=True))
        for p, style in ((0.5, "-"), (0.99, ":")):
            value = samples[min(len(samples) - 1, int(p * (len(samples) - 1)))]
            ax.axvline(value, color=color, linestyle=style, linewidth=0.8)
    ax.set_xscale("log")
    _plain_log_x(ax)
    ax.set_xlabel("latency from publish to subscriber, µs (log scale)")
    ax.set_ylabel("fraction of events")
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(
        f"Event latency CDF, {result['rounds']} rounds x {result['events_per_round']} events at "
        f"{result['rate_per_s']:g}/s per path; p99 ratio client/raw {result['p99_ratio']:.2f}x",
        fontsize=10,
    )
    path = _save(fig, result, directory, "events_latency.png", "vertical lines: p50 (solid), p99 (dotted)")
    return path, "Event latency CDF, client stream vs raw pub/sub, log scale"


# --- distributed -----------------------------------------------------------------------------


def distributed_throughput(result: dict[str, Any], results: Results, directory: Path) -> Figure | None:
    table = result.get("sweep_table")
    completion = result.get("samples", {}).get("concurrent_completion_s")
    if not table:
        return None
    scale = result.get("scale_out")
    if scale:
        fig, (left, right, cpu_ax) = _figure(3, 1, (10, 13))
        _distributed_cpu(cpu_ax, scale)
    else:
        fig, (left, right) = _figure(2, 1, (10, 9))
    levels = [row["in_flight"] for row in table]
    for path, label, color in (("runs", "agent-runner runs", OURS), ("noop", "bare Celery no-op", BASELINE)):
        medians = [row[f"{path}_per_s"] for row in table]
        low = [m - row[f"{path}_per_s_min"] for m, row in zip(medians, table, strict=True)]
        high = [row[f"{path}_per_s_max"] - m for m, row in zip(medians, table, strict=True)]
        left.errorbar(levels, medians, yerr=[low, high], marker="o", capsize=3, color=color, label=label)
        for x, y in zip(levels, medians, strict=True):
            left.annotate(f"{y:.0f}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for row in table:
        left.annotate(f"{row['ratio']:.2f}x", (row["in_flight"], 0), textcoords="offset points",
                      xytext=(0, 4), ha="center", fontsize=7, color=OURS)  # fmt: skip
    left.set_xscale("log", base=2)
    left.set_xticks(levels, [str(x) for x in levels])
    left.set_ylim(bottom=0)
    left.set_xlabel("tasks in flight (closed loop)")
    left.set_ylabel("tasks completed per second")
    left.set_title("Throughput vs concurrency, zero-latency model (ratio at the bottom)", fontsize=10)
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    if completion:
        right.hist(completion, bins=30, color=OURS, alpha=0.7)
        _percentile_lines(right, completion, "black")
        right.axvline(result["model_latency_s"], color=ACCENT, linestyle=":", label="model latency")
        right.set_xlabel("seconds from submission to the run's completion")
        right.set_ylabel("runs")
        right.legend(fontsize=8)
        right.set_title(
            _stats_label(
                f"{result['concurrent_runs']} runs at once ({result['concurrent_completed']} "
                f"completed), {result['model_latency_s']:g} s model", completion, "s",
            ),
            fontsize=9,
        )
    else:
        right.set_axis_off()
    sizes = result.get("sizes", {})
    path = _save(
        fig, result, directory, "distributed_throughput.png",
        f"top: median of {sizes.get('rounds', '?')} round(s) of max({sizes.get('sweep_min', '?')}, "
        f"4 x in flight) tasks per point, bars min-max; workers -P threads "
        f"-c {max(levels)};\nmiddle: one worker -c 250, lines median (solid), p10/p90 (dashed)"
        + ("; bottom: CPU per task from /proc, workers -c 8 each" if scale else ""),
    )  # fmt: skip
    return path, (
        "Distributed runs: throughput vs runs in flight against bare Celery; concurrent "
        "completion times" + ("; CPU per task by component, 1 and 2 worker processes" if scale else "")
    )


def _distributed_cpu(ax: Any, scale: list[dict[str, Any]]) -> None:
    """Stacked bars: CPU ms per task of each component, per path and number of worker processes."""
    from bench.bench_distributed import COMPONENTS, PATH_LABELS, PATHS

    labels, stacks = [], []
    for path in PATHS:
        for point in scale:
            if path not in point["cpu_ms_per_task"]:
                continue  # a record from before this path was measured
            labels.append(f"{PATH_LABELS[path]}\n{point['processes']} worker process(es)")
            stacks.append([point["cpu_ms_per_task"][path][c] for c in COMPONENTS])
    positions = list(range(len(labels)))
    left = [0.0] * len(labels)
    colors = (OURS, ACCENT, BASELINE, "#2ca02c")
    for index, component in enumerate(COMPONENTS):
        widths = [stack[index] for stack in stacks]
        ax.barh(positions, widths, left=left, color=colors[index % len(colors)], label=component)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    for y, total in zip(positions, left, strict=True):
        ax.annotate(f"{total:.1f} ms", (total, y), textcoords="offset points", xytext=(4, -3),
                    fontsize=7)  # fmt: skip
    ax.set_yticks(positions, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("CPU ms per task (utime + stime), by component")
    ax.set_title("CPU per task: worker(s), redis-server, model server, producer", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3, axis="x")


# --- summaries -------------------------------------------------------------------------------


def summaries_latency(result: dict[str, Any], results: Results, directory: Path) -> Figure | None:
    inline = result.get("inline", {}).get("summary_seconds")
    jobs = result.get("distributed", {}).get("job_seconds_by_status")
    if not inline or not jobs:
        return None
    fig, ax = _figure(1, 1, (10, 2.6 + 0.8 * len(jobs)))
    inline_ms = [x * 1000 for x in inline]
    data = [inline_ms]
    labels = [_stats_label("inline summary (baseline)", inline_ms, "ms", 1, sep="\n")]
    colors = [BASELINE]
    for status, samples in sorted(jobs.items()):
        job_ms = [x * 1000 for x in samples]
        data.append(job_ms)
        labels.append(_stats_label(f"queue job ending {status}", job_ms, "ms", 1, sep="\n"))
        colors.append(OURS)
    _box(ax, data, labels, colors)
    ax.set_xscale("log")
    _plain_log_x(ax)
    ax.set_xlabel("ms per inline summary / per queue job (log scale)")
    ax.yaxis.set_tick_params(labelsize=8)
    dist, base = result["distributed"], result["inline"]
    ax.set_title(
        f"Summaries: {base['per_second']:.1f}/s inline vs {dist['per_second']:.1f}/s through "
        f"{result['shards']} shard queues ({dist['per_second'] / base['per_second']:.2f}x)",
        fontsize=10,
    )
    path = _save(
        fig, result, directory, "summaries.png",
        f"{result['sessions']} sessions x {result['rounds']} rounds, model {result['latency_s']} s; "
        "box p25-p75, whiskers p10-p90",
    )  # fmt: skip
    return path, "Summary time per job through the queue vs inline"


DRAWERS: dict[str, tuple[Callable[[dict[str, Any], Results, Path], Figure | None], ...]] = {
    "runtime": (runtime_overhead,),
    "peers": (peers_overhead,),
    "sessions": (sessions_costs,),
    "events": (events_latency,),
    "distributed": (distributed_throughput,),
    "summaries": (summaries_latency,),
}
