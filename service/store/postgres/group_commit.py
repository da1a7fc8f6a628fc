"""Group commit: appends that arrive together share one write.

Each aggregate's worker appends one command (or one series) at a time, but
hundreds of workers append at once. Giving each its own transaction costs a
WAL flush, a round trip and the position lock per command. ``GroupCommitter``
queues appends and hands each batch to its one ``write`` callable (for
PostgreSQL, one statement in one transaction: appends.py), which answers
each append with its events as committed or the error it met.

A batch starts as soon as fewer than ``in_flight`` are being written, at
the end of the event loop's current round: every append made in the same
round (a burst of commands that arrived together) joins it, and a lone
append waits for nothing but the callbacks already due. Under load, the
appends that queued while the previous batches were being committed form
the next one; when a batch of several has just been written and only a few
are queued, the next waits ``gather`` seconds for more (PostgreSQL's
``commit_delay`` idea): each batch's statement has a fixed cost, so fewer,
larger ones leave the database and the server more CPU for the commands.
Nothing here creates a task or awaits: an append is a future completed by
the write's callback, so a command costs its caller one future.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from service.store.records import CommandRecord, NewEvent, RecordedEvent
from service.values import value


@value(frozen=True, slots=True)
class Append:
    """One append waiting for its batch."""

    aggregate_id: str
    events: Sequence[NewEvent]
    expected_version: int
    commands: Sequence[CommandRecord]


# Each append's events as committed, or the error it met (ConcurrencyConflict,
# CommandAlreadyRecorded, ...). The write fails as a whole (its future's
# exception) only when nothing of the batch can be known (the store is gone).
Outcome = list[RecordedEvent] | BaseException
WriteBatch = Callable[[Sequence[Append]], "asyncio.Future[list[Outcome]]"]


@dataclass(frozen=True, slots=True)
class BatchCounts:
    """What group commit has written since the store opened."""

    batches: int  # transactions
    appends: int  # appends they carried (appends / batches: the mean batch)
    alone: int  # appends sent down the precise path after a refused batch


_Queued = tuple[Append, "asyncio.Future[list[RecordedEvent]]"]


class GroupCommitter:
    def __init__(
        self,
        write: WriteBatch,
        *,
        in_flight: int = 2,
        max_events: int = 2000,
        gather: float = 0.0,
        gather_below: int = 8,
    ) -> None:
        self._write = write
        self._in_flight = in_flight
        self._max_events = max_events
        self._gather = gather
        self._gather_below = gather_below
        self._queue: list[_Queued] = []
        self._writing = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self.batches = 0
        self.batched_appends = 0

    def append(self, append: Append) -> asyncio.Future[list[RecordedEvent]]:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        reply: asyncio.Future[list[RecordedEvent]] = self._loop.create_future()
        self._queue.append((append, reply))
        if self._writing < self._in_flight and not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._start)
        return reply

    def _take(self) -> list[_Queued]:
        """The next batch: queued appends up to the event budget, at most one
        per aggregate (a second append for one aggregate waits for the next
        batch: it expects the first one's versions), none whose caller gave up."""
        taken: list[_Queued] = []
        rest: list[_Queued] = []
        seen: set[str] = set()
        events = 0
        for item in self._queue:
            append, reply = item
            if reply.done():
                continue
            if append.aggregate_id in seen or (taken and events + len(append.events) > self._max_events):
                rest.append(item)
                continue
            seen.add(append.aggregate_id)
            events += len(append.events)
            taken.append(item)
        self._queue = rest
        return taken

    def _start(self) -> None:
        self._scheduled = False
        while self._writing < self._in_flight and self._queue:
            batch = self._take()
            if not batch:
                return
            self._writing += 1
            try:
                written = self._write([append for append, _ in batch])
            except Exception as error:  # a bug in the writer: fail the batch, keep the committer alive
                self._writing -= 1
                for _, reply in batch:
                    if not reply.done():
                        reply.set_exception(error)
                continue
            written.add_done_callback(partial(self._written, batch))

    def _written(self, batch: list[_Queued], written: asyncio.Future[list[Outcome]]) -> None:
        self._writing -= 1
        error = written.exception() if not written.cancelled() else asyncio.CancelledError()
        if error is not None:
            for _, reply in batch:
                if not reply.done():
                    reply.set_exception(error)
        else:
            self.batches += 1
            self.batched_appends += len(batch)
            for (_, reply), outcome in zip(batch, written.result(), strict=True):
                if reply.done():
                    continue
                if isinstance(outcome, BaseException):
                    reply.set_exception(outcome)
                else:
                    reply.set_result(outcome)
        if self._gather and len(batch) > 1 and len(self._queue) < self._gather_below and not self._scheduled:
            # Under load (this batch carried several appends) with few queued
            # yet: give the next batch ``gather`` seconds to fill, as
            # PostgreSQL's commit_delay does. A few milliseconds of latency buy
            # fewer, larger transactions; a lone append (no load) never waits.
            assert self._loop is not None
            self._scheduled = True
            self._loop.call_later(self._gather, self._start)
            return
        self._start()
