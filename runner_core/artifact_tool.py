"""The built-in ``load_artifacts`` tool: the model reads artifacts into the conversation.

Give it to an agent (``LLMAgent(..., tools=[load_artifacts])``) of a Runner that has an
artifact store. The model calls it with the names it wants (``[]`` lists what there is); the
tool's result holds each artifact's text, so it stays in the session's history like any other
tool result. Text-like content (``text/*``, JSON, XML, YAML, CSV, ...) is shown up to
:data:`MAX_LOADED_CHARS` characters per artifact; other content is described (type and size),
since a chat message carries text only.
"""

from __future__ import annotations

from typing import Final

from .artifacts import Artifact
from .errors import InvalidRequestError
from .tools import FunctionTool, ToolContext

__all__ = ["MAX_LOADED_CHARS", "load_artifacts"]

#: The most characters of one artifact a ``load_artifacts`` result shows.
MAX_LOADED_CHARS: Final = 100_000
_TEXT_TYPES: Final = (
    "application/json",
    "application/xml",
    "application/yaml",
    "application/x-yaml",
    "application/javascript",
    "application/csv",
    "application/sql",
    "application/toml",
)


def is_text(content_type: str) -> bool:
    """Whether content of this type reads as text."""
    kind = content_type.split(";", 1)[0].strip().lower()
    return (
        kind.startswith("text/")
        or kind in _TEXT_TYPES
        or kind.endswith("+json")
        or kind.endswith("+xml")
    )


def _shown(artifact: Artifact) -> str:
    head = (
        f"artifact {artifact.name!r} (version {artifact.version}, {artifact.content_type}, "
        f"{artifact.size} bytes)"
    )
    if not is_text(artifact.content_type):
        return f"{head}: binary content, not shown as text."
    text = artifact.text()
    if len(text) > MAX_LOADED_CHARS:
        cut = len(text) - MAX_LOADED_CHARS
        return (
            f"{head}, first {MAX_LOADED_CHARS} characters ({cut} more not shown):\n"
            + (text[:MAX_LOADED_CHARS])
        )
    return f"{head}:\n{text}"


async def _load_artifacts(names: list[str], context: ToolContext) -> str:
    """Load artifacts (files saved in this conversation) so you can read them.

    Args:
        names: the artifact names to load; an empty list lists the available names.
    """
    available = await context.list_artifacts()
    listing = ", ".join(repr(name) for name in available) or "none"
    if not names:
        return f"Available artifacts: {listing}."
    parts: list[str] = []
    for name in names:
        try:
            artifact = await context.load_artifact(name)
        except InvalidRequestError as exc:
            parts.append(f"artifact {name!r}: {exc}")
            continue
        if artifact is None:
            parts.append(f"artifact {name!r} does not exist. Available artifacts: {listing}.")
        else:
            parts.append(_shown(artifact))
    return "\n\n".join(parts)


#: The built-in tool: ``load_artifacts(names: list[str])``.
load_artifacts: Final = FunctionTool(_load_artifacts, name="load_artifacts")
