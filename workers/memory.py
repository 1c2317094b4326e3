"""Long-term memory as the worker settings configure it (``AGENT_RUNNER_MEMORY_*``)."""

from __future__ import annotations

from typing import Any

from runner_core.memory import MemoryService

from .settings import Settings

__all__ = ["build_memory"]


def build_memory(settings: Settings) -> MemoryService | None:
    """The long-term memory ``settings`` configure (``AGENT_RUNNER_MEMORY_URL``), or None
    when memory is off. Nothing is connected here.

    Raises:
        ConfigurationError: a bad URL or option.
    """
    if settings.memory_url is None:
        return None
    from session_backends.memories import memory_from_url

    options: dict[str, Any] = {"max_items_per_scope": settings.memory_max_items_per_scope}
    if settings.memory_embedding_model is not None:
        from runner_core.embeddings import OpenAIEmbedder

        options["embedder"] = OpenAIEmbedder(
            settings.memory_embedding_model,
            base_url=settings.openai_base_url,
            api_key=settings.openai_api_key,
        )
    return memory_from_url(settings.memory_url, **options)
