"""Timing the store: ``chronicle_store_operation_duration_seconds{operation}``
and ``chronicle_concurrency_conflicts_total``.

``timed(store, metrics)`` wraps the roles on the command and read paths
(events, log, snapshots, projections); each wrapper implements its whole
role protocol, so mypy sees every method. ``append`` stays a plain call that
returns the inner awaitable as a future: wrapping it in a coroutine would
cost the hot path a task per command.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar, cast

from prometheus_client import Counter, Histogram

from service.errors import ConcurrencyConflict
from service.store.base import (
    AggregateQuery,
    EventRecorder,
    LogReader,
    ProjectionStore,
    SnapshotAndEvents,
    SnapshotKind,
    SnapshotStore,
    Store,
    loads_in_one_round_trip,
)
from service.store.leasing import Fencing
from service.store.records import (
    AggregateHead,
    AggregateSummary,
    ClaimChange,
    CommandRecord,
    DocumentRange,
    DocumentWrite,
    LogFilter,
    LogPage,
    NewEvent,
    ParkedEvent,
    RecordedEvent,
    Snapshot,
    StoredDocument,
)

T = TypeVar("T")


class _Clock:
    def __init__(self, durations: Histogram) -> None:
        self._durations = durations
        self._by_operation: dict[str, Histogram] = {}

    def histogram(self, operation: str) -> Histogram:
        found = self._by_operation.get(operation)
        if found is None:
            found = self._by_operation[operation] = self._durations.labels(operation=operation)
        return found

    async def time(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        started = time.perf_counter()
        try:
            return await call()
        finally:
            self.histogram(operation).observe(time.perf_counter() - started)


def timed(store: Store, durations: Histogram, conflicts: Counter) -> Store:
    clock = _Clock(durations)
    events: EventRecorder = TimedEvents(store.events, clock, conflicts)
    snapshots: SnapshotStore = TimedSnapshots(store.snapshots, clock)
    both = loads_in_one_round_trip(store)
    if both is not None:
        # One wrapper for both roles, or the loader would make the two reads
        # apart again (service/store/base.py).
        events = snapshots = TimedLoads(cast(_Loads, both), clock, conflicts)
    return store.replacing(
        events=events,
        log=TimedLog(store.log, clock),
        snapshots=snapshots,
        projections=TimedProjections(store.projections, clock),
    )


class _Loads(EventRecorder, SnapshotStore, SnapshotAndEvents, Protocol):
    """A store that plays the event and snapshot roles and loads in one round trip."""


class TimedEvents:
    def __init__(self, inner: EventRecorder, clock: _Clock, conflicts: Counter) -> None:
        self._inner = inner
        self._clock = clock
        self._conflicts = conflicts

    def append(
        self,
        aggregate_id: str,
        events: Sequence[NewEvent],
        expected_version: int,
        *,
        commands: Sequence[CommandRecord] = (),
        claims: Sequence[ClaimChange] = (),
    ) -> Awaitable[list[RecordedEvent]]:
        started = time.perf_counter()
        pending = asyncio.ensure_future(
            self._inner.append(aggregate_id, events, expected_version, commands=commands, claims=claims)
        )

        def done(finished: asyncio.Future[list[RecordedEvent]]) -> None:
            self._clock.histogram("append").observe(time.perf_counter() - started)
            if not finished.cancelled() and isinstance(finished.exception(), ConcurrencyConflict):
                self._conflicts.inc()

        pending.add_done_callback(done)
        return pending

    async def find_command(self, command_id: str) -> CommandRecord | None:
        return await self._clock.time("find_command", lambda: self._inner.find_command(command_id))

    async def head(self, aggregate_id: str) -> AggregateHead | None:
        return await self._clock.time("head", lambda: self._inner.head(aggregate_id))

    async def read_aggregate(self, aggregate_id: str, query: AggregateQuery = AggregateQuery()) -> list[RecordedEvent]:
        return await self._clock.time("read_aggregate", lambda: self._inner.read_aggregate(aggregate_id, query))

    async def version_at(self, aggregate_id: str, timestamp_us: int) -> int:
        return await self._clock.time("version_at", lambda: self._inner.version_at(aggregate_id, timestamp_us))

    async def list_aggregates(
        self, prefix: str, *, after: str = "", limit: int, aggregate_type: str | None = None
    ) -> list[AggregateSummary]:
        return await self._clock.time(
            "list_aggregates",
            lambda: self._inner.list_aggregates(prefix, after=after, limit=limit, aggregate_type=aggregate_type),
        )


class TimedLoads(TimedEvents):
    """The event and the snapshot roles of a store that loads an aggregate in
    one round trip (``SnapshotAndEvents``), timed by one wrapper."""

    def __init__(self, inner: _Loads, clock: _Clock, conflicts: Counter) -> None:
        super().__init__(inner, clock, conflicts)
        self._loads = inner
        self._snapshots = TimedSnapshots(inner, clock)

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        await self._snapshots.save_snapshot(snapshot)

    async def load_snapshot(
        self, aggregate_id: str, *, at_most: int | None = None, kind: SnapshotKind | None = None
    ) -> Snapshot | None:
        return await self._snapshots.load_snapshot(aggregate_id, at_most=at_most, kind=kind)

    async def load_from_snapshot(
        self, aggregate_id: str, kind: SnapshotKind, *, to_version: int | None = None
    ) -> tuple[Snapshot | None, list[RecordedEvent]] | None:
        return await self._clock.time(
            "load_from_snapshot", lambda: self._loads.load_from_snapshot(aggregate_id, kind, to_version=to_version)
        )


class TimedLog:
    def __init__(self, inner: LogReader, clock: _Clock) -> None:
        self._inner = inner
        self._clock = clock

    async def read_log(
        self, after_position: int, log_filter: LogFilter, limit: int, *, max_bytes: int | None = None
    ) -> LogPage:
        return await self._clock.time(
            "read_log", lambda: self._inner.read_log(after_position, log_filter, limit, max_bytes=max_bytes)
        )

    async def log_head(self) -> int:
        return await self._clock.time("log_head", self._inner.log_head)

    async def stored_event_kinds(self) -> list[tuple[str, str, int]]:
        return await self._clock.time("stored_event_kinds", self._inner.stored_event_kinds)

    async def wait_for_commit(self, after_position: int, max_wait: float) -> None:
        # Waiting is not time in the store.
        await self._inner.wait_for_commit(after_position, max_wait)


class TimedSnapshots:
    def __init__(self, inner: SnapshotStore, clock: _Clock) -> None:
        self._inner = inner
        self._clock = clock

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        await self._clock.time("save_snapshot", lambda: self._inner.save_snapshot(snapshot))

    async def load_snapshot(
        self, aggregate_id: str, *, at_most: int | None = None, kind: SnapshotKind | None = None
    ) -> Snapshot | None:
        return await self._clock.time(
            "load_snapshot", lambda: self._inner.load_snapshot(aggregate_id, at_most=at_most, kind=kind)
        )


class TimedProjections:
    def __init__(self, inner: ProjectionStore, clock: _Clock) -> None:
        self._inner = inner
        self._clock = clock

    async def projection_position(self, name: str) -> int:
        return await self._clock.time("projection_position", lambda: self._inner.projection_position(name))

    async def start_projection(self, name: str, position: int) -> int | None:
        return await self._clock.time("start_projection", lambda: self._inner.start_projection(name, position))

    async def projection_version(self, name: str) -> int | None:
        return await self._clock.time("projection_version", lambda: self._inner.projection_version(name))

    async def start_projection_version(self, name: str, version: int) -> int:
        return await self._clock.time(
            "start_projection_version", lambda: self._inner.start_projection_version(name, version)
        )

    async def load_document(self, projection: str, key: str) -> StoredDocument | None:
        return await self._clock.time("load_document", lambda: self._inner.load_document(projection, key))

    async def load_documents(self, projection: str, keys: Sequence[str]) -> list[StoredDocument]:
        return await self._clock.time("load_documents", lambda: self._inner.load_documents(projection, keys))

    async def commit_projection(
        self,
        name: str,
        *,
        expected_position: int,
        new_position: int,
        writes: Sequence[DocumentWrite],
        fencing: Fencing | None = None,
        parked: Sequence[ParkedEvent] = (),
    ) -> None:
        await self._clock.time(
            "commit_projection",
            lambda: self._inner.commit_projection(
                name,
                expected_position=expected_position,
                new_position=new_position,
                writes=writes,
                fencing=fencing,
                parked=parked,
            ),
        )

    async def list_documents(self, projection: str, listing: DocumentRange) -> list[StoredDocument]:
        return await self._clock.time("list_documents", lambda: self._inner.list_documents(projection, listing))

    async def count_documents(self, projection: str, prefix: str, *, limit: int) -> int:
        return await self._clock.time(
            "count_documents", lambda: self._inner.count_documents(projection, prefix, limit=limit)
        )

    async def reset_projection(self, name: str, version: int | None = None) -> None:
        await self._clock.time("reset_projection", lambda: self._inner.reset_projection(name, version))

    async def stored_projections(self) -> list[tuple[str, int]]:
        return await self._clock.time("stored_projections", self._inner.stored_projections)

    async def delete_projection(self, name: str, *, limit: int) -> int:
        return await self._clock.time("delete_projection", lambda: self._inner.delete_projection(name, limit=limit))

    async def parked_events(
        self, projection: str, *, after: tuple[int, str] | None = None, limit: int = 100
    ) -> list[ParkedEvent]:
        return await self._clock.time(
            "parked_events", lambda: self._inner.parked_events(projection, after=after, limit=limit)
        )

    async def count_parked_events(self, projection: str) -> int:
        return await self._clock.time("count_parked_events", lambda: self._inner.count_parked_events(projection))

    async def count_parked_commands(self, reaction: str) -> int:
        return await self._clock.time("count_parked_commands", lambda: self._inner.count_parked_commands(reaction))

    async def due_documents(self, projection: str, *, until_us: int, limit: int) -> list[StoredDocument]:
        return await self._clock.time(
            "due_documents", lambda: self._inner.due_documents(projection, until_us=until_us, limit=limit)
        )

    async def due_summary(self, projection: str) -> tuple[int, int | None]:
        return await self._clock.time("due_summary", lambda: self._inner.due_summary(projection))
