"""The Celery app of agent-runner: ``celery -A workers.app worker -Q runs``.

Configuration comes from the project's ``celeryconfig.py`` (every setting from the environment),
loaded by file location so that another ``celeryconfig`` on the path never replaces it. The worker's
event loop (:mod:`workers.runtime`) starts from the worker signals below, never at import, so
producers importing this module open no connection and start no thread.

Recommended run worker (one process, many runs waiting on the model)::

    celery -A workers.app worker -Q runs -P threads -c 100
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from celery import Celery
from celery.concurrency import get_implementation
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from runner_core.errors import ConfigurationError

from .celery_config import load_celeryconfig
from .summary_routing import configure_summary_routing

__all__ = ["app"]

logger = logging.getLogger(__name__)

#: Exit status of a worker whose configuration keeps it from running anything (EX_CONFIG).
EXIT_CONFIG = 78



def _running_celery_command() -> bool:
    """True in ``celery ... worker`` / ``flower`` / ``inspect`` processes, not in producers."""
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    return program.name == "celery" or program.parts[-2:] == ("celery", "__main__.py")


def _configure(app: Celery) -> None:
    """Apply the project's settings (:mod:`workers.celery_config`) and the summary routing.

    A bad ``AGENT_RUNNER_*`` value raises :class:`ConfigurationError` naming the variable. In a
    ``celery`` command (a worker, Flower) that one line is all the operator needs, so it is
    printed alone and the process exits with ``EX_CONFIG`` instead of a 90-line traceback; a
    producer importing this module gets the exception.
    """
    try:
        app.config_from_object(load_celeryconfig())
        # The summary shard queues and their router (docs/summaries.md). This reads the
        # configuration now, so a bad AGENT_RUNNER_SUMMARY_* value is reported here too.
        configure_summary_routing(app)
    except ConfigurationError as exc:
        if not _running_celery_command():
            raise
        sys.stderr.write(f"agent-runner: configuration error: {exc}\n")
        sys.stderr.flush()
        raise SystemExit(EXIT_CONFIG) from None


app = Celery(
    "agent_runner",
    include=["workers.tasks", "workers.summaries", "workers.webhooks", "workers.feedback"],
)
_configure(app)


def _start_in_main_process(sender: Any = None, **_: Any) -> None:
    """threads/solo/gevent pools run tasks in the main process: start its loop here.

    A prefork parent runs no task; its children start their own loop (below), because a
    thread does not survive ``fork``.
    """
    pool_cls = get_implementation(getattr(sender, "pool_cls", None) or "prefork")
    if isinstance(pool_cls, type) and issubclass(pool_cls, PreforkPool):
        return
    _start_or_exit()


def _start_in_child(**_: Any) -> None:
    _start_or_exit()


def _quiet_http_request_logs() -> None:
    """httpx logs every HTTP request, so every model call, at INFO: one line per call in a
    worker's log at the usual ``-l INFO`` and a log record built per call on the hot path.
    Its loggers are set to WARNING unless a level was configured for them."""
    for name in ("httpx", "httpx2"):
        http_logger = logging.getLogger(name)
        if http_logger.level == logging.NOTSET:
            http_logger.setLevel(logging.WARNING)


def _start_or_exit() -> None:
    """Start the runtime, or stop the worker with the reason.

    Celery logs and swallows exceptions raised in signal handlers, which would leave a worker
    taking runs it can never execute (a bad AGENT_RUNNER_AGENTS entry, say) and subscribers
    waiting for completions that never come. A worker that cannot run anything exits instead.
    """
    from .runtime import start_runtime
    from .telemetry import setup as setup_telemetry

    _quiet_http_request_logs()
    try:
        setup_telemetry("agent-runner-worker")  # OTEL_* variables, docs/telemetry.md
        start_runtime()
    except Exception as exc:
        logger.critical("agent-runner worker cannot start: %s", exc)
        sys.stderr.write(f"agent-runner worker cannot start: {exc}\n")
        sys.stderr.flush()
        os._exit(EXIT_CONFIG)


def _stop(**_: Any) -> None:
    from .runtime import stop_runtime
    from .telemetry import shutdown as shutdown_telemetry

    stop_runtime()
    shutdown_telemetry()  # exports what is buffered


worker_init.connect(_start_in_main_process, weak=False)
worker_process_init.connect(_start_in_child, weak=False)
worker_process_shutdown.connect(_stop, weak=False)
worker_shutdown.connect(_stop, weak=False)
