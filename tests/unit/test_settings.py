"""Settings: flags win over environment variables, which win over defaults."""

from __future__ import annotations

import math
from dataclasses import fields, replace
from typing import Any

import pytest

from service.errors import ConfigurationError
from service.settings import DEFAULT_DATABASE_URL, Settings, settings_from


def test_defaults_serve_sqlite_on_loopback() -> None:
    settings = settings_from([], {})
    assert settings.listen == "127.0.0.1:50051"
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.plugins == ()


def test_environment_variables_set_values() -> None:
    settings = settings_from(
        [],
        {
            "CHRONICLE_LISTEN": "0.0.0.0:6000",
            "CHRONICLE_DATABASE_URL": "memory://",
            "CHRONICLE_PLUGINS": "a.b, c.d:plugin",
            "CHRONICLE_DISCOVER_PLUGINS": "false",
            "CHRONICLE_QUEUE_DEPTH": "8",
            "CHRONICLE_KEEP_SNAPSHOTS": "5",
        },
    )
    assert settings.listen == "0.0.0.0:6000"
    assert settings.database_url == "memory://"
    assert settings.plugins == ("a.b", "c.d:plugin")
    assert settings.discover_plugins is False
    assert settings.queue_depth == 8
    assert settings.keep_snapshots == 5


def test_flags_win_over_environment_variables() -> None:
    settings = settings_from(
        ["--listen", "127.0.0.1:7000", "--plugin", "x.y", "--plugin", "z", "--no-discover-plugins"],
        {"CHRONICLE_LISTEN": "0.0.0.0:6000", "CHRONICLE_PLUGINS": "ignored", "CHRONICLE_DISCOVER_PLUGINS": "1"},
    )
    assert settings.listen == "127.0.0.1:7000"
    assert settings.plugins == ("x.y", "z")
    assert settings.discover_plugins is False


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CHRONICLE_LISTEN", "no-port"),
        ("CHRONICLE_QUEUE_DEPTH", "zero"),
        ("CHRONICLE_QUEUE_DEPTH", "0"),
        ("CHRONICLE_KEEP_SNAPSHOTS", "0"),
        ("CHRONICLE_DISCOVER_PLUGINS", "perhaps"),
        ("CHRONICLE_IDLE_TIMEOUT", "-1"),
        ("CHRONICLE_SLOW_HANDLER_SECONDS", "-0.1"),
        ("CHRONICLE_LOOP_LAG_SECONDS", "-1"),
        ("CHRONICLE_SHUTDOWN_DRAIN", "-1"),
        ("CHRONICLE_COMMAND_RETENTION", "-1d"),
        ("CHRONICLE_COMMAND_RETENTION", "90 days"),
        ("CHRONICLE_RETENTION_INTERVAL", "0"),
        ("CHRONICLE_KEEPALIVE_SECONDS", "0"),
        ("CHRONICLE_KEEPALIVE_TIMEOUT_SECONDS", "-1"),
    ],
)
def test_bad_values_are_configuration_errors(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError):
        settings_from([], {variable: value})


def test_settings_are_immutable() -> None:
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.listen = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"auth": True}, "policy"),
        ({"auth": True, "policy_file": "p.toml"}, "credential source"),
        ({"tls_cert_file": "c.pem"}, "both"),
        ({"tls_client_ca_file": "ca.pem"}, "needs TLS"),
        ({"jwt_key_file": "k.pem"}, "issuer"),
        ({"auth": True, "policy_file": "p.toml", "api_keys_file": "k.toml", "anonymous_admin": True}, "--auth off"),
    ],
)
def test_security_settings_that_cannot_work_are_refused(overrides: dict[str, object], complaint: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        Settings(**overrides)  # type: ignore[arg-type]
    assert complaint in refused.value.message


def test_authentication_is_off_by_default_and_on_with_one_setting() -> None:
    assert settings_from([], {}).auth is False
    assert settings_from(["--auth", "--policy-file", "p.toml", "--api-keys-file", "k.toml"], {}).auth is True
    assert (
        settings_from(
            [],
            {
                "CHRONICLE_AUTH": "true",
                "CHRONICLE_POLICY_FILE": "p",
                "CHRONICLE_JWT_KEY_FILE": "k",
                "CHRONICLE_JWT_ISSUER": "i",
            },
        ).auth
        is True
    )


def test_durations_take_a_unit() -> None:
    settings = settings_from(
        ["--command-retention", "90d", "--idle-timeout", "250ms"],
        {"CHRONICLE_REFUSAL_RETENTION": "2w", "CHRONICLE_RETENTION_INTERVAL": "15m", "CHRONICLE_SHUTDOWN_GRACE": "12h"},
    )
    assert settings.command_retention == 90 * 86_400
    assert settings.refusal_retention == 14 * 86_400
    assert settings.retention_interval == 900
    assert settings.shutdown_grace == 12 * 3600
    assert settings.idle_timeout == 0.25
    assert settings_from(["--slow-handler-seconds", "30s"], {}).slow_handler_seconds == 30
    assert Settings().command_retention == 0  # forever


def test_events_are_limited_to_a_quarter_of_a_message() -> None:
    assert settings_from(["--max-message-bytes", "8000000", "--max-event-bytes", "2000000"], {}).max_event_bytes == (
        2_000_000
    )
    with pytest.raises(ConfigurationError, match="a quarter of max_message_bytes"):
        settings_from(["--max-message-bytes", "8000000", "--max-event-bytes", "2000001"], {})
    with pytest.raises(ConfigurationError, match="a quarter"):
        Settings(max_message_bytes=1024 * 1024)  # the default 1 MiB events would not fit


def _with(name: str, value: float) -> dict[str, Any]:
    return {name: value}


NUMBERS = [
    f.name
    for f in fields(Settings)
    if isinstance(getattr(Settings(), f.name), int | float) and not isinstance(getattr(Settings(), f.name), bool)
]


@pytest.mark.parametrize("name", NUMBERS)
def test_a_negative_number_is_refused_and_the_refusal_names_the_setting(name: str) -> None:
    with pytest.raises(ConfigurationError, match=name) as refused:
        replace(Settings(), **_with(name, -1))
    assert refused.value.reason == "BAD_SETTING"


@pytest.mark.parametrize("name", [name for name in NUMBERS if isinstance(getattr(Settings(), name), float)])
def test_a_duration_that_is_not_a_number_is_refused(name: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        replace(Settings(), **_with(name, math.nan))
