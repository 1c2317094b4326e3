"""Every ```python block of README.md and docs/*.md runs as written.

Each block runs as its own ``python`` process, the way a reader runs it after copying it into a
file, in an empty directory, with the environment a deployment would give it:

- ``OPENAI_BASE_URL`` at a :class:`ScriptedModelServer` and no ``OPENAI_API_KEY`` (a local
  server that needs no key), so nothing reaches a real LLM;
- ``AGENT_RUNNER_BROKER_URL`` / ``_REDIS_URL`` / ``_SESSION_URL`` at the suite's real
  redis-server (a database of its own, so the worker below outlives the per-test flushes);
- one real ``celery worker -Q runs`` with the same environment, for the blocks that submit runs.

A block that is not meant to run on its own is marked in the markdown on the line right before
its fence with ``<!-- example: no-run <why> -->``; it is still compiled. Any other block that
fails to run fails its test, named ``<file>:<line of the fence>``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from runner_core.testing import ScriptedModelServer
from tests.celery_workers import ROOT, CeleryWorker
from tests.services import RedisServer

#: The Redis database of this module (DB 0 is flushed by other tests' fixtures, DB 1 holds results).
EXAMPLES_DB = 4
#: Only keeps a hung example from hanging the suite; nothing asserts on time.
EXAMPLE_TIMEOUT_S = 120
#: What the scripted model answers when a test scripts nothing more specific.
DEFAULT_ANSWER = "12 * 7 = 84."

_NO_RUN = re.compile(r"^<!--\s*example:\s*no-run\s+(?P<reason>.+?)\s*-->$")


@dataclass(frozen=True)
class Example:
    """One ```python block: where it is, its code, and why it does not run (if marked so)."""

    path: Path
    line: int  # of the opening fence, 1-based
    code: str
    no_run: str | None = None

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def extract_examples(path: Path) -> list[Example]:
    """The ```python blocks of a markdown file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    examples: list[Example] = []
    index = 0
    while index < len(lines):
        fence = lines[index].strip()
        if fence != "```python":
            index += 1
            continue
        indent = lines[index][: len(lines[index]) - len(lines[index].lstrip())]
        end = next((i for i in range(index + 1, len(lines)) if lines[i].strip() == "```"), None)
        if end is None:
            raise AssertionError(f"{path}:{index + 1}: a ```python block is never closed.")
        body = [line.removeprefix(indent) for line in lines[index + 1 : end]]
        before = next((lines[i].strip() for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        marker = _NO_RUN.match(before)
        examples.append(
            Example(
                path=path,
                line=index + 1,
                code="\n".join(body) + "\n",
                no_run=marker["reason"] if marker else None,
            )
        )
        index = end + 1
    return examples


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = [example for doc in DOCS for example in extract_examples(doc)]


def readme_in_process_example() -> Example:
    """The README's "Using the runtime in-process" block."""
    for example in EXAMPLES:
        if example.path.name == "README.md" and "async with Runner(" in example.code:
            return example
    raise AssertionError("README.md has no in-process example (a block with `async with Runner(`).")


# -- services --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as server:
        yield server


@pytest.fixture(scope="module")
def examples_env(redis_server: RedisServer, model_server: ScriptedModelServer) -> dict[str, str]:
    """The environment of every example and of the worker: this suite's services only."""
    url = redis_server.url_for_db(EXAMPLES_DB)
    results_url = redis_server.url_for_db(EXAMPLES_DB + 1)
    for db_url in (url, results_url):
        client = redis.Redis.from_url(db_url)
        try:
            client.flushdb()
        finally:
            client.close()
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("OPENAI_", "AGENT_RUNNER_", "PYTEST_"))
    }
    env.update(
        OPENAI_BASE_URL=model_server.url,  # and no OPENAI_API_KEY: a server that needs none
        AGENT_RUNNER_BROKER_URL=url,
        AGENT_RUNNER_REDIS_URL=url,
        AGENT_RUNNER_SESSION_URL=url,
        # A result backend, as batch callers configure one: the `.get()` examples need it.
        AGENT_RUNNER_RESULT_BACKEND=results_url,
        AGENT_RUNNER_SOFT_SHUTDOWN_S="0",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    return env


@pytest.fixture(scope="module")
def run_worker(examples_env: dict[str, str]) -> Iterator[CeleryWorker]:
    worker = CeleryWorker(examples_env, concurrency=4)
    try:
        yield worker.start().wait_ready()
    finally:
        worker.close()


@pytest.fixture
def model(model_server: ScriptedModelServer) -> ScriptedModelServer:
    """The scripted model, reset for this test, answering DEFAULT_ANSWER unless scripted."""
    model_server.reset()
    model_server.set_default(DEFAULT_ANSWER)
    return model_server


def run_example(
    example: Example, env: dict[str, str], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """Run the block as ``python example.py`` in an empty directory."""
    script = tmp_path / "example.py"
    script.write_text(example.code, encoding="utf-8")
    try:
        return subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=EXAMPLE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        output = [
            part.decode(errors="replace") if isinstance(part, bytes) else part or ""
            for part in (exc.stdout, exc.stderr)
        ]
        raise AssertionError(
            f"{example.id} did not finish within {EXAMPLE_TIMEOUT_S} s.\n"
            f"stdout:\n{output[0]}\nstderr:\n{output[1]}"
        ) from exc


def explain(example: Example, result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"{example.id} exited {result.returncode}\n--- code ---\n{example.code}"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr[-6000:]}"
    )


# -- tests -----------------------------------------------------------------------------------


def test_blocks_are_found_with_their_line_and_no_run_marker(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# Title\n"
        "```python\n"
        "print('runs')\n"
        "```\n"
        "<!-- example: no-run needs a GPU -->\n"
        "\n"
        "```python\n"
        "import torch\n"
        "```\n"
        "- in a list:\n"
        "  ```python\n"
        "  if True:\n"
        "      pass\n"
        "  ```\n"
        "```sh\n"
        "echo not python\n"
        "```\n",
        encoding="utf-8",
    )

    examples = extract_examples(doc)

    assert [(e.line, e.code, e.no_run) for e in examples] == [
        (2, "print('runs')\n", None),
        (7, "import torch\n", "needs a GPU"),
        (11, "if True:\n    pass\n", None),
    ]


def test_the_docs_have_python_examples() -> None:
    documented = {example.path.relative_to(ROOT).as_posix() for example in EXAMPLES}

    assert {
        "README.md",
        "docs/agents.md",
        "docs/events.md",
        "docs/extending.md",
        "docs/sessions.md",
        "docs/summaries.md",
    } <= documented


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda example: example.id)
def test_the_example_runs_as_written(
    example: Example,
    examples_env: dict[str, str],
    run_worker: CeleryWorker,
    model: ScriptedModelServer,
    tmp_path: Path,
) -> None:
    # Every block is valid Python, marked or not
    compile(example.code, example.id, "exec")
    if example.no_run is not None:
        pytest.skip(f"marked no-run in the markdown: {example.no_run}")

    result = run_example(example, examples_env, tmp_path)

    assert result.returncode == 0, explain(example, result)
    # An example that prints a failed run did not really work.
    assert "failed" not in result.stdout, explain(example, result)


def test_the_readme_in_process_example_calls_the_tool(
    examples_env: dict[str, str], model: ScriptedModelServer, tmp_path: Path
) -> None:
    # Given a model that asks for the tool, then answers with its result
    model.add_tool_calls([("call_1", "add", {"a": 2, "b": 3})])
    model.add_text("2 + 3 = 5")

    example = readme_in_process_example()

    result = run_example(example, examples_env, tmp_path)

    assert result.returncode == 0, explain(example, result)
    assert "2 + 3 = 5" in result.stdout
    assert "status: completed" in result.stdout
    tool_result = model.requests[1]["messages"][-1]
    assert tool_result["role"] == "tool" and tool_result["content"] == "5"


def test_the_readme_in_process_example_shows_why_a_run_failed(
    examples_env: dict[str, str], model: ScriptedModelServer, tmp_path: Path
) -> None:
    # Given a model endpoint that refuses the call
    model.add_error(401, "Incorrect API key provided: sk-wr***ong.")

    example = readme_in_process_example()

    result = run_example(example, examples_env, tmp_path)

    # Then the reader sees the status and why
    assert result.returncode == 0, explain(example, result)
    assert "status: failed" in result.stdout
    error_line = next(line for line in result.stdout.splitlines() if line.startswith("error:"))
    assert "HTTP 401" in error_line
    assert "Incorrect API key provided" in error_line
