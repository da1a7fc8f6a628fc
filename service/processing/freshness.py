"""Reading your own writes from a log that may be behind (a standby).

A client that wrote an event at position P and then reads from a server
whose reads come from a hot standby may find the standby not yet at P.
``wait_for_position`` holds the read until the log as this server reads it
reaches P, or refuses it (UNAVAILABLE, READS_BEHIND, with RetryInfo) after
``max_wait`` seconds, so that the client retries rather than reading stale
state without knowing. A position beyond the end of the primary's log is
refused at once (INVALID_ARGUMENT, POSITION_BEYOND_END, as for Subscribe).

``wait_for_projection`` does the same for a read model: a document read
with ``min_position`` waits until its projection has applied the log that
far (PROJECTION_BEHIND when it does not in time), unless the projection is
stopped at an event at or before it by a handler's failure
(FAILED_PRECONDITION, PROJECTION_FAILED, at once: waiting would not help)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from service.errors import InvalidInput, ProjectionStopped, StoreUnavailable
from service.store.base import LogReader, ProjectionStore

if TYPE_CHECKING:
    from service.processing.projections import Progress

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


# A projection run by another replica commits where this one cannot hear
# it: its checkpoint is read again after these pauses (doubling from the
# first to the last), one small indexed read each.
_FIRST_LOOK = 0.005
_LAST_LOOK = 0.1


async def wait_for_projection(
    documents: ProjectionStore,
    name: str,
    position: int,
    *,
    log: LogReader,
    progress: Progress | None,
    max_wait: float,
    stopped: Callable[[int], Awaitable[tuple[int, str]]] | None = None,
    disclose_error: bool = True,
) -> int:
    """The checkpoint of projection ``name`` once it is at or past
    ``position`` (0: at once), so that a document read next reflects every
    event up to it. ``progress`` (this replica's runner of it) wakes the wait
    at each of its commits; when another replica runs it, the stored
    checkpoint is polled. After ``max_wait`` seconds: UNAVAILABLE,
    PROJECTION_BEHIND (with RetryInfo). A position beyond the end of the log
    is INVALID_ARGUMENT, POSITION_BEYOND_END, at once. ``stopped`` (given
    the stored checkpoint): the position of the event a handler failed on,
    where the projection stands still, and the error (0 and "" while it
    goes), as its runner here knows it or as the runner elsewhere stored
    it: a ``position`` at or past it is FAILED_PRECONDITION,
    PROJECTION_FAILED, at once, or as soon as it stops so; with the error's
    text only when ``disclose_error`` (the caller may read the projection's
    status: the text may quote any event's payload, another tenant's too)."""
    signal = progress.next() if progress is not None else None
    checkpoint = await documents.projection_position(name)
    if checkpoint >= position:
        return checkpoint
    head = await log.log_head()
    if position > head:
        raise InvalidInput(
            f"min_position {position} is beyond the end of the log ({head})",
            reason="POSITION_BEYOND_END",
            metadata={"min_position": str(position), "log_head": str(head)},
        )
    await _check_stopped(name, position, checkpoint, stopped, disclose_error)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_wait
    pause = _FIRST_LOOK
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise StoreUnavailable(
                f"projection {name} has applied the log up to position {checkpoint}, not yet {position}; retry shortly",
                reason="PROJECTION_BEHIND",
                metadata={"projection": name, "position": str(checkpoint), "min_position": str(position)},
            )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(remaining, pause)):
                if signal is not None:
                    await signal.wait()
                else:
                    await asyncio.sleep(pause)
        pause = min(pause * 2, _LAST_LOOK)
        signal = progress.next() if progress is not None else None
        checkpoint = await documents.projection_position(name)
        if checkpoint >= position:
            return checkpoint
        await _check_stopped(name, position, checkpoint, stopped, disclose_error)


async def _check_stopped(
    name: str,
    position: int,
    checkpoint: int,
    stopped: Callable[[int], Awaitable[tuple[int, str]]] | None,
    disclose_error: bool,
) -> None:
    """Refuse a wait that only a fixed plugin can end."""
    failed_at, error = await stopped(checkpoint) if stopped is not None else (0, "")
    if failed_at and failed_at <= position:
        metadata = {
            "projection": name,
            "position": str(checkpoint),
            "min_position": str(position),
            "failed_at": str(failed_at),
        }
        if disclose_error:
            metadata["error"] = error
        because = f" by a failure ({error})" if disclose_error else " by a handler's failure"
        raise ProjectionStopped(
            f"projection {name} is stopped at position {failed_at}{because}; it has applied the log"
            f" up to position {checkpoint} and will not reach {position} until that is fixed",
            metadata=metadata,
        )
