"""The progress of a long operation: a bar with the time left on a
terminal, plain lines elsewhere."""

from __future__ import annotations

import io

from service.progress import Reporter


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_elsewhere_plain_lines_with_the_rate_and_the_time_left() -> None:
    out = io.StringIO()
    reporter = Reporter("rebuilding p", unit="positions", stream=out, interval=0.0)
    reporter.update(0, 1000)
    reporter.update(250, 1000)
    reporter.close("rebuilt up to position 1000")
    lines = out.getvalue().splitlines()
    assert lines[1].startswith("rebuilding p: 250 of 1,000 positions, ")
    assert "25%" in lines[1] and "ETA 0:" in lines[1]
    assert lines[-1] == "rebuilding p: rebuilt up to position 1000"
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()


def test_on_a_terminal_a_bar_with_the_time_left() -> None:
    out = Terminal()
    reporter = Reporter("rebuilding p", unit="positions", stream=out)
    reporter.update(250, 1000)
    reporter.update(500, 1000)
    reporter.close("rebuilt")
    shown = out.getvalue()
    assert "rebuilding p" in shown and "500 of 1,000 positions" in shown and "ETA" in shown
    assert shown.rstrip().endswith("rebuilding p: rebuilt")
