"""How a run stops (its deadline and cancel requests), whatever the code it awaits does.

A run stops by the cancellation of its task, and one ``Task.cancel()`` can be lost: the code
the run is awaiting may swallow the ``CancelledError``. ``asyncio.wait_for`` on Python 3.11
does (it returns the result of an operation that finished just as the cancel came), and
redis-py calls it for every command it sends; a model client, a tool or another store may do
the same. So a stop does not rest on one cancellation:

- :class:`RunStop` remembers the stop asked for (``cancelled`` or ``timeout``; the first one
  wins) and cancels the run's task again every :data:`REISSUE_S` seconds until the run has
  taken the stop in (:meth:`RunStop.settle`);
- the Runner checks for it at every step boundary (:meth:`RunStop.check`), before and after
  each event it stores and hands out, so every model and tool call starts past a check;
- session-store calls run in a task of their own (:func:`call_store`): the run's task then
  waits in asyncio, never inside a driver, so a stop always reaches it there, and an append in
  flight lands (or fails) before the stop takes effect, so the Runner knows what is stored;
- once the run has ended, its outcome is the stop if one was asked for before the end,
  however the run got there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

__all__ = ["REISSUE_S", "RunStop", "StopReason", "call_store"]

T = TypeVar("T")

StopReason = Literal["cancelled", "timeout"]

#: Seconds between cancellations of a run that has not taken its stop in yet.
REISSUE_S = 0.01


class RunStop:
    """The stop of one run: asked for by a cancel or its deadline, enforced until it ends.

    Args:
        timeout_s: the run's deadline, counted from :meth:`begin`; None for no deadline.
    """

    def __init__(self, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        #: The stop asked for, if any; the first one asked for wins.
        self.reason: StopReason | None = None
        self._task: asyncio.Task[Any] | None = None
        self._settled = False
        self._deadline: asyncio.TimerHandle | None = None
        self._reissue: asyncio.TimerHandle | None = None

    def begin(self) -> None:
        """Called by the run's task as it starts: the deadline starts counting now.

        A stop asked for before this is taken in by the run's first :meth:`check`; the task
        is never cancelled before it runs (its body would not run at all, nor end its stream).
        """
        self._task = asyncio.current_task()
        if self.timeout_s is not None and not self._settled:
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_later(self.timeout_s, self.request, "timeout")

    def request(self, reason: StopReason) -> None:
        """Stop the run, with ``reason`` unless another stop was asked for first.

        After the run has ended (it is storing its error event), a request cancels its task
        once more, which cuts that short: the error event is then handed out unstored.
        """
        if self._settled:
            if self._task is not None and not self._task.done():
                self._task.cancel()
            return
        if self.reason is None:
            self.reason = reason
        self._interrupt()

    def note_cancelled(self) -> None:
        """The run's task got a cancellation: a cancel of the task is a cancel of the run."""
        if self.reason is None and not self._settled:
            self.reason = "cancelled"

    def check(self) -> None:
        """At a step boundary: raise ``CancelledError`` if the run must stop and has not ended."""
        if self.reason is not None and not self._settled:
            raise asyncio.CancelledError

    def settle(self) -> StopReason | None:
        """The run has ended (it runs no more steps): the stop it must end with, if any.

        Stops the deadline and the repeated cancellations, and takes back the cancellations
        of the task that are still counted (``Task.uncancel``), so that the clean-up which
        follows (storing the error event) runs undisturbed. Idempotent.
        """
        if not self._settled:
            self._settled = True
            for handle in (self._deadline, self._reissue):
                if handle is not None:
                    handle.cancel()
            self._deadline = self._reissue = None
            task = self._task
            if task is not None:
                while task.cancelling():
                    task.uncancel()
        return self.reason

    def _interrupt(self) -> None:
        self._reissue = None
        task = self._task
        if self._settled or task is None or task.done():
            return
        task.cancel()
        self._reissue = task.get_loop().call_later(REISSUE_S, self._interrupt)


async def call_store(stop: RunStop, call: Coroutine[Any, Any, T], *, land: bool = False) -> T:
    """Await a session-store call of a run in a task of its own; return its result.

    Args:
        stop: the run's stop.
        call: the store call (a coroutine not yet started).
        land: the call is an append: once sent it runs to its end even if the run is stopped
            meanwhile, and its result (or error) is returned as usual; the Runner then hands
            the event out and takes the stop in at its next :meth:`RunStop.check`. Any other
            call is cancelled when the run is stopped.

    Raises:
        CancelledError: the run was stopped during a call that does not ``land`` (after the
            call has ended, so the driver has cleaned up).
        Exception: whatever the call raised.
    """
    task = asyncio.ensure_future(call)
    interrupted = False
    while not task.done():
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError:
            interrupted = True
            stop.note_cancelled()
            if not land:
                task.cancel()
    if interrupted and not land:
        if not task.cancelled():
            task.exception()  # retrieved: the stop is what the run reports
        raise asyncio.CancelledError
    return task.result()
