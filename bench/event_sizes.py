"""Bytes per event type on the wire, from real runs through the ``Runner`` (issue 13).

The runtime benchmark (``bench/bench_runtime.py``) hands every event of its measured runs to
:class:`EventSizes`, and then the events of a few untimed runs for the types its runs do not
emit. Each type is measured in one case, the first that emitted it.

The size of an event is its wire JSON (:func:`~runner_core.events.encode_event`) in UTF-8. The
reference event, a single-agent ``message.delta`` of ``" hi"`` with a UUID invocation ID and a
3-digit ``seq``, is held against the 200-byte target.
"""

from __future__ import annotations

import statistics
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, get_args

from runner_core.events import EventBase, EventType, MessageDeltaEvent

#: The most bytes the reference ``message.delta`` may take on the wire.
REFERENCE_TARGET_BYTES = 200


def wire_bytes(event: EventBase) -> int:
    """The size of the event on the wire: its JSON in UTF-8."""
    return len(event.to_json().encode())


def reference_event() -> MessageDeltaEvent:
    """A single-agent ``message.delta`` of ``" hi"`` as a worker publishes it: a Celery task ID
    (a UUID) as invocation ID, a 3-digit ``seq``, a timestamp with microseconds."""
    return MessageDeltaEvent(
        invocation_id=str(uuid.uuid4()),
        seq=123,
        author="assistant",
        created_at=datetime(2026, 11, 30, 2, 16, 0, 123456, tzinfo=UTC),
        delta=" hi",
    )


class EventSizes:
    """Wire sizes of events by type, each type measured in one case (the first to emit it)."""

    def __init__(self) -> None:
        self.sizes: dict[str, list[int]] = {}
        self.case: dict[str, str] = {}
        self.runs: dict[str, int] = {}

    def add_run(self, events: Iterable[EventBase], case: str) -> None:
        """Record one run's events under ``case``; types another case measured are left out."""
        self.runs[case] = self.runs.get(case, 0) + 1
        for event in events:
            self._add(event, case)

    def add_built(self, event: EventBase, case: str) -> None:
        """Record an event built outside a run (there is no per-run count for it)."""
        self._add(event, case)

    def _add(self, event: EventBase, case: str) -> None:
        if self.case.setdefault(event.type, case) == case:
            self.sizes.setdefault(event.type, []).append(wire_bytes(event))

    def result(self) -> dict[str, Any]:
        """Per type, in :data:`EventType` order: the case, events per run, and min, median,
        mean and max bytes; then the reference event and its target."""
        types = []
        for kind in get_args(EventType):
            sizes = self.sizes.get(kind)
            if not sizes:
                continue
            case = self.case[kind]
            runs = self.runs.get(case, 0)
            types.append({
                "type": kind,
                "case": case,
                "per_run": len(sizes) / runs if runs else None,
                "n": len(sizes),
                "min": min(sizes),
                "median": statistics.median(sizes),
                "mean": round(statistics.fmean(sizes), 1),
                "max": max(sizes),
            })  # fmt: skip
        reference = reference_event()
        return {
            "types": types,
            "reference": {
                "bytes": wire_bytes(reference),
                "target": REFERENCE_TARGET_BYTES,
                "json": reference.to_json(),
            },
        }


# --- the report ------------------------------------------------------------------------------


def render(event_bytes: dict[str, Any]) -> str:
    """The markdown table of bytes per type and the reference event against its target."""
    reference = event_bytes["reference"]
    verdict = "meets" if reference["bytes"] <= reference["target"] else "misses"
    lines = [
        "### Bytes per event type (wire JSON)",
        "",
        "Every event the measured runs emitted, as published on Redis; the types such a run",
        "does not emit come from a few untimed runs of their own (or are built, where no run",
        "emits them). Watch these when a field joins every event (a branch, a trace ID).",
        "",
        "| type | measured in | per run | n | min | median | max |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in event_bytes["types"]:
        per_run = "—" if row["per_run"] is None else f"{row['per_run']:g}"
        lines.append(
            f"| `{row['type']}` | {row['case']} | {per_run} | {row['n']} | {row['min']} "
            f"| {row['median']:g} | {row['max']} |"
        )
    lines += [
        "",
        f"Reference event, a single-agent `message.delta` of `\" hi\"` with a UUID invocation ID "
        f"and a 3-digit `seq`: **{reference['bytes']} bytes**, target ≤ {reference['target']}: "
        f"{verdict} it.",
        "",
        "```json",
        reference["json"],
        "```",
    ]
    return "\n".join(lines)
