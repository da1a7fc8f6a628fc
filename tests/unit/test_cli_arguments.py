"""The ``chronicle`` command line refuses bad arguments before it sends
anything: these run no server, and the address they name has none."""

from __future__ import annotations

import pytest

from service.cli import main

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
