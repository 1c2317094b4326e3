"""The distributed side of agent-runner: the Celery app, the run task, the event bus, the client.

- :mod:`workers.app`       the Celery app (``celery -A workers.app worker -Q runs``)
- :mod:`workers.tasks`     ``submit_run`` (task name ``agent_runner.submit_run``)
- :mod:`workers.client`    ``submit``, ``stream_events``, ``cancel`` for producers
- :mod:`workers.bus`       event channels and streams in Redis
- :mod:`workers.settings`  every ``AGENT_RUNNER_*`` variable, checked at start-up

Importing the package opens no connection; the names below load their module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["RunRequest", "Settings", "app", "cancel", "stream_events", "submit", "submit_run"]

_LAZY = {
    "RunRequest": "workers.requests",
    "Settings": "workers.settings",
    "app": "workers.app",
    "cancel": "workers.client",
    "stream_events": "workers.client",
    "submit": "workers.client",
    "submit_run": "workers.tasks",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'workers' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
