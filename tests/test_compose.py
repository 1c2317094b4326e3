"""docker-compose.yml: the services, their commands and health checks (parsed, not run)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
SERVICES = {"redis", "postgres", "run-worker", "summary-worker", "flower", "gateway"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def command(service: dict[str, Any]) -> list[str]:
    value = service["command"]
    return shlex.split(value) if isinstance(value, str) else list(value)


def test_services_are_all_there(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_health_check(compose: dict[str, Any], name: str) -> None:
    check = compose["services"][name]["healthcheck"]
    assert check["test"][0] in ("CMD", "CMD-SHELL")
    assert len(check["test"]) >= 2
    assert check["interval"] and check["retries"] >= 1


def test_redis_keeps_data_and_never_evicts(compose: dict[str, Any]) -> None:
    args = command(compose["services"]["redis"])
    assert args[0] == "redis-server"
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"


def test_run_workers_use_the_threads_pool_on_the_runs_queue(compose: dict[str, Any]) -> None:
    args = command(compose["services"]["run-worker"])
    assert args[:4] == ["celery", "-A", "workers.app", "worker"]
    assert args[args.index("-Q") + 1] == "runs"
    assert args[args.index("-P") + 1] == "threads"


def test_summary_workers_consume_the_eight_shards(compose: dict[str, Any]) -> None:
    args = command(compose["services"]["summary-worker"])
    assert args[:4] == ["celery", "-A", "workers.app", "worker"]
    assert args[args.index("-Q") + 1].split(",") == [f"summary.{i}" for i in range(8)]


def test_flower_requires_basic_auth_from_the_environment(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]
    assert command(flower)[:4] == ["celery", "-A", "workers.app", "flower"]
    auth = flower["environment"]["FLOWER_BASIC_AUTH"]
    assert re.fullmatch(r"\$\{FLOWER_BASIC_AUTH:\?.+\}", auth), "auth must come from the env"


def test_workers_wait_for_healthy_stores_and_share_one_configuration(
    compose: dict[str, Any],
) -> None:
    for name in ("run-worker", "summary-worker"):
        service = compose["services"][name]
        for store in ("redis", "postgres"):
            assert service["depends_on"][store]["condition"] == "service_healthy"
        env = service["environment"]
        assert env["AGENT_RUNNER_BROKER_URL"] == "redis://redis:6379/0"
        assert env["AGENT_RUNNER_SESSION_URL"].startswith("postgresql://")


def test_published_ports_bind_loopback_only(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on all interfaces"


def test_the_image_is_buildable_from_the_repository(compose: dict[str, Any]) -> None:
    assert compose["services"]["run-worker"]["build"] == "."
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "pip install" in dockerfile and "USER " in dockerfile


def test_no_variable_is_set_to_an_empty_value(compose: dict[str, Any]) -> None:
    """An empty OPENAI_BASE_URL is read by the openai client as a URL and every run fails; a
    variable the user did not set must stay unset in the containers (a key with no value)."""
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        for variable, value in env.items():
            text = "" if value is None else str(value)
            assert not re.search(r"\$\{\w+:?-\}", text), f"{name}: {variable}={text!r}"
            assert value is None or text != "", f"{name}: {variable} is set to ''"
    env = compose["services"]["run-worker"]["environment"]
    for variable in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        assert env[variable] is None, f"{variable} must pass through from the shell, or not exist"


def test_the_gateway_serves_on_all_container_interfaces_with_keys_from_the_env(
    compose: dict[str, Any],
) -> None:
    gateway = compose["services"]["gateway"]
    args = command(gateway)
    assert args[:2] == ["agent-runner", "serve"]
    assert args[args.index("--host") + 1] == "0.0.0.0"
    keys = gateway["environment"]["AGENT_RUNNER_GATEWAY_API_KEYS"]
    assert re.fullmatch(r"\$\{AGENT_RUNNER_GATEWAY_API_KEYS:\?.+\}", keys), "keys come from the env"
    assert "/healthz" in " ".join(gateway["healthcheck"]["test"])
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"


def test_the_webhook_secret_reaches_the_run_workers_and_the_gateway(
    compose: dict[str, Any],
) -> None:
    """The workers sign deliveries and the gateway accepts webhook URLs: both need it."""
    for name in ("run-worker", "gateway"):
        assert "AGENT_RUNNER_WEBHOOK_SECRET" in compose["services"][name]["environment"]
