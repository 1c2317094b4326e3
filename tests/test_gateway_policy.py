"""The gateway's rules that need no server: API key configuration, the webhook URL policy
(no server-side request forgery), signatures and backoff, and the wire names they use."""

from __future__ import annotations

import hashlib
import hmac

import httpx2
import pytest

from gateway.settings import GatewaySettings, parse_api_keys
from runner_core import wire
from runner_core.errors import ConfigurationError
from workers.webhooks import (
    WebhookRefusedError,
    WebhookSettings,
    check_url,
    delivery_id,
    signature,
)

KEY = "k" * 24


# --- API keys ------------------------------------------------------------------------------


def test_keys_bind_users_and_the_star_makes_an_operator_key() -> None:
    keys = parse_api_keys(f"{KEY}=alice, {'o' * 20}=*\n# a comment\n{'b' * 20}=bob", source="X")
    settings = GatewaySettings(keys=keys)
    alice, operator = settings.key_for(KEY), settings.key_for("o" * 20)
    assert alice is not None and alice.user_id == "alice" and not alice.is_operator
    assert operator is not None and operator.is_operator
    assert settings.key_for("b" * 20) is not None
    assert settings.key_for("k" * 23) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no-equals-sign-here-0123", "entry 1 is not KEY=USER_ID"),
        ("short=alice", "at least 16"),
        (f"{KEY}=al ice", "entry 1"),
        (f"{KEY}=alice,{KEY}=bob", "entry 2 repeats a key"),
    ],
)
def test_bad_key_entries_are_refused_naming_the_entry_and_never_the_key(
    text: str, expected: str
) -> None:
    with pytest.raises(ConfigurationError, match=expected) as caught:
        parse_api_keys(text, source="AGENT_RUNNER_GATEWAY_API_KEYS")
    assert "AGENT_RUNNER_GATEWAY_API_KEYS" in str(caught.value)
    assert KEY not in str(caught.value)


def test_a_gateway_without_keys_refuses_to_start_naming_both_variables() -> None:
    with pytest.raises(ConfigurationError) as caught:
        GatewaySettings.from_env({})
    message = str(caught.value)
    assert "AGENT_RUNNER_GATEWAY_API_KEYS" in message
    assert "AGENT_RUNNER_GATEWAY_API_KEYS_FILE" in message


def test_keys_come_from_a_file_too_and_settings_never_show_them(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "keys"
    path.write_text(f"# keys\n{KEY}=alice\n", encoding="utf-8")
    settings = GatewaySettings.from_env(
        {"AGENT_RUNNER_GATEWAY_API_KEYS_FILE": str(path), "AGENT_RUNNER_GATEWAY_KEEPALIVE_S": "5"}
    )
    assert settings.key_for(KEY) is not None and settings.keepalive_s == 5.0
    assert KEY not in repr(settings)


def test_bad_gateway_numbers_name_their_variable() -> None:
    env = {"AGENT_RUNNER_GATEWAY_API_KEYS": f"{KEY}=alice"}
    with pytest.raises(ConfigurationError, match="AGENT_RUNNER_GATEWAY_MAX_BODY_BYTES"):
        GatewaySettings.from_env({**env, "AGENT_RUNNER_GATEWAY_MAX_BODY_BYTES": "lots"})
    with pytest.raises(ConfigurationError, match="AGENT_RUNNER_GATEWAY_KEEPALIVE_S"):
        GatewaySettings.from_env({**env, "AGENT_RUNNER_GATEWAY_KEEPALIVE_S": "0"})


# --- the webhook URL policy ----------------------------------------------------------------

PUBLIC_ONLY = WebhookSettings(secret="s" * 16)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://localhost:8080/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://172.16.5.4/hook",
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://[::1]/hook",
        "http://[fd00::1]/hook",
        "http://0.0.0.0/hook",
        "http://100.64.0.1/hook",  # carrier-grade NAT
        "http://2130706433/hook",  # 127.0.0.1 written as a number
    ],
)
def test_private_loopback_and_reserved_addresses_are_refused(url: str) -> None:
    with pytest.raises(WebhookRefusedError, match="not a public address"):
        check_url(url, PUBLIC_ONLY)


def test_private_addresses_are_allowed_only_when_the_setting_says_so() -> None:
    allowing = WebhookSettings(secret="s" * 16, allow_private=True)
    target = check_url("http://127.0.0.1:9000/hook?x=1", allowing)
    assert target.address == "127.0.0.1" and target.port == 9000
    assert target.request_url() == "http://127.0.0.1:9000/hook?x=1"
    assert target.host_header() == "127.0.0.1:9000"


def test_public_addresses_pass_and_the_request_goes_to_the_checked_address() -> None:
    target = check_url("https://93.184.215.14/hook", PUBLIC_ONLY)
    assert target.address == "93.184.215.14" and target.port == 443
    assert target.host_header() == "93.184.215.14"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ftp://example.com/hook", "http:// or https://"),
        ("/relative/hook", "http:// or https://"),
        ("https://user:pw@example.com/hook", "credentials"),
        ("http://example.com:99999/hook", "not a valid URL"),
        (42, "http(s) URL"),
        ("https://" + "a" * 3000 + ".com", "at most"),
        ("https://no-such-host.invalid/hook", "does not resolve"),
    ],
)
def test_malformed_webhook_urls_are_refused_clearly(url: object, expected: str) -> None:
    with pytest.raises(WebhookRefusedError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        check_url(url, PUBLIC_ONLY)


def test_the_allowed_hosts_list_is_exact_or_a_subdomain_wildcard() -> None:
    settings = WebhookSettings(
        secret="s" * 16, allowed_hosts=("hooks.example.com", "*.example.org"), allow_private=True
    )
    assert settings.host_allowed("hooks.example.com")
    assert settings.host_allowed("HOOKS.example.com.")
    assert settings.host_allowed("a.b.example.org")
    assert not settings.host_allowed("example.org")
    assert not settings.host_allowed("evil-example.org")
    assert not settings.host_allowed("hooks.example.com.evil.net")
    with pytest.raises(WebhookRefusedError, match="AGENT_RUNNER_WEBHOOK_ALLOWED_HOSTS"):
        check_url("http://127.0.0.1/hook", settings)


def test_webhook_settings_from_the_environment() -> None:
    settings = WebhookSettings.from_env(
        {
            "AGENT_RUNNER_WEBHOOK_SECRET": "x" * 32,
            "AGENT_RUNNER_WEBHOOK_ALLOWED_HOSTS": "Hooks.Example.com, *.example.org",
            "AGENT_RUNNER_WEBHOOK_MAX_ATTEMPTS": "3",
            "AGENT_RUNNER_WEBHOOK_BACKOFF_S": "1",
            "AGENT_RUNNER_WEBHOOK_MAX_BACKOFF_S": "5",
        }
    )
    assert settings.allowed_hosts == ("hooks.example.com", "*.example.org")
    assert not settings.allow_private and settings.max_attempts == 3
    assert [settings.backoff(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
    assert "x" * 32 not in repr(settings)
    with pytest.raises(ConfigurationError, match="AGENT_RUNNER_WEBHOOK_SECRET"):
        WebhookSettings.from_env({"AGENT_RUNNER_WEBHOOK_SECRET": "short"})
    with pytest.raises(ConfigurationError, match="AGENT_RUNNER_WEBHOOK_ALLOW_PRIVATE"):
        WebhookSettings.from_env({"AGENT_RUNNER_WEBHOOK_ALLOW_PRIVATE": "maybe"})


def test_the_signature_is_hmac_sha256_of_the_body_and_the_delivery_id_is_stable() -> None:
    body = b'{"a":1}'
    expected = hmac.new(b"secret-secret-secret", body, hashlib.sha256).hexdigest()
    assert signature(body, "secret-secret-secret") == f"sha256={expected}"
    assert delivery_id("run-1") == delivery_id("run-1") != delivery_id("run-2")


def test_the_webhook_wire_names() -> None:
    assert wire.DELIVER_WEBHOOK == "agent_runner.deliver_webhook"
    assert wire.webhook_key("I") == "agent-runner:webhook:I"
    assert wire.webhook_key("I", "p") == "p:webhook:I"


# --- the app in-process (what needs neither Redis nor a worker) ----------------------------


def _app(**settings: object) -> object:
    from gateway.app import create_app

    keys = parse_api_keys(f"{KEY}=alice", source="test")
    return create_app(GatewaySettings(keys=keys, **settings))  # type: ignore[arg-type]


async def _call(app: object, method: str, path: str, **kwargs: object) -> httpx2.Response:
    transport = httpx2.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx2.AsyncClient(transport=transport, base_url="http://gateway") as http:
        return await http.request(method, path, **kwargs)  # type: ignore[arg-type]


async def test_cors_answers_only_the_configured_origins() -> None:
    app = _app(cors_origins=("https://app.example",))
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,last-event-id"}  # fmt: skip
    allowed = await _call(app, "OPTIONS", "/v1/runs",
                          headers={"Origin": "https://app.example", **preflight})  # fmt: skip
    refused = await _call(app, "OPTIONS", "/v1/runs",
                          headers={"Origin": "https://evil.example", **preflight})  # fmt: skip
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "last-event-id" in allowed.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-origin" not in refused.headers


async def test_without_cors_settings_no_origin_is_allowed() -> None:
    answer = await _call(_app(), "GET", "/healthz-nothing", headers={"Origin": "https://a.b"})
    assert "access-control-allow-origin" not in answer.headers
    assert answer.status_code == 404 and answer.json()["error"]["type"] == "not_found"


async def test_a_body_over_the_limit_is_refused_before_it_is_read() -> None:
    app = _app(max_body_bytes=2048)
    answer = await _call(app, "POST", "/v1/runs", content=b"{" + b" " * 4096 + b"}",
                         headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
    assert answer.status_code == 413
    assert answer.json()["error"]["type"] == "body_too_large"
    assert "2048" in answer.json()["error"]["message"]


async def test_a_route_without_a_valid_key_is_refused_with_json() -> None:
    app = _app()
    none = await _call(app, "GET", "/v1/runs/abc")
    basic = await _call(app, "GET", "/v1/runs/abc", headers={"Authorization": "Basic eDp5"})
    wrong = await _call(app, "GET", "/v1/runs/abc", headers={"X-API-Key": "x" * 20})
    assert [r.status_code for r in (none, basic, wrong)] == [401, 401, 401]
    assert "Bearer" in basic.json()["error"]["message"]
    assert "not valid" in wrong.json()["error"]["message"]
    wrong_method = await _call(app, "DELETE", "/v1/runs", headers={"X-API-Key": KEY})
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["type"] == "method_not_allowed"


def test_serve_refuses_to_start_without_keys_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from workers.cli import main

    monkeypatch.delenv("AGENT_RUNNER_GATEWAY_API_KEYS", raising=False)
    monkeypatch.delenv("AGENT_RUNNER_GATEWAY_API_KEYS_FILE", raising=False)
    assert main(["serve", "--port", "9"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0
    assert error.startswith("agent-runner: error: the gateway has no API key")
