"""Run messages that Celery cannot take as they are become runs that fail, never a dead worker.

Any Celery client in any language can send ``agent_runner.submit_run`` anything, and Celery 5.7
trusts the shape of a task message. Seen with a real worker:

- a protocol 2 body that is not ``[args, kwargs, embed]`` (a JSON object, a number, ``null``,
  a list of two), a ``timelimit`` header that is not a pair, no ``id`` header: the *worker*
  stops (``Unrecoverable error``) and its unacknowledged message goes back to the queue, so the
  next worker that takes it stops too;
- a body that is not JSON, a content type other than JSON, an ``eta`` or ``expires`` that is
  not a date: Celery drops the message with a log line, and a subscriber waits forever;
- a task ID that is not a string, empty or holding a lone surrogate: Celery cannot store its
  state, and no stream can be named after it.

:func:`run_strategy` is the run task's Celery strategy (``Task.Strategy``): Celery's own, after
one look at each message (:func:`inspect_message`). A message it cannot take as it is goes on
as a *stand-in*: the same delivery (tag, properties), a task ID Celery can use (the run's
:class:`~workers.requests.TaskID`), the arguments when they were readable, and the header
``agent_runner_problem`` saying what was wrong. The task publishes that as an
``invalid_request`` failure on the run's stream, and Celery acknowledges the delivery as for
any failed run (docs/workers.md, "Messages the worker cannot take").
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from celery.exceptions import InvalidTaskError
from celery.utils.time import maybe_iso8601
from celery.worker.strategy import default as default_strategy
from kombu.exceptions import ContentDisallowed, DecodeError
from kombu.message import Message

from runner_core.errors import lone_surrogate, safe_text

from .requests import TaskID
from .requests import json_kind as _kind

__all__ = ["PROBLEM_HEADER", "Inspection", "inspect_message", "run_strategy", "stand_in"]

logger = logging.getLogger(__name__)

#: The header of a stand-in message that says what was wrong with the message it stands for;
#: the task reads it as ``self.request.agent_runner_problem``.
PROBLEM_HEADER = "agent_runner_problem"
_MISSING = object()
_BODY_SHAPE = "Celery's [args, kwargs, options] (task protocol 2)"


@dataclass(frozen=True, slots=True)
class Inspection:
    """What :func:`inspect_message` found: ``problem`` (None: Celery can take the message as
    it is), the task ID as sent (``None`` when there was none) and the arguments when they
    were readable (else empty)."""

    problem: str | None
    task_id: object
    args: list[Any]
    kwargs: dict[str, Any]


def _fields_problem(fields: Mapping[str, Any]) -> str | None:
    """What Celery would choke on in the execution options of a message (protocol 2 headers,
    or a protocol 1 body)."""
    for name in ("eta", "expires"):
        value = fields.get(name)
        if value is None:
            continue
        try:
            maybe_iso8601(value)
        except (AttributeError, ValueError, TypeError, OverflowError):
            return f"the {name!r} option is not an ISO 8601 date (it is {_kind(value)})"
    limits = fields.get("timelimit")
    if limits is not None and not (
        isinstance(limits, list | tuple)
        and len(limits) == 2
        and all(
            limit is None or (isinstance(limit, int | float) and not isinstance(limit, bool))
            for limit in limits
        )
    ):
        return f"the 'timelimit' option is not a pair of numbers or nulls (it is {_kind(limits)})"
    return None


def _body(message: Message) -> tuple[object, str | None]:
    try:
        return message.decode(), None  # type: ignore[no-untyped-call]
    except ContentDisallowed:
        kind = safe_text(str(message.content_type))[:100]
        return None, f"the message's content type {kind!r} is not accepted; send JSON"
    except Exception as exc:  # DecodeError, or anything a broken body makes kombu raise
        reason = safe_text(str(exc))[:200]
        return None, f"the message body is not JSON ({type(exc).__name__}: {reason})"


def _arguments(args: object, kwargs: object) -> tuple[list[str], list[Any], dict[str, Any]]:
    """What Celery would choke on in a message's arguments, and the arguments it can pass."""
    problems = []
    if not isinstance(args, list | tuple):
        problems.append(f"the positional arguments are {_kind(args)}, not an array")
        args = []
    if not isinstance(kwargs, Mapping):
        problems.append(f"the keyword arguments are {_kind(kwargs)}, not an object")
        kwargs = {}
    elif "self" in kwargs:  # Celery's Task.__call__(self, ...) takes it for itself and fails
        problems.append("a keyword argument is named 'self', which Celery cannot pass on")
        kwargs = {name: value for name, value in kwargs.items() if name != "self"}
    return problems, list(args), dict(kwargs)


def inspect_message(message: Message, body: object = None) -> Inspection:
    """Look at a run message before Celery does; ``body`` is the decoded body of a protocol 1
    message (Celery passes it), None for protocol 2.

    Returns the :class:`Inspection`; it never raises.
    """
    headers = message.headers if isinstance(message.headers, Mapping) else {}
    payload: object = body
    problems: list[str] = []
    if body is None:
        payload, problem = _body(message)
        problems += [problem] if problem else []
    if isinstance(payload, Mapping) and (body is not None or "args" in payload):
        # Protocol 1, or a protocol 2 header with a protocol 1 body (Celery calls it hybrid).
        fields: Mapping[str, Any] = {**payload, **headers} if body is None else payload
        args, kwargs = payload.get("args", []), payload.get("kwargs", {})
    elif isinstance(payload, list | tuple) and len(payload) == 3:
        fields, (args, kwargs, embed) = headers, payload
        if embed is not None and not isinstance(embed, Mapping):
            problems.append(f"the options in the message body are {_kind(embed)}, not an object")
    else:
        fields, args, kwargs = headers, [], {}
        problems += [] if problems else [f"the message body is {_kind(payload)}, not {_BODY_SHAPE}"]
    argument_problems, args, kwargs = _arguments(args, kwargs)
    options_problem = _fields_problem(fields)
    problems += argument_problems + ([options_problem] if options_problem else [])
    task_id = fields.get("id", _MISSING)
    if task_id is _MISSING:
        problems.insert(0, "the message has no task ID")
        task_id = None
    elif not (isinstance(task_id, str) and task_id and lone_surrogate(task_id) is None):
        # Celery cannot carry this ID (result key, task events): the stand-in gets another.
        problems.insert(0, str(TaskID.read(task_id).problem))
    return Inspection("; ".join(problems) if problems else None, task_id, args, kwargs)


def stand_in(message: Message, task_name: str, inspection: Inspection) -> Message:
    """The protocol 2 message that goes to Celery instead of ``message``: the same delivery,
    a task ID Celery can use, the readable arguments and the :data:`PROBLEM_HEADER`."""
    task_id = inspection.task_id
    if not (isinstance(task_id, str) and task_id and lone_surrogate(task_id) is None):
        task_id = TaskID.read(task_id).invocation_id
    headers = {
        "lang": "py",
        "task": task_name,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "shadow": None,
        "eta": None,
        "expires": None,
        "retries": 0,
        "timelimit": [None, None],
        "argsrepr": "()",
        "kwargsrepr": "{}",
        "origin": "agent-runner stand-in",
        PROBLEM_HEADER: inspection.problem,
    }
    # ensure_ascii (the default): lone surrogates in the arguments stay escapes in the body.
    body = json.dumps([inspection.args, inspection.kwargs, None], default=str)
    return Message(  # type: ignore[no-untyped-call]
        body=body.encode(),
        delivery_tag=message.delivery_tag,
        content_type="application/json",
        content_encoding="utf-8",
        delivery_info=message.delivery_info,
        properties=message.properties,
        headers=headers,
        accept=message.accept,
        channel=message.channel,
    )


def run_strategy(task: Any, app: Any, consumer: Any, **options: Any) -> Callable[..., Any]:
    """The run task's strategy: Celery's default one, fed a stand-in for any message it
    cannot take as it is (module docstring). A message that still makes Celery fail in an
    unexpected way is dropped with the reason in the log: the worker never stops for one."""
    handle = default_strategy(task, app, consumer, **options)
    connection_errors = consumer.connection_errors

    def on_message(
        message: Message, body: Any, ack: Any, reject: Any, callbacks: Any, **kwargs: Any
    ) -> Any:
        try:
            inspection = inspect_message(message, body)
            if inspection.problem is not None:
                logger.warning(
                    "run message %s cannot be taken as it is (%s); it goes on as a run that "
                    "fails with that reason",
                    safe_text(repr(inspection.task_id))[:200],
                    inspection.problem,
                )
                message, body = stand_in(message, task.name, inspection), None
            return handle(message, body, ack, reject, callbacks, **kwargs)
        except (InvalidTaskError, ContentDisallowed, DecodeError):
            raise  # Celery's own handling: logged, the message rejected; the worker goes on
        except Exception:
            logger.exception(
                "run message %r could not be handed to Celery; dropped",
                getattr(message, "delivery_tag", None),
            )
            reject(logger, connection_errors, False)
            return None

    return on_message
