"""The ``chronicle`` command line: it refuses bad arguments before it sends
anything (these tests run no server, and the address they name has none),
and its --help describes every argument and the exit statuses."""

from __future__ import annotations

import argparse

import pytest

from service.cli import build_parser, main

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
