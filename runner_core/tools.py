"""Function tools: JSON Schema from type hints, arguments validated before the call.

::

    @tool
    def add(a: int, b: int) -> int:
        \"\"\"Add two integers.

        Args:
            a: the first addend.
            b: the second addend.
        \"\"\"
        return a + b

    @tool(requires_confirmation=True, name="refund")
    async def refund_order(order_id: str, context: ToolContext) -> str: ...

A tool that needs a person's confirmation pauses the run (``run.paused``). Whether a call needs
it may depend on its arguments, and the tool says which arguments the person may change when
confirming (any other change is refused)::

    @tool(requires_confirmation=lambda args: args["amount"] > 100, editable_params=["amount"])
    def transfer(account: str, amount: int) -> str: ...

A parameter annotated :class:`ToolContext` is not part of the schema; it receives the
invocation ID and the session state. Writes to ``context.state`` become the tool result's
``state_delta``, which the Runner stores with the result (``temp:`` keys live only for the run).

A tool whose result was stored never runs again, but a call cut off before its result was
stored (a worker killed or partitioned mid-call) runs again on the worker that takes the run
over. Tools with side effects pass ``context.idempotency_key`` (the same on every attempt of one
call) to whatever they change, so the repeat has no second effect::

    @tool
    def refund(order_id: str, context: ToolContext) -> str:
        payments.refund(order_id, idempotency_key=context.idempotency_key)
        return "refunded"
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any, TypeAlias, get_args, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from .artifacts import NO_ARTIFACT_SERVICE, Artifact, ArtifactScope
from .errors import (
    InvalidRequestError,
    ToolArgumentsError,
    ToolExecutionError,
    describe_validation_error,
    shown,
)
from .events import Usage
from .plugins import CallbackError, call_hook

__all__ = ["Confirmation", "FunctionTool", "ToolContext", "ToolState", "tool"]

_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")

#: Whether a call needs a person's confirmation: always, never, or a function of the call's
#: validated arguments (plain or async) that says so.
Confirmation: TypeAlias = bool | Callable[[dict[str, Any]], bool | Awaitable[bool]]


class ToolState(MutableMapping[str, Any]):
    """The session state as a tool sees it: reads fall through to the session, writes are
    recorded in ``delta``."""

    def __init__(self, base: Mapping[str, Any]) -> None:
        self._base = base
        self.delta: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key in self.delta:
            return self.delta[key]
        return self._base[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.delta[key] = value

    def __delitem__(self, key: str) -> None:
        raise TypeError("state keys cannot be deleted by a tool; set the key to None instead")

    def __iter__(self) -> Iterator[str]:
        yield from self.delta
        yield from (k for k in self._base if k not in self.delta)

    def __len__(self) -> int:
        return len(set(self._base) | set(self.delta))


class ToolContext:
    """What a tool may know about its run: IDs and the session state.

    ``idempotency_key`` (``{invocation_id}:{tool_call_id}``) is stable across every attempt
    of one tool call, including a rerun on another worker after a crash or a partition.
    """

    __slots__ = (
        "_end_invocation",
        "_escalate",
        "_saves",
        "app_name",
        "artifacts",
        "invocation_id",
        "runtime_state",
        "session_id",
        "state",
        "tool_call_id",
        "usage",
        "user_id",
    )

    def __init__(
        self,
        *,
        app_name: str,
        user_id: str,
        session_id: str,
        invocation_id: str,
        tool_call_id: str,
        state: Mapping[str, Any],
        runtime_state: Mapping[str, Any] | None = None,
        end_invocation: Callable[[], None] | None = None,
        escalate: Callable[[], None] | None = None,
        artifacts: ArtifactScope | None = None,
    ) -> None:
        self.app_name = app_name
        self.user_id = user_id
        self.session_id = session_id
        self.invocation_id = invocation_id
        self.tool_call_id = tool_call_id
        self.state = ToolState(state)
        #: What the caller passed for this run (``run_config.runtime_state``); read-only,
        #: never stored or published.
        self.runtime_state: Mapping[str, Any] = runtime_state or {}
        #: The model calls this tool made (:meth:`add_usage`); None when it made none.
        self.usage: Usage | None = None
        self._end_invocation = end_invocation
        self._escalate = escalate
        #: The session's artifacts, with this call's saves recorded (None: the run has no
        #: artifact store; the methods below then raise).
        self.artifacts = artifacts
        self._saves = 0

    def end_invocation(self) -> None:
        """End the run once this tool's result is recorded: no more model or tool calls."""
        if self._end_invocation is not None:
            self._end_invocation()

    def escalate(self) -> None:
        """Stop the enclosing :class:`~runner_core.workflow.LoopAgent` from repeating: the
        agent calling this tool finishes its turn, then the loop (and any sequential agent
        between it and this agent) runs no further sub-agents."""
        if self._escalate is not None:
            self._escalate()

    def add_usage(self, usage: Usage) -> None:
        """Count model calls this tool made (an agent it ran, ``LLMAgent.call``) in the run's
        usage: the tool's ``tool.result`` carries the sum, whether the call succeeds or fails."""
        self.usage = usage if self.usage is None else self.usage + usage

    @property
    def artifact_delta(self) -> dict[str, int]:
        """The artifact versions this call saved: ``{name: version}``."""
        return dict(self.artifacts.delta) if self.artifacts is not None else {}

    def _artifact_scope(self) -> ArtifactScope:
        if self.artifacts is None:
            raise ToolExecutionError(NO_ARTIFACT_SERVICE)
        return self.artifacts

    async def save_artifact(
        self, name: str, data: bytes | str, *, content_type: str | None = None
    ) -> int:
        """Save a new version of the artifact ``name`` (``user:...`` for the user's scope);
        returns its version. The call's ``tool.result`` records it in ``artifact_delta``.

        A save is keyed by the call's :attr:`idempotency_key`, its place among the call's
        saves and its bytes, so a call run again after its worker died (the same saves of the
        same bytes) gets the versions of the first attempt back instead of adding new ones.

        Raises:
            InvalidRequestError: a bad name or content type, or data over the size limit.
            ToolExecutionError: the run has no artifact store.
        """
        scope = self._artifact_scope()
        digest = hashlib.blake2b(digest_size=20)
        digest.update(f"{self.idempotency_key}\x00{self._saves}\x00".encode())
        if isinstance(data, str):
            digest.update(data.encode("utf-8", "surrogatepass"))
        elif isinstance(data, bytes | bytearray | memoryview):
            digest.update(data)
        key = digest.hexdigest()
        self._saves += 1
        saved = await scope.save(name, data, content_type=content_type, idempotency_key=key)
        return saved.version

    async def load_artifact(self, name: str, *, version: int | None = None) -> Artifact | None:
        """The latest version of ``name`` (or ``version``); None when there is none."""
        return await self._artifact_scope().load(name, version=version)

    async def list_artifacts(self) -> list[str]:
        """The artifact names this session sees (``user:...`` ones included), sorted."""
        return await self._artifact_scope().names()

    @property
    def idempotency_key(self) -> str:
        """``{invocation_id}:{tool_call_id}``: the same for every attempt of this call, so a
        side effect keyed by it happens once even if the call runs again."""
        return f"{self.invocation_id}:{self.tool_call_id}"


def _docstring_parts(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into (summary, {param: description})."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    summary: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    for line in lines:
        stripped = line.strip()
        if stripped.endswith(":") and stripped[:-1] in ("Args", "Arguments", "Parameters"):
            section = "args"
            continue
        if stripped.endswith(":") and stripped[:-1] in ("Returns", "Raises", "Yields", "Example"):
            section = "other"
            continue
        if section is None:
            summary.append(line)
        elif section == "args" and stripped:
            match = re.match(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", stripped)
            if match and not line.startswith(" " * 8):
                current = match.group(1).lstrip("*")
                params[current] = match.group(2)
            elif current:
                params[current] = f"{params[current]} {stripped}".strip()
    return "\n".join(summary).strip(), params


def _is_context_type(annotation: Any) -> bool:
    """``ToolContext`` or an optional ``ToolContext``."""
    if annotation is ToolContext:
        return True
    return ToolContext in get_args(annotation)


class _ArgsBase(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _clean_schema(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _clean_schema(v) for k, v in node.items() if k != "title"}
    if isinstance(node, list):
        return [_clean_schema(v) for v in node]
    return node


class FunctionTool:
    """A Python function the model can call.

    Args:
        fn: a sync or async function. Sync functions run in a worker thread so they never
            block the event loop that other runs share.
        name: the name the model sees (default: the function's name).
        description: default: the docstring's summary.
        requires_confirmation: pause the run before calling it until the caller confirms:
            True, False, or a function of the call's validated arguments (plain or async)
            that returns True for the calls that need it. If it raises, the run fails
            (``callback_error``).
        editable_params: the parameters a person may change when confirming a call
            (``{"arguments": {...}}``); an edit of any other is refused. Default: all of
            them; ``[]``: approve or refuse only.

    Raises:
        InvalidRequestError: the name is not 1-64 letters, digits, ``_`` or ``-``, a
            parameter has no type hint, ``requires_confirmation`` is neither a bool nor a
            function, or ``editable_params`` names a parameter the function does not have.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        requires_confirmation: Confirmation = False,
        editable_params: Iterable[str] | None = None,
    ) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        if not _NAME_RE.fullmatch(self.name):
            raise InvalidRequestError(
                f"tool name {self.name!r} is invalid: use 1-64 letters, digits, '_' or '-'."
            )
        summary, param_docs = _docstring_parts(fn.__doc__)
        self.description = description if description is not None else summary
        if not (isinstance(requires_confirmation, bool) or callable(requires_confirmation)):
            raise InvalidRequestError(
                f"tool {self.name!r}: requires_confirmation must be True, False or a function "
                f"(args) -> bool, got {type(requires_confirmation).__name__}."
            )
        self.requires_confirmation: Confirmation = requires_confirmation
        self.is_async = inspect.iscoroutinefunction(fn)
        self._context_param: str | None = None

        hints = get_type_hints(fn)
        fields: dict[str, Any] = {}
        for param in inspect.signature(fn).parameters.values():
            annotation = hints.get(param.name, inspect.Parameter.empty)
            if _is_context_type(annotation):
                self._context_param = param.name
                continue
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            if annotation is inspect.Parameter.empty:
                raise InvalidRequestError(
                    f"tool {self.name!r}: parameter {param.name!r} has no type hint; "
                    "add one so its JSON Schema can be derived."
                )
            default = ... if param.default is inspect.Parameter.empty else param.default
            fields[param.name] = (
                annotation,
                Field(default, description=param_docs.get(param.name)),
            )
        self.args_model: type[BaseModel] = create_model(
            f"{self.name}_arguments", __base__=_ArgsBase, **fields
        )
        schema = _clean_schema(self.args_model.model_json_schema())
        schema.setdefault("properties", {})
        self.parameters: dict[str, Any] = schema
        #: The parameters a person may change when confirming a call, in declaration order.
        self.editable_params: tuple[str, ...] = self._checked_editable(editable_params)

    def _checked_editable(self, names: Iterable[str] | None) -> tuple[str, ...]:
        params = tuple(self.args_model.model_fields)
        if names is None:
            return params
        if isinstance(names, str):
            raise InvalidRequestError(
                f"tool {self.name!r}: editable_params must be a list of parameter names, "
                f"not the string {names!r}; write [{names!r}]."
            )
        wanted = list(names)
        unknown = [name for name in wanted if name not in params]
        if unknown:
            raise InvalidRequestError(
                f"tool {self.name!r}: editable_params names {', '.join(map(shown, unknown))}, "
                f"which it does not have; its parameters: {', '.join(params) or 'none'}."
            )
        return tuple(name for name in params if name in wanted)

    def openai_schema(self) -> dict[str, Any]:
        """The entry for the ``tools`` list of a chat-completions request."""
        function: dict[str, Any] = {"name": self.name, "parameters": self.parameters}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}

    def parse_arguments(self, arguments: str | Mapping[str, Any]) -> dict[str, Any]:
        """Decode and validate the model's arguments.

        Raises:
            ToolArgumentsError: not a JSON object, or failing the parameter schema; the message
                says which field is wrong so the model can correct its call.
        """
        if isinstance(arguments, str):
            try:
                decoded = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as exc:
                raise ToolArgumentsError(
                    f"arguments for tool {self.name!r} are not valid JSON ({exc.msg} at "
                    f"position {exc.pos}); send a JSON object matching the tool's parameters."
                ) from exc
        else:
            decoded = dict(arguments)
        if not isinstance(decoded, dict):
            raise ToolArgumentsError(
                f"arguments for tool {self.name!r} must be a JSON object, got "
                f"{type(decoded).__name__}."
            )
        try:
            model = self.args_model.model_validate(decoded)
        except ValidationError as exc:
            problems = describe_validation_error(exc, whole="arguments")
            raise ToolArgumentsError(
                f"invalid arguments for tool {self.name!r}: {problems}."
            ) from exc
        return {name: getattr(model, name) for name in type(model).model_fields}

    async def needs_confirmation(self, arguments: str | Mapping[str, Any]) -> bool:
        """Whether a call with these arguments waits for a person's confirmation.

        A ``requires_confirmation`` function gets the validated arguments. A call whose
        arguments are invalid never runs (the model gets the error), so it is not asked about.

        Raises:
            CallbackError: the function raised or did not return a bool; the run fails.
        """
        rule = self.requires_confirmation
        if isinstance(rule, bool):
            return rule
        try:
            args = self.parse_arguments(arguments)
        except ToolArgumentsError:
            return False
        where = f"tool {self.name!r} requires_confirmation"
        answer = await call_hook(where, rule, args)
        if not isinstance(answer, bool):
            raise CallbackError(
                f"{where} returned {type(answer).__name__}; return True (ask) or False (run)."
            )
        return answer

    def check_edit(
        self, call_id: str, original: str | Mapping[str, Any], edited: str | Mapping[str, Any]
    ) -> None:
        """Refuse a confirmation whose arguments change a parameter that is not editable.

        A parameter is changed when its value differs from the model's (a missing value counts
        as the parameter's default). Edited arguments that are not a JSON object are left to
        :meth:`parse_arguments`, which refuses them when the call runs.

        Raises:
            InvalidRequestError: naming the call, the parameters and the editable ones.
        """
        before, after = _decoded(original), _decoded(edited)
        if after is None:
            return
        before = before or {}
        fields = self.args_model.model_fields
        extra = sorted((set(before) | set(after)) - set(fields))
        changed = []
        for name in [*fields, *extra]:
            field = fields.get(name)
            unset = None
            if field is not None and not field.is_required():
                unset = field.get_default(call_default_factory=True)
            if before.get(name, unset) != after.get(name, unset):
                changed.append(name)
        refused = [name for name in changed if name not in self.editable_params]
        if refused:
            editable = ", ".join(self.editable_params) or "none (approve or refuse it)"
            raise InvalidRequestError(
                f"tool_confirmations[{call_id!r}] changes {', '.join(map(shown, refused))} of "
                f"tool {self.name!r}, which a person may not edit; editable parameters: "
                f"{editable}."
            )

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        """Run the tool with validated arguments.

        Raises:
            ToolExecutionError: the function raised; the original is the ``__cause__``.
        """
        kwargs = dict(arguments)
        if self._context_param is not None:
            kwargs[self._context_param] = context
        try:
            if self.is_async:
                return await self.fn(**kwargs)
            return await asyncio.to_thread(self.fn, **kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise ToolExecutionError(
                f"tool {self.name!r} raised {type(exc).__name__}: {exc}"
            ) from exc

    def __repr__(self) -> str:
        confirm = self.requires_confirmation
        return f"FunctionTool(name={self.name!r}, requires_confirmation={confirm!r})"


def _decoded(arguments: str | Mapping[str, Any]) -> dict[str, Any] | None:
    """Arguments as a dict, or None when they are not a JSON object."""
    if not isinstance(arguments, str):
        return dict(arguments)
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


@overload
def tool(fn: Callable[..., Any], /) -> FunctionTool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    requires_confirmation: Confirmation = False,
    editable_params: Iterable[str] | None = None,
) -> Callable[[Callable[..., Any]], FunctionTool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    requires_confirmation: Confirmation = False,
    editable_params: Iterable[str] | None = None,
) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
    """Make a :class:`FunctionTool` from a function: ``@tool`` or ``@tool(...)``."""

    def wrap(f: Callable[..., Any]) -> FunctionTool:
        return FunctionTool(
            f,
            name=name,
            description=description,
            requires_confirmation=requires_confirmation,
            editable_params=editable_params,
        )

    if fn is not None:
        return wrap(fn)
    return wrap


def render_tool_result(value: Any) -> str:
    """What the model reads as the tool's output: text as is, anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return str(value)

