"""Starting database work now, to overlap it with Python's own.

``asyncio.ensure_future`` only schedules a coroutine: it does not run until
the task that made it next waits. A runner that starts the read of its next
page (or the commit of the batch it just applied) and then spends tens of
milliseconds of CPU on the page it has leaves PostgreSQL idle all that
time, and only sends the statement when it finally awaits: reading, applying
and committing then take turns instead of overlapping. ``started`` yields to
the loop once, so the new task runs up to its first real wait (its
statements written to the connection) before the caller goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def started(work: Awaitable[T]) -> asyncio.Future[T]:
    """``work`` as a future that is already under way."""
    future = asyncio.ensure_future(work)
    try:
        await asyncio.sleep(0)
    except BaseException:  # cancelled meanwhile: so is the work, as if awaited
        future.cancel()
        raise
    return future
