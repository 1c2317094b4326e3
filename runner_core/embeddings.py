"""Embeddings for memory search: an :class:`Embedder` turns texts into vectors, and
:func:`rank_by_similarity` ranks stored vectors against a query's by an exact scan.

:class:`OpenAIEmbedder` calls the ``/embeddings`` endpoint of any OpenAI-compatible server
through the ``openai`` client (the same client the models use). The scan needs numpy (the
``embeddings`` extra: ``pip install 'agent-runner[embeddings]'``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import openai

from .errors import ConfigurationError, ModelConnectionError, ModelError

__all__ = ["Embedder", "OpenAIEmbedder", "rank_by_similarity"]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors of one fixed length."""

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order."""
        ...

    async def close(self) -> None: ...


class OpenAIEmbedder:
    """Embeddings from an OpenAI-compatible ``/embeddings`` endpoint.

    Args:
        model: the embedding model's name (``text-embedding-3-small``).
        base_url, api_key: the endpoint; default the ``OPENAI_*`` environment variables.
        dimensions: ask for vectors of this length (models that support it).
        timeout: seconds per call.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        dimensions: int | None = None,
        timeout: float = 30.0,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ConfigurationError("OpenAIEmbedder needs the embedding model's name.")
        self.model = model
        self.dimensions = dimensions
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key or "not-needed", timeout=timeout, max_retries=2
        )

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """Raises:
        ModelError: the endpoint refused or failed (status and message, never the key)."""
        options: dict[str, Any] = {}
        if self.dimensions is not None:
            options["dimensions"] = self.dimensions
        try:
            response = await self._client.embeddings.create(
                model=self.model, input=texts, **options
            )
        except openai.APIConnectionError as exc:
            raise ModelConnectionError(f"the embeddings endpoint is unreachable: {exc}") from exc
        except openai.APIError as exc:
            raise ModelError(f"the embeddings endpoint failed: {exc}") from exc
        ordered = sorted(response.data, key=lambda item: item.index)
        if len(ordered) != len(texts):
            raise ModelError(
                f"the embeddings endpoint returned {len(ordered)} vectors for {len(texts)} texts."
            )
        return [list(item.embedding) for item in ordered]

    async def close(self) -> None:
        await self._client.close()


def rank_by_similarity(
    query: Sequence[float], stored: Sequence[tuple[str, Sequence[float]]], limit: int
) -> list[tuple[str, float]]:
    """The ``limit`` stored vectors most similar to ``query`` (cosine), best first, as
    ``(id, similarity)``: an exact scan of every vector. Vectors of another length than the
    query's (another model's) are left out.

    Raises:
        ConfigurationError: numpy is not installed.
    """
    try:
        import numpy as np
    except ImportError as exc:  # pragma: no cover - numpy is in the dev and embeddings extras
        raise ConfigurationError(
            "memory search by embeddings needs numpy: pip install 'agent-runner[embeddings]'."
        ) from exc
    same = [(item_id, vector) for item_id, vector in stored if len(vector) == len(query)]
    if not same:
        return []
    matrix = np.asarray([vector for _, vector in same], dtype=np.float32)
    q = np.asarray(query, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1) * (np.linalg.norm(q) or 1.0)
    similarity = (matrix @ q) / np.where(norms == 0, 1.0, norms)
    order = np.argsort(-similarity, kind="stable")[:limit]
    return [(same[i][0], float(similarity[i])) for i in order]
