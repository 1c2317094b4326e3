"""Where summary jobs go: N shard queues ``summary.0`` ... ``summary.N-1``, chosen per session.

The shard of a session is ``crc32(JSON [app_name, user_id, session_id]) % N``: the same in every
process and every Python version (never the per-process salted ``hash()``), so every producer
sends one session's jobs to one queue, and that queue name is the message's routing key. The
rule and the names are :mod:`runner_core.wire`'s (re-exported here).

:func:`configure_summary_routing` declares the shard queues and puts :class:`SummaryRouter` in
front of the app's ``task_routes``; ``workers.app`` calls it once, right after loading
``celeryconfig``. This module imports no task and no app, so the app can import it.

Settings (checked once, errors name the variable):

=================================  =========  ===================================================
variable                           default    meaning
=================================  =========  ===================================================
``AGENT_RUNNER_SUMMARY_SHARDS``    8          number of shard queues; the same on every producer
                                              and worker (change it only with the queues empty)
``AGENT_RUNNER_SUMMARY_TIMEOUT_S`` 60         a job's time limit; past it the model call is
                                              cancelled and nothing is stored
``AGENT_RUNNER_SUMMARY_LEASE_S``   30         life of a session's summary lease without a
                                              heartbeat (how long a killed job blocks its session)
``AGENT_RUNNER_SUMMARY_PER_BRANCH`` false     also summarise each branch of a parallel agent
                                              (filter key ``branch:{branch}``) in the same job
=================================  =========  ===================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kombu.entity import Queue

from runner_core.errors import ConfigurationError
from runner_core.wire import (
    DEFAULT_SUMMARY_SHARDS,
    MAX_SUMMARY_SHARDS,
    SUMMARIZE_SESSION,
    SUMMARY_QUEUE_PREFIX,
    summary_queue,
    summary_queue_name,
    summary_shard,
)
from workers.settings import _bool

__all__ = [
    "SUMMARIZE_SESSION",
    "SUMMARY_QUEUE_PREFIX",
    "SummaryRouter",
    "SummarySettings",
    "configure_summary_routing",
    "summary_queue",
    "summary_shard",
]


def _env_number(
    env: Mapping[str, str], name: str, default: float, *, minimum: float, maximum: float
) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a number; set it to a number.") from None
    if not minimum <= value <= maximum:  # also rejects NaN
        raise ConfigurationError(
            f"{name}={raw!r} is out of range; it must be between {minimum:g} and {maximum:g}."
        )
    return value


@dataclass(frozen=True, slots=True)
class SummarySettings:
    """The ``AGENT_RUNNER_SUMMARY_*`` settings (table in the module docstring)."""

    shards: int = DEFAULT_SUMMARY_SHARDS
    timeout_s: float = 60.0
    lease_s: float = 30.0
    #: Tests and benchmarks only: a Redis list where jobs record start, store and end.
    trace_key: str | None = None
    #: Also summarise each branch of a parallel agent (filter key ``branch:{branch}``).
    per_branch: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SummarySettings:
        """Read and check the variables.

        Raises:
            ConfigurationError: a bad value, naming the variable.
        """
        env = os.environ if environ is None else environ
        shards = _env_number(
            env,
            "AGENT_RUNNER_SUMMARY_SHARDS",
            float(DEFAULT_SUMMARY_SHARDS),
            minimum=1,
            maximum=MAX_SUMMARY_SHARDS,
        )
        if not shards.is_integer():
            raise ConfigurationError(
                f"AGENT_RUNNER_SUMMARY_SHARDS={shards:g} is not a whole number of queues."
            )
        return cls(
            shards=int(shards),
            timeout_s=_env_number(
                env, "AGENT_RUNNER_SUMMARY_TIMEOUT_S", 60.0, minimum=0.01, maximum=86400
            ),
            lease_s=_env_number(
                env, "AGENT_RUNNER_SUMMARY_LEASE_S", 30.0, minimum=0.5, maximum=3600
            ),
            trace_key=(env.get("AGENT_RUNNER_SUMMARY_TRACE_KEY") or "").strip() or None,
            per_branch=_bool(env, "AGENT_RUNNER_SUMMARY_PER_BRANCH", False),
        )


_ARG_NAMES = ("app_name", "user_id", "session_id")


class SummaryRouter:
    """A Celery router: ``agent_runner.summarize_session`` goes to its session's shard queue.

    Any other task is left to the next router (returns None).
    """

    def __init__(self, shards: int) -> None:
        self.shards = shards

    def __call__(
        self,
        name: str,
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
        options: Mapping[str, Any] | None,
        task: Any = None,
        **_: Any,
    ) -> dict[str, str] | None:
        if name != SUMMARIZE_SESSION:
            return None
        fields = dict(zip(_ARG_NAMES, args or (), strict=False)) | dict(kwargs or {})
        app_name, user_id, session_id = (fields.get(key) for key in _ARG_NAMES)
        if not (
            isinstance(app_name, str) and isinstance(user_id, str) and isinstance(session_id, str)
        ):
            return None  # the task rejects it; route it anywhere
        queue = summary_queue(app_name, user_id, session_id, self.shards)
        return {"queue": queue, "routing_key": queue}

    def __repr__(self) -> str:
        return f"SummaryRouter(shards={self.shards})"


def configure_summary_routing(app: Any, settings: SummarySettings | None = None) -> None:
    """Declare the shard queues and route summary jobs to them, in ``app``'s configuration.

    Idempotent. The queues join ``task_queues`` so that ``-Q summary.0,summary.1`` selects them
    (and so that a worker started without ``-Q`` would consume them too: always pass ``-Q``).
    """
    settings = settings or SummarySettings.from_env()
    conf = app.conf
    default = Queue(conf.task_default_queue)  # type: ignore[no-untyped-call]
    queues = list(conf.task_queues or [default])
    names = {queue.name for queue in queues}
    for shard in range(settings.shards):
        name = summary_queue_name(shard)
        if name not in names:
            queues.append(Queue(name, routing_key=name))  # type: ignore[no-untyped-call]
    conf.task_queues = queues
    existing = conf.task_routes
    if isinstance(existing, list | tuple):
        routes = [route for route in existing if not isinstance(route, SummaryRouter)]
    else:
        routes = [existing] if existing else []
    conf.task_routes = [SummaryRouter(settings.shards), *routes]
