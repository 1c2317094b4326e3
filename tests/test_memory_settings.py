"""AGENT_RUNNER_MEMORY_* are read and checked once, with messages that name the variable."""

from __future__ import annotations

import pytest

from runner_core.errors import ConfigurationError
from runner_core.memory_store import InMemoryMemoryService
from session_backends.memory_redis import RedisMemoryService
from workers.memory import build_memory
from workers.settings import Settings


def test_memory_is_off_unless_a_url_is_set() -> None:
    settings = Settings.from_env({})
    assert settings.memory_url is None
    assert build_memory(settings) is None


def test_the_url_and_the_cap_build_the_store() -> None:
    settings = Settings.from_env(
        {
            "AGENT_RUNNER_MEMORY_URL": "redis://127.0.0.1:6390/2",
            "AGENT_RUNNER_MEMORY_MAX_ITEMS": "500",
        }
    )
    memory = build_memory(settings)
    assert isinstance(memory, RedisMemoryService)
    assert memory.max_items_per_scope == 500
    local = build_memory(Settings.from_env({"AGENT_RUNNER_MEMORY_URL": "memory://"}))
    assert isinstance(local, InMemoryMemoryService) and local.embedder is None


def test_an_embedding_model_turns_embeddings_on() -> None:
    settings = Settings.from_env(
        {
            "AGENT_RUNNER_MEMORY_URL": "memory://",
            "AGENT_RUNNER_MEMORY_EMBEDDING_MODEL": "text-embedding-3-small",
            "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        }
    )
    memory = build_memory(settings)
    assert memory is not None and memory.embedder is not None


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"AGENT_RUNNER_MEMORY_URL": "mysql://db/x"}, "AGENT_RUNNER_MEMORY_URL"),
        ({"AGENT_RUNNER_MEMORY_MAX_ITEMS": "0"}, "AGENT_RUNNER_MEMORY_MAX_ITEMS"),
        ({"AGENT_RUNNER_MEMORY_MAX_ITEMS": "lots"}, "AGENT_RUNNER_MEMORY_MAX_ITEMS"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        Settings.from_env(env)
