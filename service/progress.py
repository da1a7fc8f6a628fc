"""How far a long operation has got (a projection's rebuild, an export, an
import), on standard error: on a terminal a bar with the rate and the time
left (rich), elsewhere a plain line every few seconds, so that a log shows
progress without control characters."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

PLAIN_INTERVAL = 2.0


class Reporter:
    """``update(done)`` as the work goes on, ``update(done, total)`` when the
    total moves (a projection rebuilt while the log grows); ``close(outcome)``
    at the end. ``total`` None: not known (an import read from a pipe).
    ``unit`` names what is counted ("positions", "records", "bytes")."""

    def __init__(
        self,
        what: str,
        *,
        unit: str,
        total: int | None = None,
        stream: TextIO | None = None,
        quiet: bool = False,
        interval: float = PLAIN_INTERVAL,
    ) -> None:
        self._what = what
        self._unit = unit
        self._total = total
        self._stream = stream or sys.stderr
        self._quiet = quiet
        self._interval = interval
        self._started = time.monotonic()
        self._last_line = self._started
        self._done = 0
        self._bar: Progress | None = None
        if not quiet and self._stream.isatty():
            self._bar, self._task = _rich_bar(what, unit=unit, total=total, stream=self._stream)

    def update(self, done: int, total: int | None = None) -> None:
        self._done = done
        if total is not None:
            self._total = max(total, done)
        if self._quiet:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=self._total, amount=self._amount_text())
            return
        now = time.monotonic()
        if now - self._last_line >= self._interval:
            self._last_line = now
            print(f"{self._what}: {self._line(now)}", file=self._stream, flush=True)

    def close(self, outcome: str) -> None:
        """The last word: ``outcome`` (what was done), always shown unless quiet."""
        if self._bar is not None:
            self._bar.update(self._task, completed=self._done, total=self._total, amount=self._amount_text())
            self._bar.stop()
        if not self._quiet:
            print(f"{self._what}: {outcome}", file=self._stream, flush=True)

    def _amount_text(self) -> str:
        if self._total is None:
            return _amount(self._done, self._unit)
        if self._unit == "bytes":
            return f"{_amount(self._done, self._unit)} of {_amount(self._total, self._unit)}"
        return f"{self._done:,} of {self._total:,} {self._unit}"

    def _line(self, now: float) -> str:
        elapsed = max(now - self._started, 1e-9)
        rate = self._done / elapsed
        line = f"{self._amount_text()}, {_amount(rate, self._unit)}/s"
        if self._total:
            line += f", {self._done / self._total * 100:.0f}%"
            if rate > 0:
                line += f", ETA {_duration(max(self._total - self._done, 0) / rate)}"
        return line


def _rich_bar(what: str, *, unit: str, total: int | None, stream: TextIO) -> tuple[Progress, TaskID]:
    # rich only when there is a terminal to draw on: a command run in a
    # script does not pay for importing it
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

    class Rate(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{_amount(speed, unit)}/s", style="progress.data.speed")

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[amount]}"),
        Rate(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(file=stream),
    )
    task = bar.add_task(what, total=total, amount="")
    bar.start()
    return bar, task


def _amount(value: float, unit: str) -> str:
    if unit == "bytes":
        for name in ("B", "KiB", "MiB", "GiB"):
            if value < 1024 or name == "GiB":
                return f"{value:,.1f} {name}" if name != "B" else f"{value:,.0f} B"
            value /= 1024
    return f"{value:,.0f} {unit}"


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{seconds:02}"
