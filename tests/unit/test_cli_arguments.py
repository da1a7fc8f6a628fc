"""The ``chronicle`` command line: it refuses bad arguments before it sends
anything (these tests run no server, and the address they name has none),
and its --help describes every argument and the exit statuses."""

from __future__ import annotations

import argparse

import pytest

from service.cli import _unreachable_hint, build_parser, main
from service.settings import DURATION

NOBODY = "127.0.0.1:9"  # the discard port: a call that got this far would fail differently


@pytest.mark.parametrize(
    "argv",
    [
        ["submit", "   ", "bank.v1.OpenAccount", '{"owner": "ann"}'],
        ["read", "   "],
        ["get", " "],
        ["forget", "  "],
        ["audit", "--aggregate", "   "],
        ["tail", "--aggregate", "   "],
    ],
    ids=lambda argv: argv[0],
)
def test_an_aggregate_id_of_only_spaces_is_refused_before_anything_is_sent(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--server", NOBODY])
    assert exited.value.code == 2
    assert "must not be only whitespace" in capsys.readouterr().err


@pytest.mark.parametrize("start", ["18446744073709551616", "9223372036854775808", "-1", "\uff11", "soon"])
def test_a_tail_from_a_position_out_of_range_is_a_usage_error_naming_the_flag(
    start: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A position beyond what a SubscribeRequest holds printed protobuf's
    own "Value out of range"; one beyond the stores' 2^63-1 was sent; a
    full-width digit was taken for an ASCII one."""
    assert main(["tail", "--from", start, "--server", NOBODY]) == 2
    assert capsys.readouterr().err == (
        f"error: --from takes 'end' or a position from 0 to 9223372036854775807, got {start!r}\n"
    )


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("[1]", "the payload must be a JSON object ({...}), got an array"),
        ('"str"', "the payload must be a JSON object ({...}), got a string"),
        ("null", "the payload must be a JSON object ({...}), got null"),
        ('{"amount": 1, "amount": 2}', 'the payload has the key "amount" twice in one object'),
    ],
)
def test_a_payload_that_is_not_a_json_object_is_one_line_on_stderr_and_exit_2(
    payload: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["submit", "acc-1", "bank.v1.Deposit", payload, "--server", NOBODY]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_the_help_of_every_command_lists_the_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["read", "--help"], ["serve", "--help"], ["health", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        shown = capsys.readouterr().out
        assert "exit status (every command):" in shown
        assert "1    the server refused or failed the call" in shown
        assert "141  the reader of the output stopped early" in shown


def arguments_without_help(parser: argparse.ArgumentParser, path: str = "chronicle") -> list[str]:
    """Every argument of ``parser`` and of its subcommands, at any depth,
    that ``--help`` would show without a word on what it is."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            described = {choice.dest: choice.help for choice in action._choices_actions}
            for name, subparser in action.choices.items():
                if not (described.get(name) or "").strip():
                    missing.append(f"{path} {name}")
                missing += arguments_without_help(subparser, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction) and not (action.help or "").strip():
            missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_argument_of_every_command_has_a_help_text() -> None:
    assert arguments_without_help(build_parser()) == []


def test_the_walk_finds_an_argument_without_help() -> None:
    parser = argparse.ArgumentParser(prog="chronicle")
    commands = parser.add_subparsers()
    read = commands.add_parser("read", help="read")
    read.add_argument("aggregate_id", help="an aggregate")
    read.add_argument("--origin")
    commands.add_parser("get")
    assert arguments_without_help(parser) == ["chronicle read --origin", "chronicle get"]


def test_metadata_that_is_not_key_equals_value_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["submit", "acc-1", "bank.v1.Deposit", "--meta", "novalue", "--server", NOBODY])
    assert exited.value.code == 2
    assert "argument --meta: expected KEY=VALUE, got 'novalue'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("server", "message"),
    [
        (
            "http://127.0.0.1:50051",
            "argument --server: give the server as host:port, without a scheme: '127.0.0.1:50051',"
            " not 'http://127.0.0.1:50051' (TLS is --tls-ca, not https://)",
        ),
        (
            "https://chronicle.example.com:443/",
            "argument --server: give the server as host:port, without a scheme: 'chronicle.example.com:443',"
            " not 'https://chronicle.example.com:443/'",
        ),
        ("127.0.0.1:50051/", "argument --server: give the server as host:port, without a path: '127.0.0.1:50051'"),
    ],
)
def test_a_server_given_as_a_url_is_refused_with_the_address_to_give(
    server: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # gRPC would take "http://127.0.0.1:50051" for a host name it cannot resolve.
    with pytest.raises(SystemExit) as exited:
        main(["get", "acc-1", "--server", server])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_a_server_from_the_environment_is_checked_like_the_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CHRONICLE_SERVER", "http://127.0.0.1:50051")
    with pytest.raises(SystemExit) as exited:
        main(["get", "acc-1"])
    assert exited.value.code == 2
    assert "without a scheme: '127.0.0.1:50051'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["get", "acc-1", "--at-time", "yesterday"],
        ["get", "acc-1", "--at-time", "2026-01-31T12:00:00"],  # no offset: which zone?
        ["audit", "--since", "2026-01-01"],
        ["audit", "--until", "yesterday"],
        ["archive", "folder", "--type", "Account", "--untouched-since", "yesterday"],
    ],
    ids=lambda argv: argv[-2],
)
def test_a_time_that_is_not_rfc_3339_is_refused_before_anything_is_sent(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--server", NOBODY])
    assert exited.value.code == 2
    assert f"expected an RFC 3339 time with its offset, e.g. 2026-01-31T12:00:00Z, got {argv[-1]!r}" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("{'amount': 1}", "Expecting property name enclosed in double quotes (line 1, column 2)"),
        ("amount=5", "Expecting value (line 1, column 1)"),
    ],
)
def test_a_payload_that_is_not_json_says_how_to_write_one(
    payload: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["submit", "acc-1", "bank.v1.Deposit", payload, "--server", NOBODY]) == 2
    assert capsys.readouterr().err == (
        f"error: the payload is not valid JSON: {message}\n"
        "  the payload is one JSON object, its keys and strings in double quotes, all of it in single quotes"
        """ for the shell: '{"amount": 100}'\n"""
    )


def test_no_server_at_the_address_says_so_and_what_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["get", "acc-1", "--server", NOBODY]) == 1
    error, hint = capsys.readouterr().err.splitlines()
    assert error.startswith("error: UNAVAILABLE: ")
    assert hint == (
        f"  no Chronicle server answered at {NOBODY}: start one (`make run` in the repository, or `chronicle serve`),"
        " or give its address with --server HOST:PORT (env CHRONICLE_SERVER)"
    )


@pytest.mark.parametrize(
    ("server", "details", "tls", "hint"),
    [
        (
            "localhost",
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:443: Connection refused",
            False,
            "  --server localhost names no port (gRPC then tries 443): give host:port, e.g. localhost:50051",
        ),
        (
            "nosuchhost:50051",
            "errors resolving nosuchhost:50051: [field:hostname lookup error:Domain name not found]",
            False,
            "  the host of nosuchhost:50051 is not known here: check its spelling (--server HOST:PORT)",
        ),
        (
            "127.0.0.1:50051",
            "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:50051: Socket closed",
            False,
            "  the connection at 127.0.0.1:50051 closed at once: is it a Chronicle server? One with TLS"
            " (--tls-cert-file) needs --tls-ca CA_FILE (env CHRONICLE_TLS_CA)",
        ),
        (
            "127.0.0.1:50051",
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50051: Tls handshake failed",
            True,
            "  the TLS handshake failed at 127.0.0.1:50051: a server without TLS needs no --tls-ca;"
            " one with it, the CA that signed its certificate",
        ),
        (
            "[::1]:50051",
            "failed to connect to all addresses; last error: UNKNOWN: ipv6:[::1]:50051: Connection refused",
            False,
            "  no Chronicle server answered at [::1]:50051: start one (`make run` in the repository, or `chronicle"
            " serve`), or give its address with --server HOST:PORT (env CHRONICLE_SERVER)",
        ),
    ],
    ids=["no port", "unknown host", "plaintext to TLS", "TLS to plaintext", "IPv6"],
)
def test_an_unreachable_server_is_explained_by_what_grpc_saw(server: str, details: str, tls: bool, hint: str) -> None:
    args = argparse.Namespace(server=server, tls_ca="ca.pem" if tls else None, tls_cert=None)
    assert _unreachable_hint(details, args) == hint


@pytest.mark.parametrize("command", ["serve", "plugins"])
def test_a_negative_duration_apart_from_its_flag_is_refused_as_bad_setting(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``chronicle serve --shutdown-grace -1s`` was argparse's usage error
    ("expected one argument"); it is the one BAD_SETTING line every other
    refused setting gets, exit status 2, before anything starts."""
    assert main([command, "--database-url", "memory://", "--shutdown-grace", "-1s"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == "error: BAD_SETTING: --shutdown-grace: -1 is negative; 0 or more: " + DURATION


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["reaction", "--states"], "act on one reaction"),
        (["reaction", "r.x", "--prefix", "a"], "--prefix goes with --states or --drop-states"),
        (["reaction", "r.x", "--parked", "--confirm", "3"], "--confirm goes with --drop-states"),
        (["reaction", "r.x", "--drop-states"], "--drop-states needs --prefix"),
    ],
    ids=["no-name", "prefix-alone", "confirm-alone", "drop-states-without-prefix"],
)
def test_process_state_options_out_of_place_are_refused_before_anything_is_sent(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--server", NOBODY]) == 2
    assert said in capsys.readouterr().err
