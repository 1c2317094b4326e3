"""The Celery task: ``agent_runner.submit_run``.

Producers call ``submit_run.delay(app_name, user_id, session_id, message, *, messages=None,
resume=False, tool_confirmations=None, request_id=None, multitask_strategy="enqueue",
run_timeout_s=None)`` (or ``send_task("agent_runner.submit_run", ..., queue="runs")`` from any
Celery client: name the queue, ``AGENT_RUNNER_QUEUE``, or the task lands on Celery's default one).
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
event and a ``failed`` completion first. Whatever the state, the message is acknowledged once:
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
from celery.exceptions import Ignore

from runner_core.errors import (
    AgentRunnerError,
    FencedError,
    InvalidRequestError,
    InvocationOwnedError,
    RunFailedError,
)
from runner_core.events import Event, EventError
from runner_core.session import MAX_ID_LENGTH

from .app import app
from .bus import invocation_owned, owner_identity
from .execution import RunLabels, execute_run, publish_failure
from .requests import POSITIONAL_FIELDS, RunRequest
from .runtime import WorkerRuntime, get_runtime
from .summaries import maybe_enqueue_after_run

__all__ = ["SUBMIT_RUN", "submit_run"]

logger = logging.getLogger(__name__)

SUBMIT_RUN = "agent_runner.submit_run"


def _label(value: Any) -> str:
    """A field of an invalid request as an event can carry it."""
    return value[:MAX_ID_LENGTH] if isinstance(value, str) else ""


async def _reject_invalid(
    rt: WorkerRuntime,
    invocation_id: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    error: InvalidRequestError,
) -> Event:
    fields = dict(zip(POSITIONAL_FIELDS, args, strict=False)) | dict(kwargs)
    request_id = fields.get("request_id")
    labels = RunLabels(
        app_name=_label(fields.get("app_name")),
        user_id=_label(fields.get("user_id")),
        session_id=_label(fields.get("session_id")),
        request_id=request_id[:MAX_ID_LENGTH] if isinstance(request_id, str) else None,
    )
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
    return await publish_failure(rt, invocation_id, labels, error_event)


def _validate(rt: WorkerRuntime, args: Sequence[Any], kwargs: Mapping[str, Any]) -> RunRequest:
    request = RunRequest.from_task_arguments(args, kwargs)
    if request.app_name not in rt.agents.app_names:
        raise InvalidRequestError(
            f"unknown app_name {request.app_name!r}; the workers serve "
            f"{', '.join(rt.agents.app_names)}. Add {request.app_name}=module:function to "
            "AGENT_RUNNER_AGENTS on the workers."
        )
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


def _refuse(self: Task, exc: AgentRunnerError) -> Ignore:
    """A delivery that must leave no trace: a stale one (``FencedError``: another delivery
    owns the run) or one for an invocation ID bound to another identity
    (``InvocationOwnedError``). Logged with the reason and sent as ``task-rejected`` (Flower
    shows it; it never outranks the owner's own state there); the caller raises the returned
    ``Ignore``, so no state or result of the task ID, which is the owner's, is written.
    """
    reason = "stale delivery" if isinstance(exc, FencedError) else "invocation ID of another"
    logger.warning("run %s: delivery refused (%s): %s", self.request.id, reason, exc)
    try:
        self.send_event("task-rejected", requeue=False, reason=f"{reason}: {exc}")
    except Exception as send_exc:  # the broker is down: the log still says it
        logger.warning("run %s: no task-rejected event sent (%s)", self.request.id, send_exc)
    return Ignore(f"run {self.request.id}: delivery refused ({reason})")


def _submit_run(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run an agent on a session; return the ``runner.completion`` event as a dict.

    Arguments (positional or keyword): ``app_name``, ``user_id``, ``session_id`` (``""``: a
    new session named after the invocation ID), ``message`` (text or an OpenAI-style user
    message dict; None only with ``resume``/``tool_confirmations``). Keyword only:
    ``messages``, ``resume``, ``tool_confirmations``, ``request_id``, ``multitask_strategy``
    (``enqueue`` | ``reject`` | ``interrupt``), ``run_timeout_s``.

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
    invocation_id = str(self.request.id)
    try:
        request = _validate(rt, args, kwargs)
    except InvalidRequestError as exc:
        logger.warning("run %s rejected: %s", invocation_id, exc)
        try:
            rt.run(_reject_invalid(rt, invocation_id, args, kwargs, exc))
        except (FencedError, InvocationOwnedError) as refused:
            raise _refuse(self, refused) from refused
        raise
    properties = getattr(self.request, "properties", None) or {}
    delivery_tag = properties.get("delivery_tag")
    try:
        completion = rt.run(execute_run(rt, request, invocation_id, delivery_tag=delivery_tag))
    except (FencedError, InvocationOwnedError) as refused:
        raise _refuse(self, refused) from refused
    maybe_enqueue_after_run(rt, completion)  # a summary job when the app's checks pass
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
)(_submit_run)
