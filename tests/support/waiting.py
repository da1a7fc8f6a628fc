"""Waiting for a condition that becomes true through another process's work."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], *, within: float = 20.0, what: str = "condition"
) -> None:
    """Poll ``check`` (a function, or a coroutine function) until it returns
    True; fail after ``within`` seconds.

    Tests assert the outcome, not how fast it came: ``within`` only bounds
    how long a broken build waits before failing.
    """
    deadline = time.monotonic() + within
    while True:
        done = check()
        if inspect.isawaitable(done):
            done = await done
        if done:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {within}s")
        await asyncio.sleep(0.05)
