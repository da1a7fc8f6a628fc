"""Store wrappers that observe or disturb what the processor does."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

from service.store.base import AggregateQuery, StoreAdapter
from service.store.records import ClaimChange, CommandRecord, NewEvent, RecordedEvent


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
