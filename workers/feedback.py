"""Feedback from any process: the Celery task ``agent_runner.add_feedback``, and long-term
memory built from the worker settings.

Any service sends it by name, on the run queue (``AGENT_RUNNER_QUEUE``, default ``runs``)::

    app.send_task(
        "agent_runner.add_feedback",
        kwargs={"app_name": "helpdesk", "user_id": "alice", "invocation_id": "...",
                "step_id": "model:2", "kind": "correction",
                "content": "Ask for the printer's IP address first."},
        queue="runs",
    )

A run worker records it with :func:`runner_core.feedback.add_feedback` against its trace store
and memory (``AGENT_RUNNER_TRACE_URL``, ``AGENT_RUNNER_MEMORY_URL``) and returns
:meth:`~runner_core.feedback.FeedbackResult.to_dict` (when a result backend is set). Bad input
fails the task (``InvalidRequestError``, ``TraceNotFoundError``, ``InvocationOwnedError``) with
nothing written; it is never retried. ``distil=True`` has the worker's model
(``AGENT_RUNNER_MODEL``) distil the rule from the feedback.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from celery import Task

from runner_core.errors import (
    ConfigurationError,
    InvalidRequestError,
    InvocationOwnedError,
    TraceNotFoundError,
)
from runner_core.feedback import FeedbackResult, add_feedback
from runner_core.memory import MemoryService
from runner_core.model import Model
from runner_core.traces import TraceStore
from runner_core.wire import ADD_FEEDBACK

from .app import app
from .memory import build_memory
from .settings import Settings

__all__ = ["ADD_FEEDBACK", "give_feedback", "record_feedback", "submit_feedback"]

logger = logging.getLogger(__name__)


async def record_feedback(
    traces: TraceStore | None,
    memory: MemoryService | None,
    distiller: Model | None,
    **feedback: Any,
) -> FeedbackResult:
    """:func:`~runner_core.feedback.add_feedback` with a worker's (or the CLI's) stores.

    Raises:
        ConfigurationError: traces are off, so there is no step to give feedback on.
        And what add_feedback raises.
    """
    if traces is None:
        raise ConfigurationError(
            "feedback needs execution traces: they are off here (AGENT_RUNNER_TRACES=off); "
            "turn them on, with AGENT_RUNNER_TRACE_URL where the runs' traces are."
        )
    return await add_feedback(traces, memory, distiller=distiller, **feedback)


def give_feedback(
    app_name: str,
    user_id: str,
    invocation_id: str,
    step_id: str,
    kind: str,
    content: str,
    *,
    settings: Settings | None = None,
) -> FeedbackResult:
    """Record feedback from this process, against the stores the settings name
    (``AGENT_RUNNER_TRACE_URL``, ``AGENT_RUNNER_MEMORY_URL``): what ``agent-runner feedback``
    does. Without memory configured, only the feedback step is recorded.

    Raises:
        What :func:`record_feedback` raises.
    """
    settings = settings or Settings.from_env()

    async def go() -> FeedbackResult:
        from session_backends.traces import trace_store_from_url

        traces = (
            None
            if settings.trace_url is None
            else trace_store_from_url(settings.trace_url, ttl=settings.trace_ttl_s)
        )
        memory = build_memory(settings)
        try:
            return await record_feedback(
                traces,
                memory,
                None,
                app_name=app_name,
                user_id=user_id,
                invocation_id=invocation_id,
                step_id=step_id,
                kind=kind,
                content=content,
            )
        finally:
            for store in (traces, memory):
                if store is not None:
                    await store.close()

    return asyncio.run(go())


def _add_feedback(
    self: Task,
    app_name: str,
    user_id: str,
    invocation_id: str,
    step_id: str,
    kind: str,
    content: str,
    distil: bool = False,
) -> dict[str, Any]:
    """Record feedback on a step of a run; returns what was stored (FeedbackResult.to_dict)."""
    from .runtime import get_runtime

    rt = get_runtime()
    distiller = None
    if distil:
        distiller = rt.agents.get(app_name).model
        if distiller is None:
            raise InvalidRequestError(
                f"the agent of app {app_name!r} has no model to distil the rule with; send "
                "distil=False."
            )
    try:
        result = rt.run(
            record_feedback(
                rt.traces,
                rt.memory,
                distiller,
                app_name=app_name,
                user_id=user_id,
                invocation_id=invocation_id,
                step_id=step_id,
                kind=kind,
                content=content,
            )
        )
    except (InvalidRequestError, ConfigurationError) as exc:
        logger.warning("feedback on run %s refused: %s", invocation_id, exc)
        raise
    logger.info(
        "feedback on run %s step %s recorded (%s)",
        invocation_id,
        step_id,
        "experience " + result.experience.id if result.experience else "no experience",
    )
    return result.to_dict()


submit_feedback: Task = app.task(
    name=ADD_FEEDBACK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    throws=(InvalidRequestError, TraceNotFoundError, InvocationOwnedError, ConfigurationError),
)(_add_feedback)
