"""The gateway's rules that need no server: API key configuration, the webhook URL policy
(no server-side request forgery), signatures and backoff, and the wire names they use."""

from __future__ import annotations

import hashlib
import hmac

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
