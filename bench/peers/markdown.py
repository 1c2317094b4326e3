"""The markdown section of the peer comparison, rendered from its JSON result alone."""

from __future__ import annotations

from typing import Any

from bench.report import machine_line, mode_note

__all__ = ["CASES", "OURS", "STORE_CASES", "render"]

OURS = "agent_runner"
CASES = ("raw", "framework", "framework_db", "framework_mysql", "distributed")
#: The database-store cases, with the result key of their extra cost per run.
STORE_CASES = {"framework_db": "db_cost_ms", "framework_mysql": "mysql_cost_ms"}

CASE_LABELS = {
    "raw": "raw `openai` client (baseline, all pairs)",
    "framework": "in-memory",
    "framework_db": "PostgreSQL",
    "framework_mysql": "MySQL (MariaDB)",
    "distributed": "distributed",
}


def _ms(stats: dict[str, float]) -> str:
    return f"{stats['median']:.2f} ({stats['p10']:.2f}-{stats['p90']:.2f})"


def _run_rows(frameworks: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Table rows of the measured cases, and a line per case that was not measured."""
    rows, missing = [], []
    for entry in frameworks.values():
        for case in CASES:
            result = entry["cases"].get(case)
            if result is None:
                continue
            label = f"{entry['title']}, {CASE_LABELS[case]}"
            if result["status"] != "measured":
                missing.append(f"- {label}: {result['status']}")
                continue
            overhead = result.get("overhead_ms")
            over = (
                f"**{overhead['median']:.2f}** | {overhead['p10']:.2f} | {overhead['p90']:.2f}"
                if overhead
                else "- | | "
            )
            events = result["events_per_run"]
            low, high = result["events_range"]
            shown = f"{events:g}" if low == high else f"{events:g} ({low}-{high})"
            rows.append(f"| {label} | {_ms(result['ms'])} | {over} | {shown} | {result['n']} |")
    return rows, missing


def _ci(cost: dict[str, float]) -> str:
    if "ci95_low" not in cost:  # results of record from before the interval was kept
        return "-"
    return f"{cost['ci95_low']:.2f} to {cost['ci95_high']:.2f}"


def _db_rows(frameworks: dict[str, Any]) -> list[str]:
    rows = []
    for entry in frameworks.values():
        for case, key in STORE_CASES.items():
            store = entry["configurations"].get(case)
            if store is None:
                continue
            cost = entry.get(key)
            if cost is not None:
                rows.append(
                    f"| {entry['title']} | {store} | **{cost['median']:.2f}** | {_ci(cost)} "
                    f"| {cost['p10']:.2f} | {cost['p90']:.2f} | {cost['n']:.0f} |"
                )
            else:
                status = entry["cases"].get(case, {}).get("status", entry["status"])
                rows.append(f"| {entry['title']} | {store} | {status} | | | | |")
    return rows


def _store_verdict(frameworks: dict[str, Any]) -> str:
    """Issue 21's target: our PostgreSQL store's extra cost at most half of LangGraph's."""
    ours = frameworks.get(OURS, {}).get("db_cost_ms")
    theirs = frameworks.get("langgraph", {}).get("db_cost_ms")
    if ours is None or theirs is None:
        return (
            "Target (the PostgreSQL store's extra cost at most half of LangGraph's "
            "`AsyncPostgresSaver`): not evaluated, a side is missing."
        )
    verdict = "meets" if ours["median"] <= theirs["median"] / 2 else "misses"
    return (
        "Target: agent-runner's PostgreSQL store costs at most half of what LangGraph's "
        f"`AsyncPostgresSaver` costs per run. This run {verdict} it: {ours['median']:.2f} ms "
        f"(95% interval {_ci(ours)}) against {theirs['median']:.2f} ms ({_ci(theirs)})."
    )


def _verdict(frameworks: dict[str, Any]) -> str:
    def overhead(name: str) -> float | None:
        stats = frameworks.get(name, {}).get("cases", {}).get("framework", {}).get("overhead_ms")
        return None if stats is None else float(stats["median"])

    ours = overhead(OURS)
    peers = {name: o for name in frameworks if name != OURS and (o := overhead(name)) is not None}
    if ours is None or not peers:
        return "Target (our in-process overhead at most half the best peer's): not evaluated, a side is missing."
    best = min(peers, key=lambda name: peers[name])
    ratio = ours / peers[best] if peers[best] > 0 else float("inf")
    verdict = "meets" if ratio <= 0.5 else "misses"
    return (
        f"Target: agent-runner's in-process overhead at most half the best peer's. This run "
        f"{verdict} it: {ours:.2f} ms against {frameworks[best]['title']}'s {peers[best]:.2f} ms "
        f"({ratio:.2f}x)."
    )


def render(result: dict[str, Any]) -> str:
    frameworks = result["peers"]
    versions = "; ".join(
        f"{entry['title']}: " + ", ".join(f"{k} {v}" for k, v in entry["versions"].items())
        for entry in frameworks.values()
        if entry["versions"]
    )
    configurations = "\n".join(
        f"- **{entry['title']}**: "
        + "; ".join(f"{CASE_LABELS[c]}: {text}" for c, text in entry["configurations"].items())
        + f". Events: {entry['events_are']}."
        for entry in frameworks.values()
    )
    rows, missing = _run_rows(frameworks)
    run_rows = "\n".join(rows)
    not_measured = "\n".join(missing) or "- (every case was measured)"
    db_rows = "\n".join(_db_rows(frameworks))
    return f"""## Against the peers: Google ADK, OpenAI Agents SDK, LangGraph (`python -m bench peers`)

{result["rounds"]} rounds after {result["warmup_rounds"]} warm-up rounds; each round runs every
(framework, case) once, in a new random order. A run is two streamed model calls (a tool call
`add(a=2, b=3)`, then "The answer is 5." in 4 chunks, usage included) against the same scripted
server on loopback (TCP_NODELAY on). Every framework runs in its own process (the peers in
their own venvs) next to a raw `openai` client making the same two calls; **overhead** is a
framework run's time minus that of the raw-client run made right before or after it in the same
process (same `openai` version, same machine load). Times in ms, median (p10-p90). {machine_line(result["machine"])}

| framework, store | run ms | overhead ms (median) | p10 | p90 | events/run | n |
|---|---|---|---|---|---|---|
{run_rows}

{_verdict(frameworks)}

Not measured, and why:

{not_measured}

Cost of the database store per run: overhead with the database store minus overhead with the
in-memory one, in the same round, paired by round (one PostgreSQL server, fsync off, a database
per framework; for agent-runner's MySQL store one MariaDB 10.11 server flushing its log once a
second). The 95% interval is that of the median of the paired differences (order statistics):

| framework | database store | extra ms per run (median) | 95% interval | p10 | p90 | n |
|---|---|---|---|---|---|---|
{db_rows}

{_store_verdict(frameworks)}

What each row runs:

{configurations}

Events are counted as each framework yields them; their granularity differs, so compare time
per run, not per event. The raw baseline counts stream chunks. Versions: {versions}.{mode_note(result)}
"""
