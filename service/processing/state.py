"""Rebuilding an aggregate's state: latest usable snapshot, then the events
after it, each read through ``upcasting.EventReader`` (so at the plugin's
current schema) and applied by the plugin's apply function."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf.message import Message

from service.errors import AggregateTypeMismatch, EventNotReadable
from service.plugins.api import AggregateType, EventSpec
from service.plugins.registry import Registry
from service.processing.upcasting import EventReader
from service.store.base import AggregateQuery, SnapshotKind, Store, loads_in_one_round_trip
from service.store.records import RecordedEvent, Snapshot
from service.values import value

__all__ = ["Aggregate", "AggregateLoader", "EventNotReadable", "apply_messages"]


@value(frozen=True, slots=True)
class Aggregate:
    """An aggregate's state at ``version``. ``state`` belongs to whoever
    holds this value and must not be changed; apply works on a copy."""

    aggregate_id: str
    type: AggregateType[Any]
    version: int
    state: Message

    @property
    def exists(self) -> bool:
        return self.version > 0


def apply_messages(
    aggregate_type: AggregateType[Any], state: Message, messages: Iterable[tuple[EventSpec, Message]]
) -> Message:
    """Apply decoded events to a copy of ``state`` and return the copy."""
    working: Message = aggregate_type.state_type()
    working.CopyFrom(state)
    for spec, message in messages:
        replaced = spec.apply(working, message)
        if replaced is not None:
            working = replaced
    return working


class AggregateLoader:
    def __init__(self, store: Store, registry: Registry) -> None:
        self._events = store.events
        self._snapshots = store.snapshots
        self._registry = registry
        self.reader = EventReader(registry)
        # One round trip for the snapshot and the events after it, where the store offers it.
        self._in_one = loads_in_one_round_trip(store)

    async def load(
        self, aggregate_id: str, aggregate_type: AggregateType[Any], *, to_version: int | None = None
    ) -> Aggregate:
        """The aggregate as of ``to_version`` (default: latest).

        Raises AggregateTypeMismatch if its events belong to another type.
        """
        kind = SnapshotKind(aggregate_type.name, aggregate_type.state_type_name, aggregate_type.state_schema_version)
        if self._in_one is not None:
            loaded = await self._in_one.load_from_snapshot(aggregate_id, kind, to_version=to_version)
            if loaded is not None:
                return self._rebuilt(aggregate_id, aggregate_type, kind, *loaded)
        snapshot = await self._snapshots.load_snapshot(aggregate_id, at_most=to_version)
        after = snapshot.version if snapshot is not None and kind.usable(snapshot) else 0
        events = await self._events.read_aggregate(
            aggregate_id, AggregateQuery(from_version=after + 1, to_version=to_version)
        )
        return self._rebuilt(aggregate_id, aggregate_type, kind, snapshot, events)

    def _rebuilt(
        self,
        aggregate_id: str,
        aggregate_type: AggregateType[Any],
        kind: SnapshotKind,
        snapshot: Snapshot | None,
        events: list[RecordedEvent],
    ) -> Aggregate:
        """The state from ``snapshot`` (if ``kind`` can use it) and the
        events after it."""
        version, state = 0, aggregate_type.new_state()
        if snapshot is not None and kind.usable(snapshot):
            version = snapshot.version
            state = aggregate_type.state_type.FromString(snapshot.state)
        elif snapshot is not None and snapshot.aggregate_type != aggregate_type.name:
            raise AggregateTypeMismatch(aggregate_id, snapshot.aggregate_type, aggregate_type.name)
        if events and events[0].aggregate_type != aggregate_type.name:
            raise AggregateTypeMismatch(aggregate_id, events[0].aggregate_type, aggregate_type.name)
        if events:
            state = apply_messages(aggregate_type, state, self.reader.messages(events))
            version = events[-1].version
        return Aggregate(aggregate_id, aggregate_type, version, state)

    async def load_any(self, aggregate_id: str, *, to_version: int | None = None) -> Aggregate | None:
        """The aggregate, whatever its type; None if it has no events."""
        head = await self._events.head(aggregate_id)
        if head is None:
            return None
        aggregate_type = self._registry.aggregate(head.aggregate_type)
        if aggregate_type is None:
            raise EventNotReadable(
                f"no loaded plugin declares aggregate type {head.aggregate_type}",
                reason="UNKNOWN_AGGREGATE_TYPE",
                metadata={"aggregate_type": head.aggregate_type},
            )
        return await self.load(aggregate_id, aggregate_type, to_version=to_version)
