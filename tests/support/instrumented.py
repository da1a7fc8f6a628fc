"""Store wrappers that observe or disturb what the processor does."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

from service.store.base import AggregateQuery, SnapshotAndEvents, SnapshotKind, StoreAdapter
from service.store.records import ClaimChange, CommandRecord, NewEvent, RecordedEvent, Snapshot


class ObservedStore:
    """Delegates to ``inner``; counts events read and tracks appends in flight."""

    def __init__(self, inner: StoreAdapter, *, append_delay: float = 0.0) -> None:
        self.inner = inner
        self.append_delay = append_delay
        self.events_read = 0
        self.in_flight: Counter[str] = Counter()
        self.max_in_flight_per_aggregate = 0
        self.max_in_flight_total = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def read_aggregate(self, aggregate_id: str, query: AggregateQuery = AggregateQuery()) -> list[RecordedEvent]:
        events = await self.inner.read_aggregate(aggregate_id, query)
        self.events_read += len(events)
        return events

    async def load_from_snapshot(
        self, aggregate_id: str, kind: SnapshotKind, *, to_version: int | None = None
    ) -> tuple[Snapshot | None, list[RecordedEvent]] | None:
        """The inner store's one-round-trip load, its events counted (None,
        the loader's cue to read one after the other, if it has none)."""
        if not isinstance(self.inner, SnapshotAndEvents):
            return None
        loaded = await self.inner.load_from_snapshot(aggregate_id, kind, to_version=to_version)
        if loaded is not None:
            self.events_read += len(loaded[1])
        return loaded

    async def append(
        self,
        aggregate_id: str,
        events: Sequence[NewEvent],
        expected_version: int,
        *,
        commands: Sequence[CommandRecord] = (),
        claims: Sequence[ClaimChange] = (),
    ) -> list[RecordedEvent]:
        self.in_flight[aggregate_id] += 1
        self.max_in_flight_per_aggregate = max(self.max_in_flight_per_aggregate, self.in_flight[aggregate_id])
        self.max_in_flight_total = max(self.max_in_flight_total, sum(self.in_flight.values()))
        try:
            await asyncio.sleep(self.append_delay)
            return await self.inner.append(aggregate_id, events, expected_version, commands=commands, claims=claims)
        finally:
            self.in_flight[aggregate_id] -= 1
