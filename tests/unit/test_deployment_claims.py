"""docs/deployment.md and the README's settings table are promises: each
setting's flag, environment variable and default as the table states them,
the numbers the deployment guide quotes, the Docker image it describes and
what `make run` does, checked against the code (the parser of `chronicle
serve`, Settings, the Dockerfile, the Makefile). A new setting, a changed
default or a changed image fails here until the documents say so."""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import pytest

from service.api.server import (
    client_ping_options,
    connection_age_options,
    connection_idle_options,
    keepalive_options,
)
from service.cli import build_parser
from service.client.channels import DEFAULT_KEEPALIVE, DEFAULT_KEEPALIVE_TIMEOUT
from service.client.channels import keepalive_options as client_keepalive_options
from service.processing import retention
from service.settings import DEFAULT_DATABASE_URL, Settings, env_name, load_settings, seconds, settings_from
from service.store.factory import redacted_url
from tests.support.processes import dockerfile_command, dockerfile_environment, dockerfile_healthcheck

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DEPLOYMENT = ROOT / "docs" / "deployment.md"
FIELDS = {f.name: f for f in fields(Settings)}


def flowing(path: Path) -> str:
    """A document's text with every run of white space one space, so that a
    sentence matches however its lines are wrapped."""
    return " ".join(path.read_text().split())


# -- the README's settings table ------------------------------------------------


@dataclass(frozen=True)
class Row:
    flags: tuple[str, ...]
    variables: tuple[tuple[str, str], ...]  # (CHRONICLE_NAME, value the row gives it, if any)
    more_variables: bool  # the cell ends with "…": the other flags' variables are implied
    default: str
    line: str


ROW = re.compile(r"^\| (?P<flags>`--[^|]*) \| (?P<variables>[^|]*) \| (?P<default>.*) \|$")


def settings_rows(markdown: str) -> list[Row]:
    section = markdown.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        match = ROW.match(line)
        if match is None:
            assert not line.startswith("| `--"), f"a settings row this test cannot read: {line}"
            continue
        rows.append(
            Row(
                flags=tuple(re.findall(r"`(--[a-z0-9-]+)`", match["flags"])),
                variables=tuple(re.findall(r"`(CHRONICLE_[A-Z0-9_]+)(?:=([a-z0-9]+))?`", match["variables"])),
                more_variables=match["variables"].rstrip().endswith("…"),
                default=match["default"].strip(),
                line=line,
            )
        )
    return rows


def serve_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    (commands,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    serve = commands.choices["serve"]
    assert isinstance(serve, argparse.ArgumentParser)
    return serve


def serve_flags() -> dict[str, argparse.Action]:
    """Every option string of `chronicle serve`, to the action that takes it."""
    return {flag: action for action in serve_parser()._actions for flag in action.option_strings}


def default_of(field_name: str) -> object:
    default = FIELDS[field_name].default
    assert default is not MISSING, field_name
    return default


NUMBER = re.compile(r"(?P<number>[0-9][0-9,]*(?:\.[0-9]+)?)(?P<unit> ?MiB)?(?=[\s:;(]|$)")
# Defaults the table gives in words, as they start a cell.
WORDS: dict[str, object] = {
    "none": "",
    "off": "",
    "the listen address": "",
    "the same keys inline": "",
}


def documented_default(cell: str, field_name: str) -> object:
    """The default a row's third cell states, as a value of the setting's type."""
    kind = str(FIELDS[field_name].type)
    if cell.startswith("`"):
        text: object = cell[1:].split("`", 1)[0]
    elif (number := NUMBER.match(cell)) is not None:
        value = float(number["number"].replace(",", "")) * (1024 * 1024 if number["unit"] else 1)
        text = int(value) if kind == "int" else value
    elif kind == "bool" and cell.startswith(("off", "on")):
        return cell.startswith("on")
    elif kind == "bool" and cell.startswith("entry points are loaded"):
        return True
    else:
        words = [word for word in WORDS if re.match(re.escape(word) + r"\b", cell)]
        if not words:
            raise ValueError(f"no default this test can read in {cell!r}")
        text = WORDS[words[0]]
    if kind == "tuple[str, ...]":
        return tuple(part for part in str(text).split(",") if part)
    if kind == "float":
        return float(str(text))
    if kind == "int":
        return int(str(text))
    return text


def test_the_settings_table_is_read_as_a_table() -> None:
    rows = settings_rows(README.read_text())
    assert len(rows) >= 50
    assert rows[0].flags == ("--listen",) and rows[0].variables == (("CHRONICLE_LISTEN", ""),)
    assert documented_default("4 MiB", "max_message_bytes") == 4 * 1024 * 1024
    assert documented_default("100,000 aggregates live at once", "max_workers") == 100_000
    assert documented_default("0 (never): a client's …", "max_connection_age_seconds") == 0.0
    assert documented_default("off; on: …", "reuse_port") is False
    assert documented_default("none besides entry points", "plugins") == ()
    assert documented_default("`text`; `json`: …", "log_format") == "text"
    with pytest.raises(ValueError, match="no default this test can read"):
        documented_default("eventually", "max_workers")


def test_every_row_of_the_settings_table_is_a_serve_flag_with_that_variable_and_that_default() -> None:
    flags = serve_flags()
    help_text = " ".join(serve_parser().format_help().split())
    wrong = []
    for row in settings_rows(README.read_text()):
        assert row.flags, row.line
        assert len(row.variables) == len(row.flags) or (row.more_variables and row.variables), row.line
        for index, flag in enumerate(row.flags):
            if flag not in flags:
                wrong.append(f"{flag}: not a flag of `chronicle serve`")
                continue
            name = flags[flag].dest
            if index < len(row.variables) and row.variables[index][0] != env_name(name):
                wrong.append(f"{flag}: the table says {row.variables[index][0]}, the server reads {env_name(name)}")
            if f"env {env_name(name)}; default" not in help_text:
                wrong.append(f"{flag}: `chronicle serve --help` does not give its variable and default")
            stated = documented_default(row.default, name)
            if stated != default_of(name):
                wrong.append(f"{flag}: the table says {stated!r}, the default is {default_of(name)!r}")
    assert wrong == []


def test_every_setting_has_a_row_in_the_settings_table() -> None:
    """ "`chronicle serve --help` lists them all"; the table should too."""
    flags = serve_flags()
    documented = {flags[flag].dest for row in settings_rows(README.read_text()) for flag in row.flags if flag in flags}
    assert sorted(set(FIELDS) - documented) == []


# -- every setting is a flag and a variable, the flag winning ----------------------

# Settings that cannot be set alone: what else a valid sample needs.
COMPANIONS: dict[str, dict[str, str]] = {
    "read_database_url": {"CHRONICLE_DATABASE_URL": "postgresql://u@primary/db"},
    "auth": {"CHRONICLE_POLICY_FILE": "/p.toml", "CHRONICLE_API_KEYS_FILE": "/k.toml"},
    "tls_cert_file": {"CHRONICLE_TLS_KEY_FILE": "/k.pem"},
    "tls_key_file": {"CHRONICLE_TLS_CERT_FILE": "/c.pem"},
    "tls_client_ca_file": {"CHRONICLE_TLS_CERT_FILE": "/c.pem", "CHRONICLE_TLS_KEY_FILE": "/k.pem"},
    "jwt_key_file": {"CHRONICLE_JWT_ISSUER": "issuer"},
    "jwt_jwks_url": {"CHRONICLE_JWT_ISSUER": "issuer"},
    "jwt_jwks_ca_file": {"CHRONICLE_JWT_JWKS_URL": "https://idp.example/jwks.json", "CHRONICLE_JWT_ISSUER": "issuer"},
}
SAMPLES: dict[str, tuple[str, object]] = {  # text: value, for settings whose type alone gives no valid sample
    "listen": ("127.0.0.1:6000", "127.0.0.1:6000"),
    "database_url": ("memory://", "memory://"),
    "read_database_url": ("postgresql://u@standby/db", "postgresql://u@standby/db"),
    "advertise_address": ("replica-1:50051", "replica-1:50051"),
    "process_listen": ("127.0.0.1:0", "127.0.0.1:0"),
    "metrics_listen": ("127.0.0.1:9100", "127.0.0.1:9100"),
    "console_listen": ("127.0.0.1:8080", "127.0.0.1:8080"),
    "console_public_origin": ("https://ops.example.com", "https://ops.example.com"),
    "jwt_jwks_url": ("https://idp.example/.well-known/jwks.json", "https://idp.example/.well-known/jwks.json"),
    "log_level": ("DEBUG", "DEBUG"),
    "log_format": ("json", "json"),
    "migrate": ("never", "never"),
    "partitions": ("128", 128),
    "max_event_bytes": ("65536", 65536),
    "plugins": ("a.b, c.d:plugin", ("a.b", "c.d:plugin")),
    # Counted in days: a unit required, an hour at least (deployment.md).
    "command_retention": ("2d", 2 * 86_400.0),
    "refusal_retention": ("2d", 2 * 86_400.0),
}


def sample(name: str) -> tuple[str, object]:
    """A valid value other than the default, as text and as the setting holds it."""
    if name in SAMPLES:
        return SAMPLES[name]
    default = default_of(name)
    if isinstance(default, bool):
        return ("false", False) if default else ("true", True)
    if isinstance(default, int):
        return str(default + 1), default + 1
    if isinstance(default, float):
        return str(default + 1.5), default + 1.5
    return "/some/file", "/some/file"


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_every_setting_is_read_from_its_variable_and_its_flag_wins(name: str) -> None:
    text, value = sample(name)
    assert value != default_of(name)
    environ = {**COMPANIONS.get(name, {}), env_name(name): text}
    assert getattr(settings_from([], environ), name) == value
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        arguments = [flag if value else "--no-" + flag.removeprefix("--")]
        environ[env_name(name)] = str(not value).lower()
    elif isinstance(value, tuple):
        arguments = [argument for part in value for argument in ("--plugin", part)]
        environ[env_name(name)] = "x.y"
    else:
        arguments = [flag, text]
        environ[env_name(name)] = str(default_of(name))
    assert getattr(settings_from(arguments, environ), name) == value
    assert getattr(load_settings(None, {}), name) == default_of(name)


def test_settings_in_seconds_take_the_units_the_guide_lists() -> None:
    text = flowing(DEPLOYMENT)
    (listed,) = re.findall(r"Settings in seconds also take a unit: ((?:`[^`]+`(?:, )?)+)\.", text)
    units = re.findall(r"`([0-9]+)([a-z]+)`", listed)
    assert {unit for _, unit in units} == {"ms", "s", "m", "h", "d", "w"}
    per_unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
    for number, unit in units:
        assert seconds(number + unit) == int(number) * per_unit[unit]
    for name, f in FIELDS.items():  # every setting of the float kind is one in seconds
        if str(f.type) == "float":
            assert getattr(settings_from([], {env_name(name): "2w"}), name) == 2 * 604_800, name
            short = ["--allow-short-retention"] if name == "command_retention" else []  # under an hour: meant
            assert getattr(settings_from(["--" + name.replace("_", "-"), "750ms", *short], {}), name) == 0.75, name


# -- the numbers docs/deployment.md quotes -------------------------------------------


@pytest.mark.parametrize(
    ("sentence", "name", "value"),
    [
        ("The default `127.0.0.1:50051` accepts local clients only", "listen", "127.0.0.1:50051"),
        ("`sqlite:///data/chronicle.db` (relative to the working directory)", "database_url", DEFAULT_DATABASE_URL),
        ("`--auth-reload-seconds` (5)", "auth_reload_seconds", 5.0),
        ("`--jwt-leeway-seconds` (30)", "jwt_leeway_seconds", 30.0),
        ("`--lease-seconds` 3", "lease_seconds", 3.0),
        ("`--retention-interval` (60 s)", "retention_interval", 60.0),
        ("it keeps serving new calls for `--shutdown-drain` seconds (1 by default)", "shutdown_drain", 1.0),
        ("the server pings the client every 60 s", "keepalive_seconds", 60.0),
        ("drops the connection when a ping goes unanswered for 20 s", "keepalive_timeout_seconds", 20.0),
        ("The server accepts a client's pings as often as every 5 s", "min_client_ping_seconds", 5.0),
        ("Calls still open get the grace (30 s)", "max_connection_age_grace_seconds", 30.0),
        ("`--handshake-timeout-seconds` (10), `--max-connections` (10000)", "handshake_timeout_seconds", 10.0),
        ("`--max-connection-idle-seconds` (300): a connection to the gRPC port", "max_connection_idle_seconds", 300.0),
        ("`--handshake-timeout-seconds` (10), `--max-connections` (10000)", "max_connections", 10_000),
        ("`--command-retention`, `--refusal-retention`: how long records are kept", "command_retention", 0.0),
        ("([below](#retention)); forever by default", "refusal_retention", 0.0),
    ],
)
def test_a_default_the_guide_quotes_is_the_default(sentence: str, name: str, value: object) -> None:
    assert sentence in flowing(DEPLOYMENT)
    assert default_of(name) == value


def test_connections_are_pinged_by_default_and_never_aged() -> None:
    """ "on a connection with calls open, the server pings the client every
    60 s and drops the connection when a ping goes unanswered for 20 s";
    the connection age "off by default"."""
    defaults = Settings()
    options = dict(keepalive_options(defaults.keepalive_seconds, defaults.keepalive_timeout_seconds))
    assert options["grpc.keepalive_time_ms"] == 60_000
    assert options["grpc.keepalive_timeout_ms"] == 20_000
    assert "`--max-connection-age-seconds`, `--max-connection-age-grace-seconds`: off by default" in flowing(DEPLOYMENT)
    assert connection_age_options(defaults.max_connection_age_seconds, defaults.max_connection_age_grace_seconds) == []
    assert connection_age_options(300, 30) != []


def test_connections_without_calls_are_closed_after_5_minutes_and_0_turns_it_off() -> None:
    """ "a connection to the gRPC port that has had no call open for 5
    minutes is closed"; "0 turns it off"."""
    assert "that has had no call open for 5 minutes is closed" in flowing(DEPLOYMENT)
    assert "0 turns it off" in flowing(DEPLOYMENT)
    defaults = Settings()
    assert connection_idle_options(defaults.max_connection_idle_seconds) == [("grpc.max_connection_idle_ms", 300_000)]
    assert connection_idle_options(0) == []


def test_the_clients_ping_as_the_guide_says_and_the_server_lets_them() -> None:
    """ "Chronicle's Python and Node.js clients ping the server every 10 s
    while they have calls open and drop a connection whose ping goes
    unanswered for 10 s"; the server accepts that (the Node.js client's
    defaults: clients/node/test/claims.test.js)."""
    assert "ping the server every 10 s while they have calls open" in flowing(DEPLOYMENT)
    assert "whose ping goes unanswered for 10 s" in flowing(DEPLOYMENT)
    pings = dict(client_keepalive_options(DEFAULT_KEEPALIVE, DEFAULT_KEEPALIVE_TIMEOUT))
    assert pings["grpc.keepalive_time_ms"] == 10_000
    assert pings["grpc.keepalive_timeout_ms"] == pings["grpc.http2.ping_timeout_ms"] == 10_000
    assert pings["grpc.http2.max_pings_without_data"] == 0  # an idle stream is pinged too
    accepted = dict(client_ping_options(Settings().min_client_ping_seconds))
    assert accepted["grpc.http2.min_ping_interval_without_data_ms"] <= pings["grpc.keepalive_time_ms"]


def test_pruning_goes_in_the_batches_the_guide_says() -> None:
    (size,) = re.findall(r"in batches of ([0-9]+) records, oldest first", flowing(DEPLOYMENT))
    assert int(size) == retention.BATCH


def kubernetes_snippet() -> list[str]:
    (snippet,) = re.findall(r"```yaml\n(.*?)```", DEPLOYMENT.read_text(), re.DOTALL)
    return str(snippet).splitlines()


def indentation(lines: list[str], key: str) -> int:
    """How deep the first ``key:`` of ``lines`` sits (a list item's dash counted as indentation)."""
    line = next(line for line in lines if line.lstrip(" -").startswith(key + ":"))
    return len(line) - len(line.lstrip(" -"))


def test_the_kubernetes_grace_period_outlasts_the_drain_and_the_grace() -> None:
    text = DEPLOYMENT.read_text()
    (period, drain, grace) = re.findall(
        r"terminationGracePeriodSeconds: ([0-9]+) +"
        r"# more than --shutdown-drain \+ --shutdown-grace \(([0-9]+) \+ ([0-9]+) s\)",
        text,
    )[0]
    lines = kubernetes_snippet()
    (set_drain,) = [lines[i + 1] for i, line in enumerate(lines) if "name: CHRONICLE_SHUTDOWN_DRAIN" in line]
    drain_set = seconds(set_drain.split("value:", 1)[1].strip().strip('"'))
    assert (float(drain), float(grace)) == (drain_set, Settings().shutdown_grace)
    assert int(period) > drain_set + Settings().shutdown_grace


def test_the_kubernetes_drain_is_the_readiness_probes_time_to_see_not_serving() -> None:
    """ "set it to your probe's period times the failures it waits for".
    Before the fix, the example kept the default 1 s drain beside a 5 s
    probe period."""
    lines = kubernetes_snippet()
    (set_drain,) = [lines[i + 1] for i, line in enumerate(lines) if "name: CHRONICLE_SHUTDOWN_DRAIN" in line]
    readiness = lines[next(i for i, line in enumerate(lines) if "readinessProbe:" in line) :]
    probe = {
        key: int(value)
        for key, value in re.findall(r"(periodSeconds|failureThreshold): ([0-9]+)", "\n".join(readiness[:5]))
    }
    drain = seconds(set_drain.split("value:", 1)[1].strip().strip('"'))
    assert drain == probe["periodSeconds"] * probe.get("failureThreshold", 3)


def test_the_kubernetes_grace_period_is_the_pods_and_the_probes_its_containers() -> None:
    """terminationGracePeriodSeconds is a field of the pod spec, beside
    `containers`; the probes are fields of a container. Before the fix all
    three sat at one level."""
    lines = kubernetes_snippet()
    pod = indentation(lines, "containers")
    assert indentation(lines, "terminationGracePeriodSeconds") == pod
    assert indentation(lines, "name") > pod  # the container, an item of the list
    for probe in ("readinessProbe", "livenessProbe"):
        assert indentation(lines, probe) == indentation(lines, "name"), probe


def test_the_kubernetes_replicas_advertise_their_pod_ip() -> None:
    """Without --advertise-address a replica on 0.0.0.0 advertised its host
    name (the pod's name, which other pods cannot resolve): the example
    sets it from the downward API's pod IP, to a value the server takes."""
    lines = [line.strip() for line in kubernetes_snippet()]
    pod_ip = lines.index("- name: POD_IP                     # the downward API: this pod's own address")
    assert lines[pod_ip + 1] == "valueFrom: {fieldRef: {fieldPath: status.podIP}}"
    advertise = next(i for i, line in enumerate(lines) if line.startswith("- name: CHRONICLE_ADVERTISE_ADDRESS"))
    assert advertise > pod_ip  # Kubernetes expands $(VAR) only from variables defined before
    value = lines[advertise + 1].split("value:", 1)[1].strip().strip('"')
    assert value == "$(POD_IP):50051"
    expanded = value.replace("$(POD_IP)", "10.244.1.7")
    assert settings_from([], {env_name("advertise_address"): expanded}).advertise_address == "10.244.1.7:50051"


def test_the_kubernetes_liveness_probe_asks_for_the_liveness_name() -> None:
    """A hung process passes a tcpSocket probe (the kernel accepts for it):
    the example probes the health name that only a live event loop answers
    (tests/integration/test_health_liveness.py)."""
    lines = kubernetes_snippet()
    start = next(i for i, line in enumerate(lines) if "livenessProbe:" in line)
    probe = "\n".join(lines[start + 1 : start + 3])
    assert "grpc: {port: 50051, service: liveness}" in probe
    assert "tcpSocket" not in "\n".join(lines)


@pytest.mark.parametrize(
    "url", ["postgresql://chronicle:s3cr%40t@db:5432/chronicle", "postgres://u:hunter2hunter2@[::1]/db"]
)
def test_the_password_of_a_database_url_is_not_printed(url: str) -> None:
    """ "The password in the URL is redacted in what the server prints": its
    first line names the store with `_store_name`."""
    password = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    shown = redacted_url(url)
    assert password not in shown
    assert shown.split("@", 1)[1] == url.split("@", 1)[1]  # the rest is shown as it is


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://chronicle@db/chronicle?password=hunter2hunter2&sslmode=require",
            "postgresql://chronicle@db/chronicle?password=***&sslmode=require",
        ),
        (
            "postgresql://u:s3cret@db/c?sslmode=verify-full&sslpassword=k3ypass",
            "postgresql://u:***@db/c?sslmode=verify-full&sslpassword=***",
        ),
        ("sqlite:///data/chronicle.db", "sqlite:///data/chronicle.db"),
    ],
)
def test_a_password_given_as_a_url_parameter_is_not_printed_either(url: str, shown: str) -> None:
    """libpq takes the password as a query parameter too."""
    assert redacted_url(url) == shown


# -- the Docker image ------------------------------------------------------------------


def dockerfile() -> list[str]:
    return (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()


def test_the_image_is_built_and_run_as_the_guide_describes() -> None:
    """Wheels built in one stage, installed without an index in a
    `python:3.11-slim` stage that runs as `chronicle` (uid 10001) in
    /var/lib/chronicle, whose `data` folder it owns."""
    text = flowing(DEPLOYMENT)
    assert "installs them without an index in a `python:3.11-slim` stage" in text
    assert "runs as the non-root user `chronicle` (uid 10001) in `/var/lib/chronicle`" in text
    lines = dockerfile()
    stages = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert stages == ["python:3.11-slim", "python:3.11-slim"]
    runtime = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    assert any(line.startswith("RUN pip wheel ") for line in lines[:runtime])
    run = lines[runtime:]
    (install,) = [line for line in run if line.startswith("RUN ") and " pip install " in line]
    assert "--no-index" in shlex.split(install)
    (user,) = [shlex.split(line) for line in run if line.startswith("RUN useradd")]
    assert user[-1] == "chronicle" and user[user.index("--uid") + 1] == "10001"
    assert user[user.index("--home-dir") + 1] == "/var/lib/chronicle"
    assert [line for line in run if line.startswith(("USER ", "WORKDIR "))] == [
        "USER chronicle",
        "WORKDIR /var/lib/chronicle",
    ]
    made = [i for i, line in enumerate(run) if line == "RUN mkdir -p data"]
    assert made and made[0] > run.index("USER chronicle")  # owned by the runtime user


def test_the_image_listens_everywhere_and_keeps_sqlite_in_its_data_folder() -> None:
    """ "The image listens on `0.0.0.0:50051`" and "defaults to SQLite in
    `/var/lib/chronicle/data`", where the documented line mounts its volume."""
    text = flowing(DEPLOYMENT)
    assert "The image listens on `0.0.0.0:50051`" in text
    assert "It defaults to SQLite in `/var/lib/chronicle/data`" in text
    environment = dockerfile_environment()
    assert environment["CHRONICLE_LISTEN"] == "0.0.0.0:50051"
    assert "EXPOSE 50051" in dockerfile()
    url = environment["CHRONICLE_DATABASE_URL"]
    assert url.startswith("sqlite:///") and not url.startswith("sqlite:////")  # relative to WORKDIR
    (workdir,) = [line.split()[1] for line in dockerfile() if line.startswith("WORKDIR ") and "chronicle" in line]
    folder = str(Path(workdir) / Path(url.removeprefix("sqlite:///")).parent)
    assert folder == "/var/lib/chronicle/data"
    (line,) = [
        line for line in DEPLOYMENT.read_text().splitlines() if line.startswith("docker run") and "--auth" in line
    ]
    volumes = [word.split(":") for word in shlex.split(line) if word.count(":") >= 1 and not word.startswith("-")]
    assert ["chronicle-data", folder] in volumes


def test_the_image_runs_chronicle_serve_and_checks_its_health_by_its_own_settings() -> None:
    """The entry point is `chronicle` (so `docker run chronicle plugins`
    works), a bare run is `serve`, and the HEALTHCHECK names no server: it
    checks the one the container's environment describes."""
    assert "The entry point is the `chronicle` command" in flowing(DEPLOYMENT)
    assert dockerfile_command() == ["chronicle", "serve"]
    health = dockerfile_healthcheck()
    assert health[:2] == ["chronicle", "health"]
    assert not any(word.startswith("--server") for word in health)


def test_no_layer_of_the_image_holds_the_wheels() -> None:
    """The wheels are bind-mounted from the build stage for the install
    step. Before the fix they were copied into a layer (`COPY --from=build
    /wheels`) and `rm -rf` in a later one, which leaves them in the image."""
    lines = dockerfile()
    runtime = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    run = lines[runtime:]
    assert not [line for line in run if line.startswith("COPY --from=build")]
    (install,) = [shlex.split(line) for line in run if line.startswith("RUN ") and " pip install " in line]
    assert "--mount=type=bind,from=build,source=/wheels,target=/wheels" in install
    assert install[install.index("--find-links") + 1] == "/wheels"
    assert lines[0] == "# syntax=docker/dockerfile:1"  # RUN --mount needs BuildKit's syntax


def test_the_dependencies_wheels_are_built_before_the_sources_are_copied() -> None:
    """A change to Chronicle's code leaves the dependencies' layer cached:
    it is built from pyproject.toml and constraints.txt alone."""
    lines = dockerfile()
    runtime = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    build = lines[:runtime]
    dependencies = next(i for i, line in enumerate(build) if line.startswith("RUN ") and "pip wheel" in line)
    copied = [line.split()[1:-1] for line in build[:dependencies] if line.startswith("COPY ")]
    assert sorted(source for sources in copied for source in sources) == [
        "constraints.txt",
        "pyproject.toml",
        "tools/dependencies.py",
    ]
    runs = [line for line in build if line.startswith("RUN ")]
    assert runs[-1].startswith("RUN pip wheel") and "--no-deps" in runs[-1].split()
    assert any(line == "COPY service service" for line in build[dependencies:])


def test_the_image_holds_later_installs_to_its_pins_and_serves_no_examples() -> None:
    """An image FROM this one that installs its domains keeps the image's
    grpcio and protobuf (PIP_CONSTRAINT names the frozen installed set),
    and only its domains are served (CHRONICLE_EXAMPLE_PLUGINS=false)."""
    environment = dockerfile_environment()
    assert environment["PIP_CONSTRAINT"] == "/etc/chronicle/constraints.txt"
    assert environment["CHRONICLE_EXAMPLE_PLUGINS"] == "false"
    lines = dockerfile()
    (install,) = [line for line in lines if " pip install " in line]
    assert "pip freeze --exclude chronicle >/etc/chronicle/constraints.txt" in install
    text = flowing(DEPLOYMENT)
    assert "The image serves no example plugins" in text
    assert "PIP_CONSTRAINT" in text and "by digest" in text


def test_the_guide_gives_the_images_uid_to_own_the_secrets() -> None:
    (uid,) = re.findall(r"private to the image's user, uid ([0-9]+)", flowing(DEPLOYMENT))
    assert f"sudo chown -R {uid} secrets" in DEPLOYMENT.read_text()
    (user,) = [shlex.split(line) for line in dockerfile() if line.startswith("RUN useradd")]
    assert user[user.index("--uid") + 1] == uid


# -- make run ----------------------------------------------------------------------------


def makefile_rule(target: str) -> tuple[list[str], list[str]]:
    """A Makefile rule's prerequisites and recipe lines."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(target + ":"))
    prerequisites = lines[start].split(":", 1)[1].split()
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return prerequisites, recipe


def test_make_run_makes_the_venv_and_the_protobuf_code_then_serves_with_the_arguments_given() -> None:
    """README: "make run  # creates .venv, generates the Protobuf code,
    serves 127.0.0.1:50051 on SQLite (./data/)", and `make run ARGS=…`
    passes its arguments to `chronicle serve`."""
    assert "make run     # creates .venv, generates the Protobuf code, serves 127.0.0.1:50051" in README.read_text()
    assert "`make run ARGS=--anonymous-admin`" in README.read_text()
    prerequisites, recipe = makefile_rule("run")
    assert recipe == ["$(BIN)/chronicle serve $(ARGS)"]  # no flags of its own: the defaults below hold
    assert prerequisites == ["protos"]
    protos, _ = makefile_rule("protos")
    assert protos == ["$(STAMP)", "chronicle/.generated"]
    _, venv = makefile_rule("$(STAMP)")
    assert any("-m venv $(VENV)" in line for line in venv)
    _, generated = makefile_rule("chronicle/.generated")
    assert any("tools/gen_protos.py" in line for line in generated)
    assert Settings().listen == "127.0.0.1:50051"
    assert DEFAULT_DATABASE_URL == "sqlite:///data/chronicle.db"
