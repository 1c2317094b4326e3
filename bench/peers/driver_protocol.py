"""What every driver shares: the task, the raw-client baseline and the stdin/stdout protocol.

This module runs inside each peer's venv as well as in the project's interpreter, so it needs
the standard library and ``openai`` only (both major versions 2 and 3), never the project's
packages. A driver script imports it as a sibling module.

Protocol: one JSON object per line. The orchestrator writes requests to the driver's stdin; the
driver answers each with exactly one line on its stdout (the real stdout: anything else the
frameworks print is sent to stderr).

- ``{"op": "setup", "model_url": ..., "pg_dsn": ..., ...}``
  -> ``{"ok": true, "cases": [...], "unsupported": {case: reason}}``
- ``{"op": "run", "case": "raw" | "framework" | "framework_db" | ..., "session": "s17"}``
  -> ``{"ok": true, "ms": float, "events": int}`` or ``{"ok": false, "error": "..."}``
- ``{"op": "close"}`` -> ``{"ok": true}``, then the driver exits.

``ms`` is timed in the driver around the run alone, so the pipe round trip is not in it.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from openai import AsyncOpenAI

API_KEY = "sk-bench"
MODEL = "scripted"
INSTRUCTION = "Be brief."
PROMPT = "What is 2 + 3?"
TOOL_SCHEMA: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}

#: A case's body: takes the session ID, returns how many events the run yielded.
Case = Callable[[str], Awaitable[int]] | Callable[[str], int]


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


async def raw_run(client: AsyncOpenAI) -> int:
    """The baseline: the same two streamed calls a framework makes, with the raw client.

    Returns the number of stream chunks received (both calls).
    """
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": INSTRUCTION},
        {"role": "user", "content": PROMPT},
    ]
    chunks = 0
    calls: dict[int, dict[str, str]] = {}
    stream = await client.chat.completions.create(
        model=MODEL, messages=messages, tools=[TOOL_SCHEMA],  # type: ignore[arg-type, list-item]
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    async for chunk in stream:
        chunks += 1
        for choice in chunk.choices:
            for frag in choice.delta.tool_calls or []:
                entry = calls.setdefault(frag.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] = frag.id or entry["id"]
                if frag.function is not None:
                    entry["name"] = frag.function.name or entry["name"]
                    entry["arguments"] += frag.function.arguments or ""
    call = calls[0]
    result = add(**json.loads(call["arguments"]))
    messages.append({
        "role": "assistant",
        "tool_calls": [{"id": call["id"], "type": "function",
                        "function": {"name": call["name"], "arguments": call["arguments"]}}],
    })  # fmt: skip
    messages.append({"role": "tool", "tool_call_id": call["id"], "content": str(result)})
    text: list[str] = []
    stream = await client.chat.completions.create(
        model=MODEL, messages=messages, tools=[TOOL_SCHEMA],  # type: ignore[arg-type, list-item]
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    async for chunk in stream:
        chunks += 1
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
    if "".join(text) != "The answer is 5.":
        raise RuntimeError(f"raw client got {''.join(text)!r}, not the scripted answer")
    return chunks


class Driver:
    """A framework under test. Subclasses build their objects in :meth:`setup` and return the
    cases they can run; the raw-client baseline is shared."""

    client: AsyncOpenAI

    async def setup(self, config: dict[str, Any]) -> tuple[dict[str, Case], dict[str, str]]:
        """Build the framework against ``config["model_url"]``.

        Returns the runnable cases by name, and the cases it cannot run with the reason.
        """
        raise NotImplementedError

    async def start(self, config: dict[str, Any]) -> tuple[dict[str, Case], dict[str, str]]:
        self.client = AsyncOpenAI(base_url=config["model_url"], api_key=API_KEY, max_retries=0)
        cases, unsupported = await self.setup(config)
        return {"raw": self.raw, **cases}, unsupported

    async def raw(self, session: str) -> int:
        return await raw_run(self.client)

    async def close(self) -> None:
        await self.client.close()


def _protocol_stdout() -> TextIO:
    """The real stdout for protocol lines; fd 1 and ``sys.stdout`` now go to stderr, so a
    framework's prints cannot corrupt the protocol."""
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return out


def _error(exc: BaseException) -> dict[str, Any]:
    traceback.print_exc(file=sys.stderr)
    return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}


def serve(driver: Driver) -> None:
    """Answer protocol requests from stdin until ``close`` or end of input."""
    out = _protocol_stdout()

    def reply(payload: dict[str, Any]) -> None:
        out.write(json.dumps(payload) + "\n")

    cases: dict[str, Case] = {}
    with asyncio.Runner() as loop:
        for line in sys.stdin:
            request = json.loads(line)
            op = request.get("op")
            try:
                if op == "setup":
                    cases, unsupported = loop.run(driver.start(request))
                    reply({"ok": True, "cases": sorted(cases), "unsupported": unsupported})
                elif op == "run":
                    body = cases[request["case"]]
                    started = time.perf_counter()
                    if inspect.iscoroutinefunction(body):
                        events = loop.run(body(request["session"]))
                    else:
                        events = body(request["session"])
                    ms = (time.perf_counter() - started) * 1000
                    reply({"ok": True, "ms": ms, "events": events})
                elif op == "close":
                    loop.run(driver.close())
                    reply({"ok": True})
                    return
                else:
                    reply({"ok": False, "error": f"unknown op {op!r}"})
            except Exception as exc:
                reply(_error(exc))
