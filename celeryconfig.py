"""Every Celery setting of agent-runner, in one place, from the environment.

Loaded by ``workers.app`` through :func:`workers.celery_config.load_celeryconfig`, by file
location: a service's own ``celeryconfig`` on the path never replaces it. The values come from
:class:`workers.settings.Settings` (``AGENT_RUNNER_*`` variables, table in docs/workers.md); a bad
value stops the worker at start-up with an error naming the variable.

Why each reliability setting is what it is: docs/workers.md, "Faults".
"""

from __future__ import annotations

from typing import Any

from runner_core.wire import SUBMIT_RUN
from workers.settings import Settings

_settings = Settings.from_env()

# --- transport ---------------------------------------------------------------------------
broker_url = _settings.broker_url
broker_connection_retry_on_startup = True
broker_connection_retry = True
broker_connection_max_retries = None  # keep reconnecting while Redis is down
_transport_options: dict[str, Any] = {
    # A message is handed to another worker when it has been unacknowledged this long. A live
    # run keeps its message fresh (workers.runtime heartbeat), so only dead runs are recovered.
    "visibility_timeout": _settings.recovery_timeout_s,
    # kombu 5.7: how often the unacked sweep runs (interval x throttle seconds).
    "unacked_restore_interval": _settings.restore_interval_s,
    "unacked_restore_throttle": _settings.restore_throttle,
    "socket_keepalive": True,
    "retry_on_timeout": True,
    "health_check_interval": 10,
}
broker_transport_options = _transport_options

# --- serialization: JSON only, never pickle ---------------------------------------------
task_serializer = "json"
result_serializer = "json"
event_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# --- results (optional) ------------------------------------------------------------------
result_backend = _settings.result_backend
task_ignore_result = _settings.result_backend is None
result_expires = _settings.result_expires_s
result_extended = True
result_backend_transport_options = {"visibility_timeout": _settings.recovery_timeout_s}

# --- delivery guarantees -----------------------------------------------------------------
task_acks_late = True  # a crash redelivers the run instead of losing it
task_reject_on_worker_lost = True  # a killed prefork child requeues its run (attempts capped)
task_acks_on_failure = True  # failures are terminal; no requeue loops
task_acks_on_timeout = True
worker_prefetch_multiplier = 1  # hold only what is running
# Runs go on through a lost broker connection (Celery's default until 6.0, kept on purpose): a
# run owns its session by a fenced lease, not by its message, so a copy redelivered meanwhile
# waits for the live run or returns its completion; cancelling would kill prefork runs on every
# Redis blip and make them call the model (and a tool cut off mid-call) again.
worker_cancel_long_running_tasks_on_connection_loss = False
# Celery's consumer, made to survive a Redis restart while it holds messages (celery/kombu 5.7
# would exit with "'NoneType' object has no attribute 'hostname'"): workers/resilience.py.
worker_consumer = "workers.resilience:Consumer"
worker_soft_shutdown_timeout = _settings.soft_shutdown_s
worker_enable_soft_shutdown_on_idle = _settings.soft_shutdown_s > 0

# --- routing -----------------------------------------------------------------------------
task_default_queue = _settings.queue
task_routes = {SUBMIT_RUN: {"queue": _settings.queue}}

# --- monitoring (Flower) -----------------------------------------------------------------
worker_send_task_events = True
task_send_sent_event = True
task_track_started = True

# --- misc --------------------------------------------------------------------------------
timezone = "UTC"
enable_utc = True
worker_hijack_root_logger = False
