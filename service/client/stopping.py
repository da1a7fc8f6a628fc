"""Stopping the client's own tasks (a stream's pump and writer, the routing
client's topology watch) when the caller is done with them."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)


async def stop(*tasks: asyncio.Task[Any]) -> None:
    """Cancel ``tasks`` and wait until each has ended.

    How they ended is not the caller's concern: a cancellation is what was
    asked, and an error was already reported where the task's work is read
    (a stream's results, the routing client's log), so it is only logged
    here. A cancellation of the caller itself, arriving while it waits, is
    raised: suppressing every CancelledError around the wait would swallow
    it too, and a user's ``asyncio.timeout`` around ``close()``, or a task
    cancelled while it closed a stream, would carry on as if not cancelled."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        except Exception:
            log.debug("%s had failed before it was stopped", task.get_name(), exc_info=True)
