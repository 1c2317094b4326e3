"""The runtime's own cost per run, in-process.

A run = two streamed model calls with one tool call in between, through ``Runner`` with the
in-memory session store. The baseline makes the same two streamed calls with the raw ``openai``
client in the same process, against the same scripted server. Runs alternate A B A B, and the
overhead is the median of the paired differences.

Two trees of agents are measured the same way, each against the raw client making the very
requests the Runner's model calls made (their JSON bodies are recorded from an untimed run and
replayed with ``chat.completions.create``):

- **a transfer**: the root agent's model calls ``transfer_to_agent``, the sub-agent answers
  (2 streamed calls); the raw client makes the two calls one after the other;
- **a parallel fan-out**: a ``ParallelAgent`` of :data:`FANOUT_BRANCHES` branches, each one
  streamed call; the raw client makes the same calls concurrently (``asyncio.gather``).

It also reports the bytes of each event type on the wire (``bench/event_sizes.py``): every
event of the measured runs, outside the timed spans, and a few untimed runs for the types those
runs do not emit. Runs get a Celery-style invocation ID (a UUID with dashes), as on a worker,
so the sizes are those of the events a worker publishes.

    python -m bench runtime [--quick] [--no-write]
    python -m bench.bench_runtime [--runs N] [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from openai import AsyncOpenAI

from bench import bench_tracing
from bench.event_sizes import EventSizes
from bench.event_sizes import render as render_event_sizes
from bench.report import (
    default_output,
    machine,
    machine_line,
    mode_note,
    publish,
    rounded,
    summarize,
)
from runner_core import (
    BaseAgent,
    LLMAgent,
    ParallelAgent,
    Runner,
    RunQueuedEvent,
    StateUpdateEvent,
    tool,
)
from runner_core.testing import ScriptedModelServer, scripted_model
from session_backends import InMemorySessionService

NAME = "runtime"
FULL_RUNS, QUICK_RUNS = 300, 100
TOOL_ARGS = {"a": 2, "b": 3}
#: Untimed runs per extra case of the bytes table; sizes differ only by their numbers.
COVER_RUNS = 3
MAIN_CASE = "the measured runs (tool call + reply)"
#: Branches of the measured parallel fan-out.
FANOUT_BRANCHES = 3


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool(requires_confirmation=True)
def refund(order_id: str, amount: float) -> str:
    """Refund an order (the user confirms first)."""
    return f"refunded {amount} on {order_id}"


def script(server: ScriptedModelServer) -> None:
    server.add_tool_calls([("call_1", "add", TOOL_ARGS)])
    server.add_text("The answer is 5.", chunks=4)


async def raw_run(client: AsyncOpenAI, tools: list[dict[str, Any]]) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 3?"},
    ]
    calls: dict[int, dict[str, Any]] = {}
    stream = await client.chat.completions.create(
        model="scripted", messages=messages, tools=tools,  # type: ignore[arg-type]
        stream=True, stream_options={"include_usage": True},
    )
    async for chunk in stream:
        for choice in chunk.choices:
            for frag in choice.delta.tool_calls or []:
                entry = calls.setdefault(frag.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] = frag.id or entry["id"]
                if frag.function is not None:
                    entry["name"] = frag.function.name or entry["name"]
                    entry["arguments"] += frag.function.arguments or ""
    call = calls[0]
    messages.append({
        "role": "assistant",
        "tool_calls": [{"id": call["id"], "type": "function",
                        "function": {"name": call["name"], "arguments": call["arguments"]}}],
    })
    messages.append({"role": "tool", "tool_call_id": call["id"], "content": "5"})
    text = []
    stream = await client.chat.completions.create(
        model="scripted", messages=messages, tools=tools,  # type: ignore[arg-type]
        stream=True, stream_options={"include_usage": True},
    )
    async for chunk in stream:
        for choice in chunk.choices:
            text.append(choice.delta.content or "")


def script_refund(server: ScriptedModelServer) -> None:
    server.add_tool_calls([("call_1", "refund", {"order_id": "A-1042", "amount": 42.0})])


def script_failure(server: ScriptedModelServer) -> None:
    server.add_error(500, "The server had an error while processing your request.")


#: The untimed runs of the bytes table: (case, its model replies, attempt).
COVER_CASES = (
    ("a tool that needs confirmation", script_refund, 1),  # run.paused
    ("the model answers HTTP 500", script_failure, 1),  # error
    ("a second attempt (`attempt=2`)", script, 2),  # run.restarted
)


async def cover_other_types(server: ScriptedModelServer, sizes: EventSizes) -> None:
    """Untimed runs (or built events) for the types the measured runs do not emit:
    ``run.paused``, ``error``, ``run.restarted``, ``run.queued`` and ``state.update``
    (``agent.transfer`` comes from the measured transfer runs)."""
    service = InMemorySessionService()
    agent = LLMAgent(
        "bench", model=scripted_model(server), instruction="Be brief.", tools=[add, refund]
    )
    async with Runner("bench", agent, session_service=service) as runner:
        for i in range(COVER_RUNS):
            for n, (case, add_replies, attempt) in enumerate(COVER_CASES):
                add_replies(server)
                stream = runner.run("user", f"cover-{n}-{i}", "What is 2 + 3?",
                                    invocation_id=str(uuid.uuid4()), attempt=attempt)  # fmt: skip
                sizes.add_run([e async for e in stream], case)
    await service.close()
    await agent.model.close()
    await cover_memory(server, sizes)

    # Imported here: nothing else of the in-process benchmark needs the workers.
    from workers.execution import AUTHOR

    for _ in range(COVER_RUNS):
        # A worker publishes run.queued before the run starts (seq 0, its own author).
        queued = RunQueuedEvent(
            invocation_id=str(uuid.uuid4()), author=AUTHOR, waiting_for=str(uuid.uuid4())
        )
        sizes.add_built(queued, "built as a worker publishes it")
        update = StateUpdateEvent(
            invocation_id=str(uuid.uuid4()), seq=5, author="bench", state_delta={"step": 2}
        )
        sizes.add_built(update, 'built, delta `{"step": 2}` (no code emits it yet)')


async def cover_memory(server: ScriptedModelServer, sizes: EventSizes) -> None:
    """Untimed runs told one experience by long-term memory, for ``memory.injected``."""
    from runner_core.memory import Experience, agent_scope
    from runner_core.memory_store import InMemoryMemoryService

    memory = InMemoryMemoryService()
    await memory.add(Experience(app_name="bench", scope=agent_scope("bench"),
                                condition="when adding numbers", rule="Use the add tool."))  # fmt: skip
    agent = LLMAgent("bench", model=scripted_model(server), instruction="Be brief.")
    async with Runner("bench", agent, memory_service=memory) as runner:
        for _ in range(COVER_RUNS):
            server.add_text("5")
            stream = runner.run("user", None, "What is 2 + 3? Add the numbers.")
            sizes.add_run([e async for e in stream], "a run told one experience from memory")
    await agent.model.close()


# --- trees of agents ----------------------------------------------------------------------


def transfer_tree(server: ScriptedModelServer) -> BaseAgent:
    """``triage`` hands the conversation to its sub-agent ``answerer``."""
    model = scripted_model(server)
    answerer = LLMAgent(
        "answerer", model=model, instruction="Be brief.", description="Answers arithmetic."
    )
    return LLMAgent("triage", model=model, instruction="Route the user.", sub_agents=[answerer])


def script_transfer(server: ScriptedModelServer) -> None:
    server.add_tool_calls([("call_t", "transfer_to_agent", {"agent_name": "answerer"})])
    server.add_text("The answer is 5.", chunks=4)


def fanout_tree(server: ScriptedModelServer) -> BaseAgent:
    """A parallel agent of :data:`FANOUT_BRANCHES` LLM agents, one model call each."""
    model = scripted_model(server)
    branches = [
        LLMAgent(f"branch{n}", model=model, instruction=f"You are branch {n}. Be brief.")
        for n in range(FANOUT_BRANCHES)
    ]
    return ParallelAgent("fanout", sub_agents=branches)


def script_fanout(server: ScriptedModelServer) -> None:
    for _ in range(FANOUT_BRANCHES):
        server.add_text("The answer is 5.", chunks=4)


async def raw_call(client: AsyncOpenAI, body: dict[str, Any]) -> None:
    """One streamed call with a request body the Runner sent, read to its end."""
    stream = await client.chat.completions.create(**body)
    async for chunk in stream:
        for choice in chunk.choices:
            _ = choice.delta.content, choice.delta.tool_calls


async def raw_in_turn(client: AsyncOpenAI, bodies: list[dict[str, Any]]) -> None:
    for body in bodies:
        await raw_call(client, body)


async def raw_at_once(client: AsyncOpenAI, bodies: list[dict[str, Any]]) -> None:
    await asyncio.gather(*(raw_call(client, body) for body in bodies))


@dataclass(frozen=True)
class TreeCase:
    """One measured tree of agents and its raw-client baseline."""

    key: str
    label: str
    build: Callable[[ScriptedModelServer], BaseAgent]
    #: Queues the model's replies for one run.
    script: Callable[[ScriptedModelServer], None]
    #: The raw client making the calls whose request bodies it is given.
    baseline: Callable[[AsyncOpenAI, list[dict[str, Any]]], Awaitable[None]]
    model_calls: int
    transfers: int


TREE_CASES = (
    TreeCase(
        "transfer", "a transfer (root model call, transfer, sub-agent answers)",
        transfer_tree, script_transfer, raw_in_turn, model_calls=2, transfers=1,
    ),
    TreeCase(
        "fanout", f"a parallel fan-out of {FANOUT_BRANCHES} branches, one call each",
        fanout_tree, script_fanout, raw_at_once, model_calls=FANOUT_BRANCHES, transfers=0,
    ),
)  # fmt: skip


async def measure_tree(
    server: ScriptedModelServer,
    client: AsyncOpenAI,
    case: TreeCase,
    runs: int,
    warmup: int,
    sizes: EventSizes,
) -> dict[str, Any]:
    """One tree case, A B A B against the raw client replaying the Runner's request bodies."""
    service = InMemorySessionService()
    tree = case.build(server)
    runner = Runner("bench", tree, session_service=service)

    async def runner_run(session_id: str) -> list[Any]:
        stream = runner.run("user", session_id, "What is 2 + 3?", invocation_id=str(uuid.uuid4()))
        return [e async for e in stream]

    def check(events: list[Any]) -> None:
        last = events[-1]
        assert last.type == "runner.completion" and last.status == "completed", last
        assert last.usage.model_calls == case.model_calls, last.usage
        assert sum(e.type == "agent.transfer" for e in events) == case.transfers

    # The bodies the raw client sends: those of an untimed run of the tree.
    seen = len(server.requests)
    case.script(server)
    events = await runner_run(f"{case.key}-bodies")
    check(events)
    bodies = server.requests[seen:]
    assert len(bodies) == case.model_calls, len(bodies)
    raw_ms: list[float] = []
    runner_ms: list[float] = []
    for i in range(warmup + runs):
        case.script(server)
        t0 = time.perf_counter()
        await case.baseline(client, bodies)
        t1 = time.perf_counter()
        case.script(server)
        t2 = time.perf_counter()
        events = await runner_run(f"{case.key}-{i}")
        t3 = time.perf_counter()
        check(events)
        if i >= warmup:
            raw_ms.append((t1 - t0) * 1000)
            runner_ms.append((t3 - t2) * 1000)
            sizes.add_run(events, case.label)
    assert server.pending == 0, "a run left scripted replies unused"
    await runner.close()
    await service.close()
    for model in {id(a.model): a.model for a in tree.walk() if a.model is not None}.values():
        await model.close()
    diffs = [r - b for r, b in zip(runner_ms, raw_ms, strict=True)]
    raw, ours = summarize(raw_ms), summarize(runner_ms)
    return {
        "label": case.label,
        "model_calls": case.model_calls,
        "events_per_run": len(events),
        "raw_ms": raw,
        "runner_ms": ours,
        "overhead_ms": summarize(diffs),
        "ratio": ours["median"] / raw["median"],
        "samples": {"raw_ms": rounded(raw_ms, 4), "runner_ms": rounded(runner_ms, 4)},
    }


async def measure(runs: int, warmup: int) -> dict[str, Any]:
    with ScriptedModelServer() as server:
        client = AsyncOpenAI(base_url=server.url, api_key="sk-bench", max_retries=0)
        service = InMemorySessionService()
        agent = LLMAgent("bench", model=scripted_model(server), instruction="Be brief.",
                         tools=[add])
        runner = Runner("bench", agent, session_service=service)
        tools = [add.openai_schema()]
        raw_ms: list[float] = []
        runner_ms: list[float] = []
        events_per_run = 0
        sizes = EventSizes()
        for i in range(warmup + runs):
            script(server)
            t0 = time.perf_counter()
            await raw_run(client, tools)
            t1 = time.perf_counter()
            script(server)
            invocation_id = str(uuid.uuid4())  # a Celery task ID, as a worker passes it
            t2 = time.perf_counter()
            stream = runner.run("user", f"s{i}", "What is 2 + 3?", invocation_id=invocation_id)
            events = [e async for e in stream]
            t3 = time.perf_counter()
            last = events[-1]
            assert last.type == "runner.completion" and last.status == "completed", last
            events_per_run = len(events)
            if i >= warmup:
                raw_ms.append((t1 - t0) * 1000)
                runner_ms.append((t3 - t2) * 1000)
                sizes.add_run(events, MAIN_CASE)
        await runner.close()
        await service.close()
        await agent.model.close()
        trees = {case.key: await measure_tree(server, client, case, runs, warmup, sizes)
                 for case in TREE_CASES}  # fmt: skip
        tracing = await bench_tracing.measure(server, runs, warmup)
        await client.close()
        await cover_other_types(server, sizes)
    diffs = [r - b for r, b in zip(runner_ms, raw_ms, strict=True)]
    return {
        "runs": runs,
        "warmup": warmup,
        "raw_ms": summarize(raw_ms),
        "runner_ms": summarize(runner_ms),
        "overhead_ms": summarize(diffs),
        "events_per_run": events_per_run,
        "event_bytes": sizes.result(),
        "trees": trees,
        "tracing": tracing,
        # Per run, in run order; runner_ms[i] - raw_ms[i] is the i-th paired difference.
        "samples": {"raw_ms": rounded(raw_ms, 4), "runner_ms": rounded(runner_ms, 4)},
    }


def run(quick: bool = False, *, runs: int | None = None) -> dict[str, Any]:
    """Measure; ``quick`` runs 100 pairs instead of 300."""
    runs = runs or (QUICK_RUNS if quick else FULL_RUNS)
    measured = asyncio.run(measure(runs, warmup=10))
    return {"benchmark": NAME, "quick": quick, "machine": machine(), **measured}


def render(result: dict[str, Any]) -> str:
    raw, run, over = result["raw_ms"], result["runner_ms"], result["overhead_ms"]
    verdict = "meets" if over["median"] < 3.0 else "misses"
    # Results written before the bytes table or the trees have none.
    trees = "\n\n" + render_trees(result) if "trees" in result else ""
    if "tracing" in result:
        trees += "\n\n" + bench_tracing.render(result)
    event_bytes = ""
    if "event_bytes" in result:
        event_bytes = "\n\n" + render_event_sizes(result["event_bytes"])
    return f"""## Runtime overhead per run (in-process)

`python -m bench runtime` — {result['runs']} interleaved runs (A B A B) of a two-call run
with one tool call, streaming on, against the scripted server on loopback. {machine_line(result['machine'])}

| | median ms | p10 | p90 | p99 |
|---|---|---|---|---|
| raw `openai` client, same two calls (baseline) | {raw['median']:.2f} | {raw['p10']:.2f} | {raw['p90']:.2f} | {raw['p99']:.2f} |
| `Runner` + `LLMAgent` + in-memory store | {run['median']:.2f} | {run['p10']:.2f} | {run['p90']:.2f} | {run['p99']:.2f} |
| **overhead (paired difference)** | **{over['median']:.2f}** | {over['p10']:.2f} | {over['p90']:.2f} | {over['p99']:.2f} |

Events per run: {result['events_per_run']}. Target: under 3 ms of overhead per run; this run
{verdict} it (median {over['median']:.2f} ms, {over['median'] / raw['median'] * 100:.0f}% of the
raw client's time).

A negative overhead is real, not noise: the baseline calls `chat.completions.create`, which
transforms every message and tool schema and builds a pydantic model per streamed chunk;
`OpenAIModel` sends the same request through the same client's `post` and reads the chunks as
plain JSON, which saves more CPU than the runner, the tool call and the session store cost.
Profile (cProfile, 300 runs): `runner_core` itself is under 1 ms of CPU per run.{trees}{event_bytes}{mode_note(result)}
"""


def render_trees(result: dict[str, Any]) -> str:
    """The section on trees of agents: a transfer and a parallel fan-out vs the raw client."""
    lines = [
        "### Trees of agents: a transfer and a parallel fan-out",
        "",
        f"The same pairing ({result['runs']} interleaved pairs, streaming on) for two trees of",
        "agents. The baseline replays, with `chat.completions.create`, the very request bodies",
        "the tree's model calls sent (recorded from an untimed run): the transfer's two calls",
        "one after the other, the fan-out's calls at once (`asyncio.gather`), as its branches",
        "make them.",
        "",
        "| case | model calls | events | raw client ms, median (p90) | Runner ms, median (p90) "
        "| overhead ms, median (p90) | per model call | Runner / raw |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case in result["trees"].values():
        raw, ours, over = case["raw_ms"], case["runner_ms"], case["overhead_ms"]
        lines.append(
            f"| {case['label']} | {case['model_calls']} | {case['events_per_run']} "
            f"| {raw['median']:.2f} ({raw['p90']:.2f}) | {ours['median']:.2f} ({ours['p90']:.2f}) "
            f"| **{over['median']:.2f}** ({over['p90']:.2f}) "
            f"| {over['median'] / case['model_calls']:.2f} | {case['ratio']:.2f}x |"
        )
    lines += [
        "",
        "Overhead is the median of the paired differences (Runner run minus the raw run just",
        'before it); "Runner / raw" is the ratio of the two medians. "Events" counts the',
        "run's events, the completion included. A negative overhead has the cause given above:",
        "each model call costs less CPU through `OpenAIModel` than through",
        "`chat.completions.create`, and over these runs that saving outweighs what the runtime",
        "spends on the transfer (its tool result, the `agent.transfer` event, the second agent's",
        "history with the first one's turns as context) or on the fan-out (a task per branch,",
        "the merged stream). So these rows say that a transfer or a fan-out through the Runner",
        "is no slower than the same calls through `chat.completions.create`; they do not",
        "isolate the runtime's own share.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=None, help=f"default {FULL_RUNS}")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS} runs")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    result = run(args.quick, runs=args.runs)
    print(render(result))
    if not args.no_write:
        publish(NAME, result, default_output(args.quick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
