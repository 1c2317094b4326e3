"""One virtual environment per peer framework, created on first use and cached.

The peers cannot share an interpreter: ``google-adk[openai]`` needs ``openai<3`` while
``openai-agents`` needs ``openai>=3``. Each peer gets its own venv under
``<cache>/venvs/<peer>-<hash>``, where the hash covers the interpreter version and the pinned
requirements, so changing a pin builds a new venv and the second run of the benchmark reuses the
first one's. A venv counts as built only once ``pip install`` succeeded (a ``.ready`` marker is
written last); a half-built one is removed and built again.

``<cache>`` is ``$AGENT_RUNNER_BENCH_CACHE`` when set, else ``$XDG_CACHE_HOME/agent-runner-bench``,
else ``~/.cache/agent-runner-bench``. The venvs take about 500 MB together; ``python -m bench
clean`` removes them (:func:`remove_venvs`).

    python -m bench.peers.envs            # build (or check) every peer's venv
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CACHE_VARIABLE",
    "PEERS",
    "PeerSpec",
    "VenvError",
    "cache_dir",
    "cached_venvs",
    "describe_venvs",
    "ensure_venv",
    "format_size",
    "installed_versions",
    "remove_venvs",
    "venvs_dir",
]

#: The environment variable that moves the cache (the venvs go to ``$AGENT_RUNNER_BENCH_CACHE/venvs``).
CACHE_VARIABLE = "AGENT_RUNNER_BENCH_CACHE"
#: A venv directory's name: the peer, then 12 hex digits of the hash of its requirements.
_VENV_NAME = re.compile(r"[a-z][a-z0-9_]*-[0-9a-f]{12}")
DRIVERS = Path(__file__).resolve().parent
PIP_TIMEOUT_S = 1800


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """A peer framework: how to install it and which driver script measures it."""

    #: Short name used in results and venv directory names.
    name: str
    #: What the result tables call it.
    title: str
    #: Pinned requirements, installed with one ``pip install``.
    requirements: tuple[str, ...]
    #: The driver script in this directory, run with the venv's interpreter.
    driver: str
    #: Distributions whose installed versions the results record.
    reported: tuple[str, ...]

    @property
    def venv_dir(self) -> Path:
        key = json.dumps([sys.version_info[:2], sorted(self.requirements)]).encode()
        return venvs_dir() / f"{self.name}-{hashlib.sha256(key).hexdigest()[:12]}"

    @property
    def python(self) -> Path:
        return self.venv_dir / "bin" / "python"

    @property
    def driver_path(self) -> Path:
        return DRIVERS / self.driver


PEERS: tuple[PeerSpec, ...] = (
    PeerSpec(
        name="adk",
        title="Google ADK",
        # DatabaseSessionService runs on SQLAlchemy's async engine, with asyncpg as its driver.
        # (ADK's [db] extra would add sqlalchemy-spanner as well, which nothing here uses.)
        requirements=(
            "google-adk[openai]==2.13.0",
            "sqlalchemy[asyncio]==2.1.9",
            "asyncpg==0.32.0",
        ),
        driver="drive_adk.py",
        reported=("google-adk", "openai", "sqlalchemy", "asyncpg"),
    ),
    PeerSpec(
        name="openai_agents",
        title="OpenAI Agents SDK",
        # The [sqlalchemy] extra brings SQLAlchemy and asyncpg for SQLAlchemySession.
        requirements=("openai-agents[sqlalchemy]==0.24.0", "asyncpg==0.32.0"),
        driver="drive_openai_agents.py",
        reported=("openai-agents", "openai", "sqlalchemy", "asyncpg"),
    ),
    PeerSpec(
        name="langgraph",
        title="LangGraph",
        requirements=(
            "langgraph==1.2.22",
            # langchain-openai 1.7.4 needs a langchain-core that langgraph 1.2.22 does not accept.
            "langchain-openai==1.7.3",
            "langgraph-checkpoint-postgres==3.2.0",
            "psycopg[binary,pool]==3.3.9",
        ),
        driver="drive_langgraph.py",
        reported=(
            "langgraph",
            "langchain-openai",
            "langchain-core",
            "langgraph-checkpoint-postgres",
            "openai",
            "psycopg",
        ),
    ),
)


def cache_dir() -> Path:
    """The benchmarks' cache: ``$AGENT_RUNNER_BENCH_CACHE``, else
    ``$XDG_CACHE_HOME/agent-runner-bench``, else ``~/.cache/agent-runner-bench`` (an empty
    variable counts as unset)."""
    if configured := os.environ.get(CACHE_VARIABLE):
        return Path(configured).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser().resolve() / "agent-runner-bench"


def venvs_dir() -> Path:
    """Where the peers' venvs are built: ``<cache>/venvs``."""
    return cache_dir() / "venvs"


def cached_venvs() -> list[Path]:
    """The peer venvs in :func:`venvs_dir`, built or half-built, for any version of the pins."""
    directory = venvs_dir()
    if not directory.is_dir():
        return []
    return sorted(
        path for path in directory.iterdir()
        if path.is_dir() and not path.is_symlink() and _VENV_NAME.fullmatch(path.name)
    )  # fmt: skip


def _disk_usage(paths: Iterable[Path]) -> int:
    """Bytes on disk under ``paths``, like ``du``: symlinks are not followed."""
    total = 0
    for path in paths:
        for folder, _, files in os.walk(path):
            for name in files:
                try:
                    total += os.lstat(os.path.join(folder, name)).st_blocks * 512
                except OSError:  # removed while we walked
                    pass
    return total


def format_size(count: int) -> str:
    """Bytes as ``1.2 GB``, ``512 MB`` or ``300 kB``."""
    if count >= 1e9:
        return f"{count / 1e9:.1f} GB"
    return f"{count / 1e6:.0f} MB" if count >= 1e6 else f"{count / 1e3:.0f} kB"


def describe_venvs() -> str:
    """Where the peer venvs are and how much disk they take, with how to remove them."""
    venvs = cached_venvs()
    if not venvs:
        return f"no peer venvs in {venvs_dir()}"
    return (
        f"peer venvs: {venvs_dir()} ({len(venvs)} venv{'s' * (len(venvs) != 1)}, "
        f"{format_size(_disk_usage(venvs))}); "
        "`python -m bench clean` removes them"
    )


def remove_venvs(log: Callable[[str], None] = print) -> int:
    """Remove every peer venv in :func:`venvs_dir`, and the cache folders left empty.

    Only directories named like a peer venv (``<peer>-<hash>``) and their lock files are
    removed, so a cache variable pointing at a folder of other things costs nothing else.
    A venv that another benchmark run is building is left alone.

    Returns:
        The bytes freed.
    """
    freed = 0
    directory = venvs_dir()
    venvs = cached_venvs()
    if not venvs:
        log(f"no peer venvs in {directory}")
    for venv in venvs:
        lock_path = directory / f".{venv.name}.lock"
        with open(lock_path, "a", encoding="ascii") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log(f"left {venv}: a benchmark run is building it")
                continue
            size = _disk_usage([venv])
            shutil.rmtree(venv)
            lock_path.unlink(missing_ok=True)
        freed += size
        log(f"removed {venv} ({format_size(size)})")
    for folder in (directory, cache_dir()):
        try:
            folder.rmdir()
        except OSError:  # missing, or holds something that is not ours
            pass
    return freed


class VenvError(RuntimeError):
    """A peer's venv could not be built; the message names the peer and pip's error."""

    def __init__(self, peer: str, reason: str) -> None:
        super().__init__(f"{peer}: {reason}")
        self.peer = peer
        self.reason = reason


def _tail(text: str, lines: int = 15) -> str:
    """pip's last lines, without the warnings that bury its error."""
    kept = [line for line in text.strip().splitlines() if not line.startswith("WARNING:")]
    return "\n".join(line if len(line) <= 300 else line[:300] + " ..." for line in kept[-lines:])


def _run(spec: PeerSpec, args: list[str], what: str) -> None:
    try:
        result = subprocess.run(
            args, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise VenvError(spec.name, f"{what} took longer than {PIP_TIMEOUT_S} s") from exc
    if result.returncode != 0:
        raise VenvError(spec.name, f"{what} failed:\n{_tail(result.stderr or result.stdout)}")


def ensure_venv(spec: PeerSpec, log: Callable[[str], None] = print) -> Path:
    """The venv's interpreter for ``spec``, building the venv first if it is not cached.

    Raises:
        VenvError: ``python -m venv`` or ``pip install`` failed (the message ends with pip's
            last lines of output).
    """
    venv = spec.venv_dir
    venv.parent.mkdir(parents=True, exist_ok=True)
    # Two benchmark runs at once must not build the same venv twice.
    with open(venv.parent / f".{venv.name}.lock", "w", encoding="ascii") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / ".ready").exists():
            return spec.python
        if venv.exists():
            shutil.rmtree(venv)
        log(f"[peers] building the {spec.title} venv at {venv} (once; a few minutes)")
        try:
            _run(spec, [sys.executable, "-m", "venv", str(venv)], "python -m venv")
            pip = [str(spec.python), "-m", "pip", "--disable-pip-version-check", "-q"]
            _run(spec, [*pip, "install", "--upgrade", "pip"], "pip install --upgrade pip")
            _run(spec, [*pip, "install", *spec.requirements],
                 f"pip install {' '.join(spec.requirements)}")  # fmt: skip
        except VenvError:
            shutil.rmtree(venv, ignore_errors=True)
            raise
        (venv / ".ready").write_text(json.dumps(list(spec.requirements)) + "\n", "utf-8")
        log(f"[peers] {spec.title} venv ready")
        return spec.python


def installed_versions(spec: PeerSpec) -> dict[str, str]:
    """The versions of ``spec.reported`` installed in the peer's venv, read by its interpreter."""
    code = (
        "import json, sys\n"
        "from importlib import metadata\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        out[name] = metadata.version(name)\n"
        "    except metadata.PackageNotFoundError:\n"
        "        out[name] = 'missing'\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run(
        [str(spec.python), "-c", code, *spec.reported],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    versions: dict[str, str] = json.loads(result.stdout)
    return versions


def main() -> int:
    failed = 0
    for spec in PEERS:
        try:
            ensure_venv(spec, log=lambda line: print(line, file=sys.stderr))
            print(spec.name, installed_versions(spec))
        except VenvError as exc:
            failed += 1
            print(f"not built: {exc}", file=sys.stderr)
    print(describe_venvs(), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
