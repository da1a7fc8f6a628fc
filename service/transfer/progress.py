"""How far an export or import has got, on standard error: on a terminal a
bar with the rate and the time left (rich), otherwise a plain line every
few seconds, so that a log shows progress without control characters."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

PLAIN_INTERVAL = 2.0


class _Rate(ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self._unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{_amount(speed, self._unit)}/s", style="progress.data.speed")


def _amount(value: float, unit: str) -> str:
    if unit == "bytes":
        for name in ("B", "KiB", "MiB", "GiB"):
            if value < 1024 or name == "GiB":
                return f"{value:,.1f} {name}" if name != "B" else f"{value:,.0f} B"
            value /= 1024
    return f"{value:,.0f} {unit}"


class Reporter:
    """``update(done)`` as the work goes on; ``total`` None when unknown (a
    pipe). ``unit`` names what is counted ("events", "bytes")."""

    def __init__(
        self,
        what: str,
        *,
        total: int | None,
        unit: str,
        stream: TextIO | None = None,
        quiet: bool = False,
        interval: float = PLAIN_INTERVAL,
    ) -> None:
        self._what = what
        self._total = total
        self._unit = unit
        self._stream = stream or sys.stderr
        self._quiet = quiet
        self._interval = interval
        self._started = time.monotonic()
        self._last_line = self._started
        self._done = 0
        self._bar: Progress | None = None
        if not quiet and self._stream.isatty():
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[amount]}"),
                _Rate(unit),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self._stream),
                transient=False,
            )
            self._task = self._bar.add_task(what, total=total, amount="")
            self._bar.start()

    def update(self, done: int) -> None:
        self._done = done
        if self._quiet:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=done, amount=self._amount_text())
            return
        now = time.monotonic()
        if now - self._last_line >= self._interval:
            self._last_line = now
            print(f"{self._what}: {self._line(now)}", file=self._stream, flush=True)

    def close(self, outcome: str) -> None:
        """The last word: ``outcome`` (what was done), always shown unless quiet."""
        if self._bar is not None:
            self._bar.update(self._task, completed=self._done, amount=self._amount_text())
            self._bar.stop()
        if not self._quiet:
            print(f"{self._what}: {outcome}", file=self._stream, flush=True)

    def _amount_text(self) -> str:
        done = _amount(self._done, self._unit)
        return done if self._total is None else f"{done} of {_amount(self._total, self._unit)}"

    def _line(self, now: float) -> str:
        elapsed = max(now - self._started, 1e-9)
        rate = self._done / elapsed
        line = f"{self._amount_text()}, {_amount(rate, self._unit)}/s"
        if self._total and rate > 0:
            line += f", {self._done / self._total * 100:.0f}%"
            line += f", about {max(self._total - self._done, 0) / rate:.0f} s left"
        return line
