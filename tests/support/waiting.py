"""Waiting for a condition that becomes true through another process's work."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float = 20.0, what: str = "condition") -> None:
    """Poll ``check`` until it returns True; fail after ``within`` seconds.

    Tests assert the outcome, not how fast it came: ``within`` only bounds
    how long a broken build waits before failing.
    """
    deadline = time.monotonic() + within
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {within}s")
        await asyncio.sleep(0.05)
