"""One long-lived asyncio event loop per worker process, and what lives on it.

Celery 5.7 has no asyncio pool, so each worker process runs one event loop in a background
thread. Tasks (on the threads pool: many at once) hand coroutines to it with
:func:`asyncio.run_coroutine_threadsafe` and block on the result, so one process holds many
runs waiting on the model while the Redis clients, the session store and the model clients are
created once, on that loop, and shared.

The loop is started by the worker signals in :mod:`workers.app` (``worker_init`` for the
threads/solo pools, ``worker_process_init`` in each prefork child), never at import.
:func:`get_runtime` starts one lazily as a fallback (same process ID check, so a forked child
never reuses its parent's loop).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions

from runner_core.artifacts import ArtifactService
from runner_core.memory import MemoryService
from runner_core.session import SessionService
from runner_core.traces import TraceStore
from session_backends.redis_pool import WaitingConnectionPool
from session_backends.redis_target import AsyncRedis, async_client, is_cluster_url

from .agents import AgentRegistry
from .artifacts import ArtifactSettings
from .bus import EventBus
from .cancel_watch import CancelWatcher
from .celery_config import load_celeryconfig
from .memory import build_memory
from .session_lock import SessionLocks
from .settings import Settings, mask_url
from .summary_routing import SummarySettings

__all__ = ["WorkerRuntime", "get_runtime", "start_runtime", "stop_runtime"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

_START_TIMEOUT_S = 30.0


#: Seconds a Redis command waits for a free pooled connection before failing.
_POOL_WAIT_S = 30.0


def _redis_client(url: str, max_connections: int) -> AsyncRedis:
    """A client whose pool makes commands wait for a free connection when all
    ``max_connections`` are busy (many runs at once), instead of failing them. For a
    ``redis+cluster://`` URL a ``RedisCluster`` (``max_connections`` per node)."""
    if is_cluster_url(url):
        return async_client(
            url,
            variable="AGENT_RUNNER_REDIS_URL",
            max_connections=max_connections,
            socket_keepalive=True,
            health_check_interval=10,
        )
    if url.startswith("redis+socket://"):
        url = "unix://" + url.removeprefix("redis+socket://")
    pool = WaitingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=_POOL_WAIT_S,
        socket_keepalive=True,
        health_check_interval=10,
        retry_on_timeout=True,
    )
    return aioredis.Redis.from_pool(pool)


class WorkerRuntime:
    """The per-process loop and the clients that live on it.

    Attributes (ready after :meth:`start`): ``loop``, ``redis`` (events and leases), ``bus``,
    ``cancels``, ``sessions``, ``traces`` (None when traces are off), ``artifacts`` (None
    without ``AGENT_RUNNER_ARTIFACT_URL``), ``locks``, ``agents``,
    ``settings``, ``summary_settings``.

    Args:
        settings: the worker's settings, read once at start-up.
        summary_settings: the ``AGENT_RUNNER_SUMMARY_*`` settings; default: read from the
            environment here, once for the process (never per job).

    Raises:
        ConfigurationError: a bad ``AGENT_RUNNER_SUMMARY_*`` value, naming the variable.
    """

    def __init__(self, settings: Settings, summary_settings: SummarySettings | None = None) -> None:
        self.settings = settings
        self.summary_settings = summary_settings or SummarySettings.from_env()
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="agent-runner-loop", daemon=True)
        self._stopped = False
        self.redis: AsyncRedis
        self.broker_redis: AsyncRedis
        self.bus: EventBus
        self.cancels: CancelWatcher
        self.sessions: SessionService
        self.traces: TraceStore | None = None
        #: Long-term memory (``AGENT_RUNNER_MEMORY_URL``); None: off.
        self.memory: MemoryService | None = None
        self.artifacts: ArtifactService | None = None
        self.locks: SessionLocks
        self.agents: AgentRegistry
        self.unacked_index_key = "unacked_index"

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> WorkerRuntime:
        self._thread.start()
        self.run(self._open(), timeout=_START_TIMEOUT_S)
        logger.info(
            "agent-runner runtime ready (pid %s, events %s, sessions %s, apps %s)",
            self.pid,
            mask_url(self.settings.redis_url),
            mask_url(self.settings.session_url),
            ", ".join(self.agents.app_names),
        )
        return self

    async def _open(self) -> None:
        from session_backends import from_url

        settings = self.settings
        self.agents = AgentRegistry(settings)
        self.redis = _redis_client(settings.redis_url, settings.redis_max_connections)
        self.broker_redis = (
            self.redis
            if settings.broker_url == settings.redis_url
            else _redis_client(settings.broker_url, settings.redis_max_connections)
        )
        self.bus = EventBus(
            self.redis,
            prefix=settings.events_prefix,
            stream_maxlen=settings.stream_maxlen,
            stream_ttl_s=settings.event_ttl_s,
        )
        self.cancels = CancelWatcher(self.redis, prefix=settings.events_prefix)
        self.cancels.start()
        self.locks = SessionLocks(
            self.redis,
            locator=self.bus.locator,
            prefix=settings.events_prefix,
            lease_ttl_s=settings.lease_ttl_s,
            # Long enough for a killed run's message to come back (recovery timeout, sweep,
            # a worker restart) before newer runs of the session may go ahead of it.
            claim_ttl_s=3 * settings.recovery_timeout_s
            + 2 * settings.restore_interval_s * settings.restore_throttle
            + 60,
        )
        self.sessions = from_url(settings.session_url)
        if settings.trace_url is not None:
            from session_backends.traces import trace_store_from_url

            self.traces = trace_store_from_url(settings.trace_url, ttl=settings.trace_ttl_s)
        self.memory = build_memory(settings)
        artifact_settings = ArtifactSettings.from_env(settings=settings)
        if artifact_settings.url is not None:
            self.artifacts = artifact_settings.open()
        broker_transport_options = load_celeryconfig().broker_transport_options
        self.unacked_index_key = str(broker_transport_options.get("global_keyprefix", "")) + str(
            broker_transport_options.get("unacked_index_key", "unacked_index")
        )

    def run(self, coro: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
        """Run ``coro`` on the loop from another thread and wait for its result."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise
        except BaseException:
            # Interrupted while waiting (worker shutdown): stop the coroutine as well.
            future.cancel()
            raise

    async def keep_visible(self, delivery_tag: str | None) -> None:
        """Keep this process's broker message from being handed to another worker.

        kombu's Redis transport redelivers a message once it has been unacknowledged for the
        visibility timeout (``AGENT_RUNNER_RECOVERY_TIMEOUT_S``). A live run refreshes its
        entry in the unacked index, so only a dead worker's run is ever recovered. ``XX``:
        never re-adds a message that was already restored or acknowledged. kombu stamped the
        message when it handed it to this worker, so the first refresh waits up to a second
        (runs shorter than that never make one).
        """
        if not delivery_tag:
            return
        delay = min(1.0, self.settings.heartbeat_s)
        while True:
            await asyncio.sleep(delay)
            delay = self.settings.heartbeat_s
            try:
                await self.broker_redis.zadd(
                    self.unacked_index_key, {delivery_tag: time.time()}, xx=True
                )
            except (redis.exceptions.RedisError, OSError) as exc:
                logger.warning("cannot refresh the visibility of %s: %s", delivery_tag, exc)

    async def _close(self) -> None:
        closes = [self.cancels.close, self.agents.close, self.sessions.close]
        if self.traces is not None:
            closes.append(self.traces.close)
        if self.memory is not None:
            closes.append(self.memory.close)
        if self.artifacts is not None:
            closes.append(self.artifacts.close)
        for close in closes:
            try:
                await close()
            except Exception:  # pragma: no cover - best effort at shutdown
                logger.exception("error while closing the worker runtime")
        if self.broker_redis is not self.redis:
            await self.broker_redis.aclose()
        await self.redis.aclose()

    def stop(self) -> None:
        """Close the clients and stop the loop. Idempotent."""
        if self._stopped or not self._thread.is_alive():
            return
        self._stopped = True
        try:
            if hasattr(self, "sessions"):
                self.run(self._close(), timeout=10)
        except Exception:  # pragma: no cover - best effort at shutdown
            logger.exception("error while stopping the worker runtime")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()


def start_runtime(settings: Settings | None = None) -> WorkerRuntime:
    """Start this process's runtime (idempotent per process)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None or _runtime.pid != os.getpid():
            _runtime = WorkerRuntime(settings or Settings.from_env()).start()
        return _runtime


def get_runtime() -> WorkerRuntime:
    """This process's runtime, started on first use if no worker signal started it."""
    runtime = _runtime
    if runtime is not None and runtime.pid == os.getpid():
        return runtime
    return start_runtime()


def stop_runtime() -> None:
    """Stop this process's runtime if it runs here."""
    global _runtime
    with _runtime_lock:
        runtime, _runtime = _runtime, None
    if runtime is not None and runtime.pid == os.getpid():
        runtime.stop()
