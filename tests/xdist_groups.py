"""The suite runs in parallel on pytest-xdist workers (a pytest plugin loaded by conftest.py).

``python -m pytest`` without ``-n``/``--dist`` runs on :data:`WORKERS` worker processes with
``--dist loadgroup``; ``-n 0`` or ``-p no:xdist`` runs serially, ``-n N`` on N workers. (This is
set here rather than in pyproject's addopts so that ``-p no:xdist`` still works.)

Each worker is its own process with its own session fixtures (redis-server, PostgreSQL, MariaDB,
Redis Cluster on free ports, in temporary directories), so no two workers share a server. Every
test module is put in an ``xdist_group`` of its own, so a module runs whole on one worker: its
module-scoped fixtures (celery workers, installs) start once, and tests of one module that share
files (bench/.quick) never run at the same time. The modules in :data:`SPREAD` are the exception:
their tests are independent (function-scoped fixtures only) and slow, so each is scheduled alone,
on whichever worker is free. Work goes out slowest module first (:data:`SLOWEST`, then the other
modules in collection order, then the spread tests, which fill the workers evenly at the end), so
that no long module starts last and holds up the end of the run.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

#: Worker processes by default. Most of the suite's time is waiting on servers, subprocesses and
#: a browser, so parallel workers pay even on 2 cores; but the fault tests run workers with a 2 s
#: recovery timeout, and 4 workers on 2 cores loaded a worker's loop past it (a run was
#: redelivered mid-test), so 2.
WORKERS = 2
#: Test modules whose tests are spread one by one over the workers instead of run whole on one.
SPREAD = frozenset({"tests/test_console_browser.py", "tests/test_cli.py"})
#: The slowest test modules, slowest first (measured with --durations=0 under -n 4).
SLOWEST = (
    "tests/test_docs_examples.py",
    "tests/test_bench_cli.py",
    "tests/test_session_conformance.py",
    "tests/test_artifact_conformance.py",
    "tests/test_request_fuzz.py",
    "tests/test_gateway.py",
    "tests/test_worker_startup.py",
    "tests/test_fencing_faults.py",
    "tests/test_install.py",
)
_LOADGROUP = "agent_runner_loadgroup"


def _in_worker() -> bool:
    return "PYTEST_XDIST_WORKER" in os.environ


@pytest.hookimpl(tryfirst=True)  # before xdist turns -n into worker processes
def pytest_cmdline_main(config: pytest.Config) -> None:
    if _in_worker() or not config.pluginmanager.hasplugin("xdist"):
        return
    option = config.option
    if option.numprocesses is None and option.dist == "no" and not option.tx:
        option.numprocesses = WORKERS
        option.dist = "loadgroup"
        option.loadscopereorder = False  # keep the order of the workers' collection


@pytest.hookimpl(optionalhook=True)  # an xdist hook: unknown under -p no:xdist
def pytest_configure_node(node: Any) -> None:
    """Tell the worker whether tests are scheduled by group (it re-reads only the command
    line, which may not say ``--dist loadgroup``)."""
    node.workerinput[_LOADGROUP] = node.config.option.dist == "loadgroup"


@pytest.hookimpl(tryfirst=True)  # before xdist appends the group names to the node IDs
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    workerinput = getattr(config, "workerinput", None)
    if not _in_worker() or workerinput is None or not workerinput.get(_LOADGROUP):
        return
    config.option.loadgroup = True
    rank = {module: index for index, module in enumerate(SLOWEST)}
    rank.update(dict.fromkeys(SPREAD, len(rank) + 1))
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(SLOWEST)))
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        if module not in SPREAD and not any(item.iter_markers("xdist_group")):
            item.add_marker(pytest.mark.xdist_group(module))
