"""The command line's usage errors for an address flag named as other tools
name it: ``--address`` (and the like) to a command that talks to a server
points at ``--server``, and to ``serve`` at ``--listen``
(``service/cli_parser.py``); the names themselves stay as they are."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service.cli import main


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == 2  # argparse's usage error
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', "--address", "127.0.0.1:50051"),
        ("submit", "--address", "127.0.0.1:50051", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}'),
        ("read", "acc-1", "--address=127.0.0.1:50051"),
        ("health", "--host", "127.0.0.1:50051"),
        ("read", "acc-1", "--listen", "127.0.0.1:50051"),
    ],
    ids=["after", "before-positionals", "equals", "host", "listen"],
)
def test_a_client_command_given_an_address_flag_says_to_use_server(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    err = usage_error(capsys, *argv)
    assert "give the server's address as --server host:port" in err, err


@pytest.mark.parametrize("flag", ["--address", "--server", "--port"])
def test_serve_given_an_address_flag_says_to_use_listen(capsys: pytest.CaptureFixture[str], flag: str) -> None:
    err = usage_error(capsys, "serve", flag, "127.0.0.1:50051")
    assert f"{flag} is not a flag of chronicle serve: it listens on --listen host:port" in err, err


def test_another_unknown_flag_gets_argparses_error_alone(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(capsys, "read", "acc-1", "--colour")
    assert "unrecognized arguments: --colour" in err
    assert "--server host:port" not in err


def test_the_installed_command_says_it_too() -> None:
    ran = subprocess.run(
        [sys.executable, "-m", "service", "read", "acc-1", "--address", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 2
    assert "unrecognized arguments: --address 127.0.0.1:1; --address is not a flag here" in ran.stderr, ran.stderr
