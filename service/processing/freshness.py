"""Reading your own writes from a log that may be behind (a standby).

A client that wrote an event at position P and then reads from a server
whose reads come from a hot standby may find the standby not yet at P.
``wait_for_position`` holds the read until the log as this server reads it
reaches P, or refuses it (UNAVAILABLE, READS_BEHIND, with RetryInfo) after
``max_wait`` seconds, so that the client retries rather than reading stale
state without knowing. A position beyond the end of the primary's log is
refused at once (INVALID_ARGUMENT, POSITION_BEYOND_END, as for Subscribe)."""

from __future__ import annotations

import asyncio

from service.errors import InvalidInput, StoreUnavailable
from service.store.base import LogReader

# Between looks at the log's end while waiting (wait_for_commit wakes
# earlier when a commit is announced).
_LOOK_EVERY = 0.5


async def wait_for_position(log: LogReader, position: int, *, primary: LogReader, max_wait: float) -> None:
    """Return once ``log`` (where this server reads) reaches ``position``.
    A position beyond the end of the log itself (``primary``: where commands
    are written) is INVALID_ARGUMENT at once: no one can have written it."""
    if position <= 0:
        return
    head = await log.log_head()
    if head >= position:
        return
    end = head if primary is log else await primary.log_head()
    if position > end:
        raise InvalidInput(
            f"min_position {position} is beyond the end of the log ({end})",
            reason="POSITION_BEYOND_END",
            metadata={"min_position": str(position), "log_head": str(end)},
        )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_wait
    while (head := await log.log_head()) < position:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise StoreUnavailable(
                f"reads here are at log position {head}, not yet at {position}; retry shortly",
                reason="READS_BEHIND",
                metadata={"position": str(head), "min_position": str(position)},
            )
        await log.wait_for_commit(head, min(remaining, _LOOK_EVERY))
