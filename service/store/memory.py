"""An in-process store: the reference implementation of the contract.

Used by plugin unit tests and ``memory://``. Everything lives in dicts and
vanishes with the process. Each method runs without awaiting, so on one event
loop every call is atomic.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.errors import ConcurrencyConflict
from service.store.base import AggregateQuery
from service.store.records import (
    AggregateHead,
    CommandAlreadyRecorded,
    CommandRecord,
    NewEvent,
    RecordedEvent,
    Snapshot,
)
from service.store.selection import select_events


class MemoryStore:
    def __init__(self) -> None:
        self._streams: dict[str, list[RecordedEvent]] = {}
        self._log: list[RecordedEvent] = []
        self._event_ids: set[str] = set()
        self._commands: dict[str, CommandRecord] = {}
        self._snapshots: dict[str, Snapshot] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def append(
        self,
        aggregate_id: str,
        events: Sequence[NewEvent],
        expected_version: int,
        *,
        commands: Sequence[CommandRecord] = (),
    ) -> list[RecordedEvent]:
        for command in commands:
            if command.command_id in self._commands:
                raise CommandAlreadyRecorded(self._commands[command.command_id])
        stream = self._streams.get(aggregate_id, [])
        if len(stream) != expected_version:
            raise ConcurrencyConflict(aggregate_id, expected_version, current=len(stream))
        if any(e.event_id in self._event_ids for e in events):
            raise ValueError("duplicate event id")
        recorded = [
            RecordedEvent.committed(
                new,
                aggregate_id=aggregate_id,
                version=expected_version + offset,
                position=len(self._log) + offset,
            )
            for offset, new in enumerate(events, start=1)
        ]
        if recorded:
            self._streams.setdefault(aggregate_id, []).extend(recorded)
            self._log.extend(recorded)
            self._event_ids.update(e.event_id for e in recorded)
        for command in commands:
            self._commands[command.command_id] = command
        return recorded

    async def find_command(self, command_id: str) -> CommandRecord | None:
        return self._commands.get(command_id)

    async def head(self, aggregate_id: str) -> AggregateHead | None:
        stream = self._streams.get(aggregate_id)
        if not stream:
            return None
        return AggregateHead(stream[-1].aggregate_type, stream[-1].version)

    async def read_aggregate(self, aggregate_id: str, query: AggregateQuery = AggregateQuery()) -> list[RecordedEvent]:
        return select_events(self._streams.get(aggregate_id, []), query)

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        current = self._snapshots.get(snapshot.aggregate_id)
        if current is None or current.version <= snapshot.version:
            self._snapshots[snapshot.aggregate_id] = snapshot

    async def load_snapshot(self, aggregate_id: str) -> Snapshot | None:
        return self._snapshots.get(aggregate_id)
