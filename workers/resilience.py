"""Keeping a worker alive when Redis restarts: the worker's Celery consumer.

``celeryconfig.worker_consumer`` names :class:`Consumer`, Celery's own consumer with one change:
when the broker connection is lost, the channel that holds the worker's unacknowledged task
messages is closed for good *before* Celery tears the connection down.

Why (celery 5.7.0 with kombu 5.7.0 and the Redis transport): on a lost connection,
``Consumer.on_connection_error_after_connected`` calls ``connection.collect()`` and then
``connection.close()`` (the second call came with celery PR #10242, GH-9705). ``collect()`` closes
the task channel, but kombu's Redis ``Channel.close`` first reads the reply of the BRPOP in
flight; with the server gone that read raises ``ConnectionError``, and the channel is left
*not closed*. ``collect()`` swallows the error and detaches the transport
(``transport.client = None``). ``close()`` then closes the channel a second time, which now gets
as far as restoring the unacknowledged messages, builds a Redis pool from
``connection.client`` (``None``) and raises ``AttributeError: 'NoneType' object has no attribute
'hostname'``. That is not a connection error, so it escapes Celery's ``ignore_errors`` and the
worker stops with ``Unrecoverable error``, but only a worker that held unacknowledged messages
(a busy run worker, never an idle one). Same symptom, older path: kombu issue #582.

Closing the channel first (twice if the first close stops at the lost BRPOP reply, as above)
makes both of Celery's closes no-ops on an already closed channel; everything else Celery does on
a lost connection (cancel what it can, reconnect with backoff, consume again) is unchanged. The
runs the worker holds go on: their events and leases retry on their own Redis clients
(docs/workers.md, "Redis restarts"), and a message whose acknowledgement was lost with the old
connection is redelivered after the recovery timeout and answered from the run's published
completion, never run again.

Safe on any transport and version: closing a channel that Celery closes anyway a moment later.
Remove it once Celery's reconnect path survives a half-closed Redis channel; the test that
shows the need is tests/test_redis_restart.py.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

__all__ = ["Consumer"]

logger = logging.getLogger(__name__)

#: How many times a channel is closed before giving up on closing it here (Celery tries again).
_CLOSE_ATTEMPTS = 2


class Consumer(CeleryConsumer):  # type: ignore[misc]  # celery ships no type hints
    """Celery's worker consumer that survives losing a Redis broker while holding messages."""

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        close_task_channel(self.connection, getattr(self, "task_consumer", None))
        super().on_connection_error_after_connected(exc)


def close_task_channel(connection: Any, task_consumer: Any) -> bool:
    """Close the channel of ``task_consumer`` on a connection that was lost.

    Args:
        connection: the consumer's broken ``kombu.Connection`` (``None``: nothing to do).
        task_consumer: the ``kombu.Consumer`` of the worker's task queues, or ``None``.

    Returns:
        Whether the channel is closed now. Nothing is raised: connection and channel errors
        are expected (the server is gone, so restoring the unacknowledged messages fails; they
        stay in Redis for the visibility-timeout sweep), and anything else is logged and left
        to Celery's own handling, which runs next either way.
    """
    channel = getattr(task_consumer, "channel", None)
    if connection is None or channel is None or getattr(channel, "closed", True):
        return True
    expected = tuple(connection.connection_errors) + tuple(connection.channel_errors)
    for _attempt in range(_CLOSE_ATTEMPTS):
        try:
            channel.close()
        except expected as exc:
            logger.debug("closing the task channel of a lost broker connection: %r", exc)
        except Exception:
            logger.warning(
                "could not close the task channel of a lost broker connection", exc_info=True
            )
            return False
        if channel.closed:
            return True
    logger.warning("could not close the task channel of a lost broker connection")
    return False
