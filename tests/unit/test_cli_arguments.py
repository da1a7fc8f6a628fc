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
