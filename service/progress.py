"""How far a long operation has got, on standard error: on a terminal a bar
with the rate and the time left (rich's, when it is installed; a line of
text redrawn in place otherwise), elsewhere a plain line every few seconds,
so that a log shows progress without control characters."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

PLAIN_INTERVAL = 2.0


class Reporter:
    """``update(done, total)`` as the work goes on (``total`` may move: a
    projection rebuilt while the log grows); ``close(outcome)`` at the end.
    ``unit`` names what is counted."""

    def __init__(self, what: str, *, unit: str, stream: TextIO | None = None, interval: float = PLAIN_INTERVAL) -> None:
        self._what = what
        self._unit = unit
        self._stream = stream or sys.stderr
        self._interval = interval
        self._started = time.monotonic()
        self._last_line = self._started
        self._done = 0
        self._total = 0
        self._terminal = self._stream.isatty()
        self._bar: Any = None
        if self._terminal:
            self._bar = _rich_bar(what, self._stream)

    def update(self, done: int, total: int) -> None:
        self._done, self._total = done, max(total, done)
        now = time.monotonic()
        if self._bar is not None:
            progress, task = self._bar
            progress.update(task, completed=self._done, total=self._total or None, amount=self._amount())
        elif self._terminal:
            print(f"\r{self._what}: {self._line(now, bar=True)}\x1b[K", end="", file=self._stream, flush=True)
        elif now - self._last_line >= self._interval:
            self._last_line = now
            print(f"{self._what}: {self._line(now)}", file=self._stream, flush=True)

    def close(self, outcome: str) -> None:
        """The last word: ``outcome`` (what was done)."""
        if self._bar is not None:
            progress, task = self._bar
            progress.update(task, completed=self._done, total=self._total or None, amount=self._amount())
            progress.stop()
        elif self._terminal:
            print(file=self._stream)
        print(f"{self._what}: {outcome}", file=self._stream, flush=True)

    def _amount(self) -> str:
        return f"{self._done:,} of {self._total:,} {self._unit}"

    def _line(self, now: float, *, bar: bool = False) -> str:
        elapsed = max(now - self._started, 1e-9)
        rate = self._done / elapsed
        share = self._done / self._total if self._total else 0.0
        line = f"{self._amount()}, {rate:,.0f} {self._unit}/s, {share * 100:.0f}%"
        if rate > 0 and self._total:
            line += f", ETA {_duration((self._total - self._done) / rate)}"
        if bar:
            filled = int(share * 30)
            line = f"[{'#' * filled}{'.' * (30 - filled)}] {line}"
        return line


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{seconds:02}"


def _rich_bar(what: str, stream: TextIO) -> tuple[Any, Any] | None:
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
    except ImportError:  # not installed: the plain bar
        return None
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[amount]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(file=stream),
    )
    task = progress.add_task(what, total=None, amount="")
    progress.start()
    return progress, task
