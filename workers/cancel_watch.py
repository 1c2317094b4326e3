"""Cancel requests for the runs of one worker process, over one shared subscription.

``workers.client.cancel(I)`` sets ``{prefix}:cancel:I`` (with a TTL) and publishes on
``{prefix}:control:I`` (see :mod:`workers.bus`). A worker process holds one pub/sub connection
subscribed to the pattern ``{prefix}:control:*`` and wakes the run it names, so a run costs no
connection and no round trip of its own to be cancellable.

No request is missed:

- a request made before the run started is in the key, which the run's claim reads
  (:meth:`workers.session_lock.SessionLocks.claim`): the run registers here *before* it claims,
  so any later request reaches it through the subscription;
- a message published while the subscription is down is lost, so each (re)subscription is
  followed by reading the keys of every watched run, and while runs are watched the keys are
  read again every ``poll_s`` seconds (one ``MGET`` for all of them).

On Redis Cluster the cancel keys are in the slots of their invocation IDs (read with one
``GET`` per node's share of them) and the control channel is plain pub/sub, which a cluster
delivers to subscribers on every node: one subscription on any node hears every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster

from runner_core.wire import cancel_key, control_channel
from session_backends.redis_target import AsyncRedis

__all__ = ["CancelWatcher"]

logger = logging.getLogger(__name__)

_RETRY_S = (0.1, 0.2, 0.5, 1.0, 2.0)


class CancelWatcher:
    """Wakes the runs of this process whose cancel was requested.

    Args:
        redis: the asyncio client of the event bus (never closed here).
        prefix: the key prefix of the event bus.
        poll_s: how often the watched runs' cancel keys are read while connected.

    Use :meth:`start` on the event loop, :meth:`watch` around each run, :meth:`close` at exit.
    """

    def __init__(self, redis: AsyncRedis, *, prefix: str, poll_s: float = 1.0) -> None:
        if poll_s <= 0:
            raise ValueError(f"poll_s must be > 0, got {poll_s}")
        self.redis = redis
        self.prefix = prefix
        self.poll_s = poll_s
        self._watched: dict[str, asyncio.Event] = {}
        self._channel_prefix = control_channel("", prefix)
        self._task: asyncio.Task[None] | None = None
        #: Set while the pattern subscription is live (tests wait on it).
        self.subscribed = asyncio.Event()

    def start(self) -> None:
        """Subscribe and start waking runs, in a background task on the running loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name="agent-runner-cancel-watch")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @contextlib.contextmanager
    def watch(self, invocation_id: str) -> Iterator[asyncio.Event]:
        """An event set once a cancel of ``invocation_id`` is requested, while in the block.

        A second watch of the same invocation (a duplicate delivery in this process) shares
        the first one's event.
        """
        event = self._watched.get(invocation_id)
        owner = event is None
        if event is None:
            event = self._watched[invocation_id] = asyncio.Event()
        try:
            yield event
        finally:
            if owner and self._watched.get(invocation_id) is event:
                del self._watched[invocation_id]

    def _wake(self, invocation_id: str) -> None:
        event = self._watched.get(invocation_id)
        if event is not None and not event.is_set():
            logger.info("run %s: cancel requested", invocation_id)
            event.set()

    async def _sweep(self) -> None:
        """Read the cancel key of every watched run (one round trip) and wake the requested."""
        watched = list(self._watched)
        if not watched:
            return
        keys = [cancel_key(i, self.prefix) for i in watched]
        if isinstance(self.redis, RedisCluster):
            values = await self.redis.mget_nonatomic(keys)
        else:
            values = await self.redis.mget(keys)
        for invocation_id, value in zip(watched, values, strict=True):
            if value is not None:
                self._wake(invocation_id)

    async def _listen(self) -> None:
        failures = 0
        while True:
            if isinstance(self.redis, RedisCluster):
                # Its pub/sub picks a node from the slots it has learnt; if this fails, so does
                # the subscription below, which is retried.
                with contextlib.suppress(redis.exceptions.RedisError, OSError):
                    await self.redis.initialize()
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(self._channel_prefix + "*")
                self.subscribed.set()
                if failures:
                    logger.info("cancel watch subscribed again after %d failed tries", failures)
                failures = 0
                await self._sweep()
                await self._read(pubsub)
            except (redis.exceptions.RedisError, OSError) as exc:
                delay = _RETRY_S[min(failures, len(_RETRY_S) - 1)]
                failures += 1
                # One warning per outage: the broker connection already reports Redis being
                # down, and a line every 2 s would bury everything else in the log.
                log = logger.warning if failures == 1 else logger.debug
                log("cancel watch lost its Redis subscription (%s); retrying every %s s "
                    "until it is back", exc, _RETRY_S[-1])  # fmt: skip
                await asyncio.sleep(delay)
            finally:
                self.subscribed.clear()
                with contextlib.suppress(Exception):
                    await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]

    async def _read(self, pubsub: aioredis.client.PubSub) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + self.poll_s
        while True:
            message = await pubsub.get_message(
                ignore_subscribe_messages=True, timeout=self.poll_s
            )
            if message is not None and message.get("type") == "pmessage":
                channel = message["channel"]
                if isinstance(channel, bytes):
                    channel = channel.decode()
                self._wake(channel.removeprefix(self._channel_prefix))
            if loop.time() >= next_sweep:
                await self._sweep()
                next_sweep = loop.time() + self.poll_s
