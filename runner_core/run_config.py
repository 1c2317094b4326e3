"""Per-run options: what one run may choose without a new agent.

``Runner.run(..., run_config=RunConfig(...))`` in-process, or the same fields as a JSON object
through ``submit_run(..., run_config={...})``. Every field is optional; what is not set keeps
the agent's own setting.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InvalidRequestError, describe_validation_error
from .model import GenerationConfig

__all__ = ["RunConfig", "coerce_run_config"]


class RunConfig(BaseModel):
    """Options for one run (JSON only; every field optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    streaming: bool | None = Field(
        default=None,
        description="Stream the model's text as message.delta events (default: the agent's).",
    )
    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="The model name for this run's calls (default: the agent model's).",
    )
    generation: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Generation settings laid over the agent's (temperature, top_p, max_tokens, stop, "
            "parallel_tool_calls, extra_body)."
        ),
    )
    max_iterations: int | None = Field(
        default=None, ge=1, le=1000, description="The most model calls this run may make."
    )
    runtime_state: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Values from the caller that tools and callbacks of this run read "
            "(ctx.runtime_state, ToolContext.runtime_state); never stored or published."
        ),
    )

    def generation_over(self, base: GenerationConfig) -> GenerationConfig:
        """The agent's generation settings with this run's laid over them.

        Raises:
            InvalidRequestError: an unknown or invalid generation setting, naming it.
        """
        if not self.generation and self.streaming is None:
            return base
        fields = base.model_dump()
        fields.update(self.generation)
        if self.streaming is not None:
            fields["stream"] = self.streaming
        try:
            return GenerationConfig.model_validate(fields)
        except ValidationError as exc:
            raise InvalidRequestError(
                "run_config.generation: "
                + describe_validation_error(exc, whole="run_config.generation")
            ) from exc


def coerce_run_config(value: object) -> RunConfig:
    """A :class:`RunConfig` from itself, a JSON object (dict) or None.

    Raises:
        InvalidRequestError: not an object of the fields above, naming what is wrong.
    """
    if value is None:
        return RunConfig()
    if isinstance(value, RunConfig):
        config = value
    elif isinstance(value, dict):
        try:
            config = RunConfig.model_validate(value)
        except ValidationError as exc:
            raise InvalidRequestError(
                "run_config: " + describe_validation_error(exc, whole="run_config")
            ) from exc
    else:
        raise InvalidRequestError(
            f"run_config must be a RunConfig or a JSON object, got {type(value).__name__}."
        )
    if "stream" in config.generation:
        raise InvalidRequestError(
            "run_config.generation cannot set 'stream'; use run_config.streaming."
        )
    config.generation_over(GenerationConfig())  # unknown or invalid settings fail here
    return config
