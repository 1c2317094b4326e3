"""The Celery task: ``agent_runner.submit_run``.

Producers call ``submit_run.delay(app_name, user_id, session_id, message, *, messages=None,
resume=False, tool_confirmations=None, request_id=None, multitask_strategy="enqueue",
run_timeout_s=None, run_config=None)`` (or ``send_task("agent_runner.submit_run", ...,
queue="runs")`` from any Celery client: name the queue, ``AGENT_RUNNER_QUEUE``, or the task lands
on Celery's default one).
The returned ``AsyncResult.id`` is the invocation ID; the events are on
``agent-runner:stream:{invocation_id}`` (see docs/events.md).

The task's state follows the run, set only after the run's ``runner.completion`` is published
(Flower and the result backend, when ``AGENT_RUNNER_RESULT_BACKEND`` is set, agree):

=================== =========== ==========================================================
run status          task state  ``AsyncResult.get()``
=================== =========== ==========================================================
completed, paused   SUCCESS     returns the ``runner.completion`` event as a JSON dict
failed, timeout     FAILURE     raises :class:`~runner_core.errors.RunFailedError`
cancelled           REVOKED     raises :class:`~runner_core.errors.RunFailedError`
invalid request     FAILURE     raises :class:`~runner_core.errors.InvalidRequestError`
=================== =========== ==========================================================

``RunFailedError`` carries ``status``, ``error_type``, ``message`` and the ``completion`` dict.
An invalid request, or an app name no agent is configured for, still publishes an ``error``
event and a ``failed`` completion first, whatever the message held: arguments of any type,
text UTF-8 cannot encode, a task ID that is no valid invocation ID (published where
:class:`~workers.requests.TaskID` says), a message Celery could not take as sent (the stand-in
of :mod:`workers.task_messages`). Whatever the state, the message is acknowledged once:
nothing is retried or redelivered, and a redelivery of a finished run (which returns the
stored completion without running) ends in the same state.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from celery import Task, states
from celery.app.task import get_actual_ignore_result
from celery.exceptions import Ignore, Reject

from runner_core.errors import (
    AgentRunnerError,
    FencedError,
    InvalidRequestError,
    InvocationOwnedError,
    RunFailedError,
    safe_text,
)
from runner_core.events import EventError, RunCompletionEvent
from runner_core.wire import SUBMIT_RUN

from .app import app
from .bus import invocation_owned, owner_identity
from .execution import RunLabels, execute_run, publish_failure
from .requests import POSITIONAL_FIELDS, RunRequest, TaskID
from .runtime import WorkerRuntime, get_runtime
from .summaries import maybe_enqueue_after_run
from .task_messages import PROBLEM_HEADER
from .webhooks import enqueue_after_run as enqueue_webhook
from .webhooks import webhook_due

__all__ = ["SUBMIT_RUN", "submit_run"]

logger = logging.getLogger(__name__)


async def _reject_invalid(
    rt: WorkerRuntime,
    task_id: TaskID,
    args: Sequence[Any],
    kwargs: Mapping[Any, Any],
    error: InvalidRequestError,
) -> RunCompletionEvent:
    """Publish the failure of an invalid request under ``task_id``'s invocation ID (the
    request's fields kept as labels only where valid), or return the completion it already has.

    Raises:
        InvocationOwnedError: the invocation ID is bound to another identity.
        FencedError: a delivery of the invocation ID took a session: the run is that one's.
    """
    fields = dict(zip(POSITIONAL_FIELDS, args, strict=False))
    fields.update((name, value) for name, value in kwargs.items() if name not in fields)
    labels = RunLabels.of(
        fields.get("app_name"),
        fields.get("user_id"),
        fields.get("session_id"),
        fields.get("request_id"),
    )
    invocation_id = task_id.invocation_id
    done = await rt.bus.completion(invocation_id)
    if done is not None:
        if (done.app_name, done.user_id, done.session_id) != (
            labels.app_name,
            labels.user_id,
            labels.session_id,
        ):  # another identity's run: never hand its completion out
            identity = owner_identity(labels.app_name, labels.user_id, labels.session_id)
            raise invocation_owned(invocation_id, "", identity)
        return done
    error_event = EventError(type="invalid_request", message=str(error))
    return await publish_failure(rt, invocation_id, labels, error_event, before_start=True)


async def _run_then_webhook(
    rt: WorkerRuntime, request: RunRequest, invocation_id: str, delivery_tag: str | None
) -> tuple[RunCompletionEvent, bool]:
    """The run, then whether its webhook is due: one hop to the runtime's loop for both."""
    completion = await execute_run(rt, request, invocation_id, delivery_tag=delivery_tag)
    return completion, await webhook_due(rt, invocation_id)


def _validate(
    rt: WorkerRuntime, task: Task, task_id: TaskID, args: Sequence[Any], kwargs: Mapping[Any, Any]
) -> RunRequest:
    """The run request of one delivery, with its task ID and the message it came in checked.

    Raises:
        InvalidRequestError: naming everything wrong: what :mod:`workers.task_messages` found
            in the message, else the task ID, then the arguments; never echoing text that
            cannot be encoded.
    """
    found = getattr(task.request, PROBLEM_HEADER, None)
    problems = [safe_text(str(found))] if found else []
    if task_id.problem and not (found and task_id.is_fallback):  # else found says why
        problems.append(task_id.problem)
    if task_id.problem and task_id.is_fallback:
        problems.append(f"its events are under the invocation ID {task_id.invocation_id}")
    summary = f"invalid run message: {'; '.join(problems)}." if problems else ""
    if summary and not args and not kwargs:  # nothing was readable: nothing more to say
        raise InvalidRequestError(summary)
    try:
        request = RunRequest.from_task_arguments(
            args, kwargs, max_message_chars=rt.settings.max_message_chars
        )
        if request.app_name not in rt.agents.app_names:
            raise InvalidRequestError(
                f"unknown app_name {request.app_name!r}; the workers serve "
                f"{', '.join(rt.agents.app_names)}. Add {request.app_name}=module:function to "
                "AGENT_RUNNER_AGENTS on the workers."
            )
    except InvalidRequestError as exc:
        raise InvalidRequestError(" ".join(filter(None, [summary, safe_text(str(exc))]))) from None
    except Exception as exc:  # a request nothing above foresaw must still fail, not hang
        logger.exception("run %s: the request could not be checked", task_id.invocation_id)
        unreadable = f"the request could not be read ({type(exc).__name__})."
        raise InvalidRequestError(" ".join(filter(None, [summary, unreadable]))) from None
    if summary:
        raise InvalidRequestError(summary)
    return request


def _revoke(self: Task, error: RunFailedError) -> None:
    """Mark the task REVOKED for a cancelled run, as the worker's own revoke tells monitors.

    Sends the ``task-revoked`` event (what Flower shows) and stores REVOKED with ``error`` in
    the result backend, if any, so ``.get()`` raises it. The caller then raises ``Ignore``: the
    worker acknowledges the message and sends no other state.
    """
    request = self.request
    try:
        self.send_event("task-revoked", terminated=False, signum=None, expired=False)
    except Exception as exc:  # the broker is down: the backend and the stream still say it
        logger.warning("run %s: no task-revoked event sent (%s)", request.id, exc)
    # Stored exactly when Celery would store a FAILURE for this request.
    if not get_actual_ignore_result(self, request) or self.store_errors_even_if_ignored:
        self.backend.store_result(request.id, error, states.REVOKED, request=request)


def _refuse(self: Task, exc: AgentRunnerError, *, run_copy: bool = True) -> Ignore | Reject:
    """A delivery that must leave no trace of its own: a stale one (``FencedError``: another
    delivery owns the run) or one for an invocation ID bound to another identity
    (``InvocationOwnedError``). Logged with the reason; the caller raises the returned
    exception, so no state or result of the task ID, which is the owner's, is written.

    - Stale: ``Reject(requeue=True)``. Celery sends ``task-rejected`` (Flower shows it; it never
      outranks the owner's state) and puts the message back. Kombu's Redis transport keys an
      unacknowledged message by its delivery tag, which the owner's redelivered copy shares:
      acknowledging here would drop the owner's copy from the unacked index, and a run whose
      owner then died too would never be delivered again. Requeued, the copy is taken by a
      worker that waits for the live run (and takes it over if that owner dies) or answers with
      its completion; if the owner already acknowledged, there is nothing to put back.
    - Not a copy of the run's message (``run_copy=False``: an invalid request with the ID of a
      run under way), or another identity's ID: ``Ignore`` after a ``task-rejected`` event.
      That message is its sender's own (its own delivery tag); it is acknowledged and never
      runs. Put back, an invalid twin would come straight back to be refused again for as long
      as the run lasts, and then fail the owner's task.
    """
    if isinstance(exc, FencedError) and run_copy:
        logger.warning("run %s: delivery refused (stale delivery): %s", self.request.id, exc)
        return Reject(f"run {self.request.id}: delivery refused (stale delivery)", requeue=True)
    owned = isinstance(exc, InvocationOwnedError)
    reason = "invocation ID of another" if owned else "invalid twin of a run under way"
    logger.warning("run %s: delivery refused (%s): %s", self.request.id, reason, exc)
    try:
        self.send_event("task-rejected", requeue=False, reason=f"{reason}: {exc}")
    except Exception as send_exc:  # the broker is down: the log still says it
        logger.warning("run %s: no task-rejected event sent (%s)", self.request.id, send_exc)
    return Ignore(f"run {self.request.id}: delivery refused ({reason})")


def _submit_run(self: Task, /, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run an agent on a session; return the ``runner.completion`` event as a dict.

    Arguments (positional or keyword): ``app_name``, ``user_id``, ``session_id`` (``""``: a
    new session named after the invocation ID), ``message`` (text or an OpenAI-style user
    message dict; None only with ``resume``/``tool_confirmations``). Keyword only:
    ``messages``, ``resume``, ``tool_confirmations``, ``request_id``, ``multitask_strategy``
    (``enqueue`` | ``reject`` | ``interrupt``), ``run_timeout_s``, ``run_config`` (this run's
    options as a JSON object, the fields of :class:`~runner_core.run_config.RunConfig`:
    ``streaming``, ``model``, ``generation``, ``max_iterations``, ``runtime_state``).

    Returns:
        The ``runner.completion`` event as a JSON dict, for a run that ended ``completed`` or
        ``paused`` (task state SUCCESS).

    Raises:
        InvalidRequestError: the request is invalid or names an unknown app (after publishing
            an ``error`` event and a ``failed`` completion). Task state FAILURE.
        RunFailedError: the run ended ``failed`` or ``timeout`` (task state FAILURE), or
            ``cancelled`` (task state REVOKED; the task itself raises ``Ignore`` and
            ``.get()`` raises the stored ``RunFailedError``). Raised after the completion is
            published; never retried.
    """
    rt = get_runtime()
    task_id = TaskID.read(self.request.id)
    invocation_id = task_id.invocation_id
    try:
        request = _validate(rt, self, task_id, args, kwargs)
    except InvalidRequestError as exc:
        logger.warning("run %s rejected: %s", invocation_id, exc)
        try:
            failure = rt.run(_reject_invalid(rt, task_id, args, kwargs, exc))
        except (FencedError, InvocationOwnedError) as refused:
            raise _refuse(self, refused, run_copy=False) from refused
        enqueue_webhook(rt, failure)
        raise
    properties = getattr(self.request, "properties", None) or {}
    delivery_tag = properties.get("delivery_tag")
    try:
        completion, webhook = rt.run(_run_then_webhook(rt, request, invocation_id, delivery_tag))
    except (FencedError, InvocationOwnedError) as refused:
        raise _refuse(self, refused) from refused
    maybe_enqueue_after_run(rt, completion)  # a summary job when the app's checks pass
    enqueue_webhook(rt, completion, due=webhook)  # when the run has a webhook (workers.webhooks)
    result: dict[str, Any] = json.loads(completion.to_json())
    if completion.status in ("completed", "paused"):
        return result
    error = RunFailedError.from_completion(result)
    if completion.status == "cancelled":
        _revoke(self, error)
        raise Ignore(f"run {invocation_id} cancelled; task marked REVOKED")
    raise error


submit_run: Task = app.task(
    name=SUBMIT_RUN,
    bind=True,
    acks_late=True,
    # A run's outcome is final: a failed task's message is acknowledged, never requeued.
    acks_on_failure=True,
    reject_on_worker_lost=True,
    throws=(InvalidRequestError, RunFailedError),
    # Celery's strategy, but a message it cannot take as it is becomes a run that fails.
    Strategy="workers.task_messages:run_strategy",
)(_submit_run)
