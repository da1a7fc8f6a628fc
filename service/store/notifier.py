"""Waking readers of the global log when something commits.

Level-triggered: the notifier remembers the highest position it was told
about, so a reader that asks "anything after P?" just after the signal still
sees it. Stores feed it from their own appends, and the PostgreSQL store also
from LISTEN, so commits through other replicas wake readers here too. A
lost signal only costs latency: readers also wake on a timeout and look.
"""

from __future__ import annotations

import asyncio
import contextlib


class CommitNotifier:
    def __init__(self) -> None:
        self._latest = 0
        self._signal = asyncio.Event()

    @property
    def latest(self) -> int:
        return self._latest

    def notify(self, position: int) -> None:
        """Positions up to ``position`` are committed."""
        if position > self._latest:
            self._latest = position
            self._signal.set()
            self._signal = asyncio.Event()

    async def wait_beyond(self, position: int, max_wait: float) -> None:
        """Return once a position after ``position`` is known committed, or
        after ``max_wait`` seconds, whichever comes first."""
        if self._latest > position:
            return
        signal = self._signal
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max_wait):
                await signal.wait()
