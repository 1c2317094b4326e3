"""Shared test set-up.

Server fixtures (real redis-server, real PostgreSQL) live in tests/services.py, the real MariaDB
in tests/mariadb.py, a three-node Redis Cluster in tests/redis_cluster.py, Celery worker fixtures
in tests/celery_workers.py; all are loaded as plugins here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

pytest_plugins = [
    "tests.services",
    "tests.mariadb",
    "tests.redis_cluster",
    "tests.celery_workers",
    "tests.gateway_support",
    "tests.xdist_groups",
]

# Nothing in the tests may reach a real LLM: point the openai client's defaults at a closed
# loopback port, so a model built without an explicit base_url fails fast instead of calling out.
REFUSING_BASE_URL = "http://127.0.0.1:9/v1"


@pytest.fixture(autouse=True)
def _refuse_real_llm(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("OPENAI_BASE_URL", REFUSING_BASE_URL)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    yield
    assert os.environ.get("OPENAI_BASE_URL", REFUSING_BASE_URL).startswith("http://127.0.0.1"), (
        "a test pointed OPENAI_BASE_URL away from loopback"
    )
