"""Ending the server's background tasks."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)


async def cancel_and_wait(task: asyncio.Task[Any] | None, what: str, logger: logging.Logger = log) -> None:
    """Cancel ``task`` (if any) and wait until it has ended.

    Whoever stops a background task is shutting something down, and the rest
    of that shutdown must still run: an error the task had already ended
    with is logged here, not raised. A cancellation of the caller itself,
    while it waits, is not swallowed."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:
        logger.exception("%s had failed before it was stopped", what)
