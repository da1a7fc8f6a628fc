"""Reading one aggregate's past: its events a page at a time, forwards or
backwards, as the plugins read them today; and its state as of a past
version or a past moment, from the nearest snapshot at or below it.

Paging contract (``ReadAggregate``): ``limit`` counts delivered events, but
a page never ends inside a stored version: the events an old event was
upcast into are delivered together. So the next page starts at the last
delivered version + 1 (forwards) or - 1 (backwards), and a page holding
fewer than ``limit`` events is the last.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from service.errors import AggregateDeleted, AggregateNotFound, VersionNotReached
from service.processing.overlap import started
from service.processing.state import Aggregate, AggregateLoader
from service.store.base import AggregateQuery, EventRecorder
from service.store.records import RecordedEvent, is_tombstone

# Stored events read from the store at once: bounds a long read's memory.
PAGE = 500


@dataclass(frozen=True, slots=True)
class EventRange:
    """Which of an aggregate's events to read, and how.

    ``start``: forwards, the first version (0 or 1: the first); backwards,
    the highest version (0: the latest). ``limit`` None: all.
    """

    start: int = 0
    backwards: bool = False
    limit: int | None = None
    origin: str | None = None
    event_types: frozenset[str] = frozenset()


class History:
    def __init__(self, store: EventRecorder, loader: AggregateLoader) -> None:
        self._store = store
        self._loader = loader

    async def events(self, aggregate_id: str, wanted: EventRange) -> AsyncIterator[RecordedEvent]:
        """The aggregate's events in ``wanted``, upcast and filtered."""
        async for page in self.pages(aggregate_id, wanted):
            for event in page:
                yield event

    async def pages(self, aggregate_id: str, wanted: EventRange) -> AsyncIterator[list[RecordedEvent]]:
        """``events`` as they are read, a store page at a time (never empty)."""
        reader = self._loader.reader
        # The store filters by stored type; a type some upcaster reads may
        # become a wanted one, so it is read too and filtered once upcast.
        stored_types = wanted.event_types | reader.upcast_types if wanted.event_types else frozenset()
        query = AggregateQuery(
            from_version=1 if wanted.backwards else max(wanted.start, 1),
            to_version=(wanted.start or None) if wanted.backwards else None,
            origin=wanted.origin,
            event_types=stored_types,
            limit=PAGE,
            backwards=wanted.backwards,
        )
        sent = 0
        ahead: asyncio.Future[list[RecordedEvent]] | None = None
        try:
            page = await self._store.read_aggregate(aggregate_id, query)
            while True:
                out: list[RecordedEvent] = []
                reached_limit = False
                try:
                    for stored in page:
                        if wanted.limit is not None and sent >= wanted.limit:
                            reached_limit = True  # only ever between stored versions
                            break
                        current = [e for e in reader.records(stored) if _matches(e, wanted)]
                        out.extend(reversed(current) if wanted.backwards else current)
                        sent += len(current)
                except Exception:
                    # An event of a known type the plugins cannot bring to its
                    # current schema ends the read, never skipped (one of an
                    # unknown type comes as stored); the events before it go first.
                    if out:
                        yield out
                    raise
                following = None if reached_limit or len(page) < PAGE else _following(query, page[-1].version)
                if following is not None:
                    # More may follow: read it while this page is sent.
                    query = following
                    ahead = await started(self._store.read_aggregate(aggregate_id, query))
                if out:
                    yield out
                if ahead is None:
                    return
                page, ahead = await ahead, None
        finally:
            if ahead is not None:
                ahead.cancel()

    async def state(self, aggregate_id: str, *, at_version: int | None = None) -> Aggregate:
        """The aggregate as of ``at_version`` (None: now)."""
        aggregate = await self._loader.load_any(aggregate_id, to_version=at_version)
        if aggregate is None:
            raise AggregateNotFound(aggregate_id)
        if at_version is not None and aggregate.version < at_version:
            last = await self._store.read_aggregate(aggregate_id, AggregateQuery(backwards=True, limit=1))
            if last and is_tombstone(last[0]):
                raise AggregateDeleted(aggregate_id)  # the versions asked for were deleted
            raise VersionNotReached(aggregate_id, at_version, aggregate.version)
        return aggregate

    async def state_at_time(self, aggregate_id: str, timestamp_us: int, *, shown_as: str = "") -> Aggregate:
        """The aggregate as of ``timestamp_us``: after every event committed
        by then (see ``EventRecorder.version_at``). ``shown_as``: the moment as
        the caller wrote it, for the error when there was nothing yet."""
        version = await self._store.version_at(aggregate_id, timestamp_us)
        if version == 0:
            raise AggregateNotFound(aggregate_id, at_time=shown_as or str(timestamp_us))
        return await self.state(aggregate_id, at_version=version)


def _following(query: AggregateQuery, last: int) -> AggregateQuery | None:
    """The page after a full one ending at version ``last``; None: none."""
    if not query.backwards:
        return AggregateQuery(from_version=last + 1, origin=query.origin, event_types=query.event_types, limit=PAGE)
    if last <= 1:
        return None
    return AggregateQuery(
        to_version=last - 1, origin=query.origin, event_types=query.event_types, limit=PAGE, backwards=True
    )


def _matches(event: RecordedEvent, wanted: EventRange) -> bool:
    return not wanted.event_types or event.event_type in wanted.event_types
