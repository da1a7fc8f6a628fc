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
from service.store.base import AggregateQuery, Store
from service.store.records import Snapshot
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

    def _usable(self, snapshot: Snapshot | None, aggregate_type: AggregateType[Any], to_version: int | None) -> bool:
        return (
            snapshot is not None
            and snapshot.aggregate_type == aggregate_type.name
            and snapshot.state_type == aggregate_type.state_type_name
            and snapshot.schema_version == aggregate_type.state_schema_version
            and (to_version is None or snapshot.version <= to_version)
        )

    async def load(
        self, aggregate_id: str, aggregate_type: AggregateType[Any], *, to_version: int | None = None
    ) -> Aggregate:
        """The aggregate as of ``to_version`` (default: latest).

        Raises AggregateTypeMismatch if its events belong to another type.
        """
        snapshot = await self._snapshots.load_snapshot(aggregate_id, at_most=to_version)
        version, state = 0, aggregate_type.new_state()
        if snapshot is not None and self._usable(snapshot, aggregate_type, to_version):
            version = snapshot.version
            state = aggregate_type.state_type.FromString(snapshot.state)
        elif snapshot is not None and snapshot.aggregate_type != aggregate_type.name:
            raise AggregateTypeMismatch(aggregate_id, snapshot.aggregate_type, aggregate_type.name)
        events = await self._events.read_aggregate(
            aggregate_id, AggregateQuery(from_version=version + 1, to_version=to_version)
        )
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
