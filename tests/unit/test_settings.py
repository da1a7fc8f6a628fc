"""Settings: flags win over environment variables, which win over defaults."""

from __future__ import annotations

import math
from dataclasses import fields, replace
from typing import Any

import pytest

from service.errors import ConfigurationError
from service.settings import DEFAULT_DATABASE_URL, Settings, env_name, settings_from


def flag(name: str) -> str:
    """The flag of setting ``name``, as refusals name it."""
    return "--" + name.replace("_", "-")


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


def test_an_empty_environment_variable_is_unset() -> None:
    """Templating tools write ``CHRONICLE_INSECURE=`` for a value left out.
    Before the fix, an empty boolean or number was refused (BAD_SETTING)
    and an empty text taken as the value (an empty database URL)."""
    every = {env_name(f.name): value for f in fields(Settings) for value in ("", "  ")}
    assert settings_from([], every) == Settings()
    for blank in ("", " "):
        settings = settings_from([], {"CHRONICLE_INSECURE": blank, "CHRONICLE_DATABASE_URL": blank})
        assert (settings.insecure, settings.database_url) == (Settings().insecure, DEFAULT_DATABASE_URL)


def test_the_clients_empty_environment_variables_are_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """``chronicle``'s own options (CHRONICLE_SERVER, CHRONICLE_TOKEN, …)
    read the same way: an empty server is the default one, not ""."""
    from service import cli

    for variable in ("CHRONICLE_SERVER", "CHRONICLE_TOKEN", "CHRONICLE_TOKEN_FILE", "CHRONICLE_TLS_CA"):
        monkeypatch.setenv(variable, "")
    exporting = cli.build_parser().parse_args(["export", "out.chronicle"])
    assert (exporting.server, exporting.token, exporting.token_file, exporting.tls_ca) == (
        cli.DEFAULT_SERVER,
        None,
        None,
        None,
    )
    assert cli.build_parser().parse_args(["health"]).server is None  # this host's server, from its settings


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


def test_a_retention_takes_a_unit_and_a_command_retention_at_least_an_hour() -> None:
    """A bare number was seconds (--command-retention 90: a minute and a
    half, shorter than a client's retries, so a retry ran the command
    again). Now it is refused, and a window under an hour must be meant."""
    for name, variable in (("command", "CHRONICLE_COMMAND_RETENTION"), ("refusal", "CHRONICLE_REFUSAL_RETENTION")):
        with pytest.raises(ConfigurationError, match=rf"^--{name}-retention: '90' has no unit \(seconds\? days\?\);"):
            settings_from([f"--{name}-retention", "90"], {})
        with pytest.raises(ConfigurationError, match=rf"^--{name}-retention: '2.5' has no unit"):
            settings_from([], {variable: "2.5"})
        assert getattr(settings_from([], {variable: "0"}), f"{name}_retention") == 0  # forever, as before
    assert settings_from(["--command-retention", "1h"], {}).command_retention == 3600
    assert settings_from([], {"CHRONICLE_REFUSAL_RETENTION": "90s"}).refusal_retention == 90  # no floor: no retries
    with pytest.raises(
        ConfigurationError,
        match=r"^--command-retention: 90 seconds is shorter than an hour: .*"
        r"0 \(forever\) or at least 1h, such as 90d; or --allow-short-retention",
    ):
        settings_from(["--command-retention", "90s"], {})
    short = settings_from(["--command-retention", "90s", "--allow-short-retention"], {})
    assert short.command_retention == 90
    assert settings_from([], {"CHRONICLE_COMMAND_RETENTION": "5m", "CHRONICLE_ALLOW_SHORT_RETENTION": "1"})


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
        ({"jwt_jwks_url": "https://idp.example/jwks.json"}, "issuer"),
        ({"jwt_jwks_url": "http://idp.example/jwks.json", "jwt_issuer": "i"}, "https://"),
        ({"jwt_jwks_url": "https://idp.example/jwks.json", "jwt_issuer": "i", "jwt_key_file": "k"}, "one source"),
        ({"jwt_jwks_ca_file": "ca.pem"}, "with --jwt-jwks-url only"),
        ({"jwt_jwks_refresh_seconds": 0}, "not positive"),
        ({"jwt_jwks_timeout_seconds": 0}, "not positive"),
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


def test_a_jwks_url_is_a_credential_source_set_from_the_environment() -> None:
    settings = settings_from(
        [],
        {
            "CHRONICLE_AUTH": "true",
            "CHRONICLE_POLICY_FILE": "p",
            "CHRONICLE_JWT_JWKS_URL": "https://idp.example/.well-known/jwks.json",
            "CHRONICLE_JWT_JWKS_CA_FILE": "idp-ca.pem",
            "CHRONICLE_JWT_JWKS_REFRESH_SECONDS": "10m",
            "CHRONICLE_JWT_JWKS_UNKNOWN_KID_SECONDS": "1m",
            "CHRONICLE_JWT_JWKS_TIMEOUT_SECONDS": "3s",
            "CHRONICLE_JWT_ISSUER": "https://idp.example/",
        },
    )
    assert settings.jwt_jwks_url == "https://idp.example/.well-known/jwks.json"
    assert settings.jwt_jwks_ca_file == "idp-ca.pem"
    assert (settings.jwt_jwks_refresh_seconds, settings.jwt_jwks_unknown_kid_seconds) == (600, 60)
    assert settings.jwt_jwks_timeout_seconds == 3
    assert settings_from(["--jwt-jwks-timeout-seconds", "2.5"], {}).jwt_jwks_timeout_seconds == 2.5
    assert Settings().jwt_jwks_timeout_seconds == 10
    # Plain HTTP only to this machine, for tests and a local provider.
    assert Settings(jwt_jwks_url="http://127.0.0.1:8080/jwks.json", jwt_issuer="i").jwt_jwks_url


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
    with pytest.raises(ConfigurationError, match="a quarter of --max-message-bytes"):
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
    with pytest.raises(ConfigurationError, match=f"^{flag(name)}: ") as refused:
        replace(Settings(), **_with(name, -1))
    assert refused.value.reason == "BAD_SETTING"


@pytest.mark.parametrize("name", [name for name in NUMBERS if isinstance(getattr(Settings(), name), float)])
def test_a_duration_that_is_not_a_number_is_refused(name: str) -> None:
    with pytest.raises(ConfigurationError, match=f"^{flag(name)}: "):
        replace(Settings(), **_with(name, math.nan))


ADDRESSES = ["listen", "process_listen", "metrics_listen", "console_listen", "advertise_address"]


@pytest.mark.parametrize("name", ADDRESSES)
@pytest.mark.parametrize("port", ["65536", "99999", "700000"])
def test_every_address_setting_refuses_a_port_no_socket_can_have(name: str, port: str) -> None:
    """A port past 65535 was a traceback from bind() (OverflowError) for
    some addresses, and bound some other port for --process-listen."""
    with pytest.raises(ConfigurationError) as refused:
        settings_from([flag(name), f"127.0.0.1:{port}"], {})
    assert refused.value.reason == "BAD_SETTING"
    assert refused.value.message.startswith(f"{flag(name)}: port {port} is out of range; host:port, the port from ")
    assert "to 65535" in refused.value.message


@pytest.mark.parametrize("name", ADDRESSES)
def test_every_address_setting_takes_the_highest_port(name: str) -> None:
    assert getattr(settings_from([flag(name), "127.0.0.1:65535"], {}), name) == "127.0.0.1:65535"


@pytest.mark.parametrize("wildcard", ["0.0.0.0:50051", "[::]:50051", ":::50051", "*:50051"])
def test_a_wildcard_advertise_address_is_refused_as_no_address_to_dial(wildcard: str) -> None:
    with pytest.raises(ConfigurationError, match=r"^--advertise-address: .* is a wildcard host, which clients cannot"):
        settings_from(["--advertise-address", wildcard], {})
    assert settings_from(["--advertise-address", "10.1.2.3:50051"], {}).advertise_address == "10.1.2.3:50051"


def test_port_0_is_any_free_port_where_the_server_binds_but_no_address_to_dial() -> None:
    assert settings_from(["--console-listen", "127.0.0.1:0"], {}).console_listen == "127.0.0.1:0"
    with pytest.raises(ConfigurationError, match=r"^--advertise-address: port 0 is out of range; .* from 1 to 65535"):
        settings_from(["--advertise-address", "replica-1:0"], {})


@pytest.mark.parametrize(
    ("argv", "environ", "says"),
    [
        (["--log-level", "LOUD"], {}, "--log-level: 'LOUD' is not a level; DEBUG, INFO, WARNING or ERROR"),
        ([], {"CHRONICLE_LOG_LEVEL": "verbose"}, "--log-level: 'verbose' is not a level; DEBUG, INFO, WARNING or"),
        (["--log-format", "yaml"], {}, "--log-format: 'yaml' is not a format; text or json"),
        (["--command-retention", "90x"], {}, "--command-retention: '90x' is not a duration; seconds (2.5) or"),
        ([], {"CHRONICLE_REFUSAL_RETENTION": "90 days"}, "--refusal-retention: '90 days' is not a duration;"),
        (["--idle-timeout", "soon"], {}, "--idle-timeout: 'soon' is not a duration; "),
        (["--max-message-bytes", "4MiB"], {}, "--max-message-bytes: '4MiB' is not a whole number; a whole number of"),
        (["--queue-depth", "many"], {}, "--queue-depth: 'many' is not a whole number; a whole number, at least 1"),
        (["--snapshot-every", "-1"], {}, "--snapshot-every: -1 is negative; a whole number, at least 0"),
        ([], {"CHRONICLE_DISCOVER_PLUGINS": "perhaps"}, "--discover-plugins: 'perhaps' is not a boolean; true, false"),
        (["--idle-timeout", "0"], {}, "--idle-timeout: 0 is not positive; more than 0: seconds"),
        (["--shutdown-grace=-5"], {}, "--shutdown-grace: -5 is negative; 0 or more: seconds"),
        (
            [],
            {"CHRONICLE_MAX_CONNECTION_IDLE_SECONDS": "-1m"},
            "--max-connection-idle-seconds: -60 is negative; 0 or more: seconds",
        ),
        (["--lease-seconds", "100ms"], {}, "--lease-seconds: 0.1 is too short; at least 0.5 seconds"),
        (["--partitions", "48"], {}, "--partitions: 48 is not a power of two from 1 to 4096; 1, 2, 4"),
        (["--processes", "1000"], {}, "--processes: 1000 is too many; from 1 to 256"),
        (["--listen", "50051"], {}, "--listen: '50051' is not host:port; host:port, the port from 0 to 65535"),
        (["--tls-cert-file", "c.pem"], {}, "--tls-key-file: is missing; TLS needs both"),
    ],
)
def test_each_refusal_says_the_flag_what_is_wrong_and_what_is_accepted(
    argv: list[str], environ: dict[str, str], says: str
) -> None:
    """``error: BAD_SETTING: --flag: what is wrong; what is accepted`` is what
    ``chronicle serve`` prints of these: each names the flag (the variable
    is its CHRONICLE_ twin) and what would do, durations their units."""
    with pytest.raises(ConfigurationError) as refused:
        settings_from(argv, environ)
    assert refused.value.reason == "BAD_SETTING"
    assert refused.value.message.startswith(says), refused.value.message


def test_every_level_logging_knows_is_taken_in_any_case() -> None:
    assert settings_from(["--log-level", "debug"], {}).log_level == "debug"
    assert settings_from([], {"CHRONICLE_LOG_LEVEL": "Warning"}).log_level == "Warning"


def _negative(name: str) -> str:
    """A negative value of setting ``name`` as an operator may write it: a
    duration with its unit, a whole number bare."""
    return "-1s" if isinstance(getattr(Settings(), name), float) else "-1"


@pytest.mark.parametrize("name", NUMBERS)
def test_a_negative_value_apart_from_its_flag_is_a_bad_setting_not_a_usage_error(name: str) -> None:
    """``--shutdown-grace -1s``: argparse takes only a bare negative number
    ("-1", "-1.5") as a value and anything else starting with "-" for an
    unknown option, a usage error (SystemExit) naming neither the setting
    nor what it accepts. Every number and duration flag reaches the
    settings' checks instead, and is refused as the others are."""
    with pytest.raises(ConfigurationError, match=f"^{flag(name)}: ") as refused:
        settings_from([flag(name), _negative(name)], {})
    assert refused.value.reason == "BAD_SETTING"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("-250ms", "--shutdown-grace: -0.25 is negative; 0 or more: seconds"),
        ("-1e3", "--shutdown-grace: -1000 is negative; 0 or more: seconds"),
        ("-.5", "--shutdown-grace: -0.5 is negative; 0 or more: seconds"),
        ("-inf", "--shutdown-grace: -inf is not a finite number; seconds"),
        ("-1x", "--shutdown-grace: '-1x' is not a duration; seconds"),
    ],
)
def test_each_negative_form_is_refused_by_what_it_is(value: str, says: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        settings_from(["--shutdown-grace", value], {})
    assert refused.value.message.startswith(says), refused.value.message


def test_a_flag_without_its_value_is_still_a_usage_error() -> None:
    """Only what starts like a number is taken as a value: a flag followed
    by another flag has no value, as before."""
    with pytest.raises(SystemExit):
        settings_from(["--shutdown-grace", "--queue-depth", "3"], {})


@pytest.mark.parametrize(
    ("prefix", "says"),
    [
        ("chronicle", "'chronicle' does not start with '/'"),
        ("/chronicle/", "'/chronicle/' ends with '/'"),
        ("/", "'/' ends with '/'"),
        ('/a"><script>alert(1)</script>', "holds a character that is not allowed"),
        ("/a b", "holds a character that is not allowed"),
        ("/a%2Fb", "holds a character that is not allowed"),
        ("/a?b=1", "holds a character that is not allowed"),
        ("/a#b", "holds a character that is not allowed"),
        ("/a\r\nSet-Cookie: x=1", "holds a character that is not allowed"),
        ("/a;b", "holds a character that is not allowed"),
        ("/a//b", "an empty segment"),
        ("/ops/../admin", "has a '.' or '..' segment"),
        ("/.", "has a '.' or '..' segment"),
        ("/\u00e9t\u00e9", "holds a character that is not allowed"),
    ],
)
def test_a_console_path_prefix_that_is_not_a_plain_path_is_refused(prefix: str, says: str) -> None:
    """The prefix goes into every link and form of the console, its
    redirects' Location and its cookie's Path: a quote, a CR LF, a ";" or a
    "?" there would end the attribute, the header or the path."""
    for argv, environ in ((["--console-path-prefix", prefix], {}), ([], {"CHRONICLE_CONSOLE_PATH_PREFIX": prefix})):
        with pytest.raises(ConfigurationError) as refused:
            settings_from(argv, environ)
        assert refused.value.reason == "BAD_SETTING"
        assert refused.value.message.startswith("--console-path-prefix: ") and says in refused.value.message


@pytest.mark.parametrize("prefix", ["/chronicle", "/ops/chronicle-1", "/a.b_c~d"])
def test_a_console_path_prefix_of_plain_segments_is_taken(prefix: str) -> None:
    assert settings_from(["--console-path-prefix", prefix], {}).console_path_prefix == prefix
    assert settings_from([], {"CHRONICLE_CONSOLE_PATH_PREFIX": prefix}).console_path_prefix == prefix
    assert Settings().console_path_prefix == ""  # the root unless set


@pytest.mark.parametrize(
    ("origin", "says"),
    [
        ("ops.example.com", "is not an origin"),
        ("https://ops.example.com/", "is not an origin"),  # a browser's Origin has no path
        ("https://ops.example.com/chronicle", "is not an origin"),
        ("https://OPS.example.com", "is not an origin"),  # a browser sends the host in lower case
        ("ftp://ops.example.com", "is not an origin"),
        ("https://user@ops.example.com", "is not an origin"),
        ("https://ops.example.com\r\nX: y", "is not an origin"),
        ("https://ops.example.com:443", "names its scheme's default port"),
        ("http://ops.example.com:80", "names its scheme's default port"),
        ("https://ops.example.com:70000", "port 70000 is out of range"),
    ],
)
def test_a_console_public_origin_a_browser_would_not_send_is_refused(origin: str, says: str) -> None:
    """It is compared with the Origin header as it is: a value no browser
    sends would refuse every form, the login's too, at the first post."""
    for argv, environ in (
        (["--console-public-origin", origin], {}),
        ([], {"CHRONICLE_CONSOLE_PUBLIC_ORIGIN": origin}),
    ):
        with pytest.raises(ConfigurationError) as refused:
            settings_from(argv, environ)
        assert refused.value.reason == "BAD_SETTING"
        assert refused.value.message.startswith("--console-public-origin: ") and says in refused.value.message


@pytest.mark.parametrize("origin", ["https://ops.example.com", "https://ops.example.com:8443", "http://[::1]:8081"])
def test_a_console_public_origin_as_a_browser_sends_it_is_taken(origin: str) -> None:
    assert settings_from(["--console-public-origin", origin], {}).console_public_origin == origin
    assert Settings().console_public_origin == ""
