"""Rebuilding an aggregate's state: latest usable snapshot, then the events
after it, each decoded and applied by the plugin's apply function."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.message import DecodeError, Message

from service.errors import AggregateTypeMismatch, ChronicleError
from service.plugins.api import AggregateType, EventSpec
from service.plugins.registry import Registry
from service.store.base import AggregateQuery, EventStore
from service.store.records import RecordedEvent, Snapshot

log = logging.getLogger(__name__)


class EventNotReadable(ChronicleError):
    """A stored event that no loaded plugin can decode or apply.

    Never skipped silently: skipping would rebuild a wrong state.
    """

    default_reason = "EVENT_NOT_READABLE"


@dataclass(frozen=True, slots=True)
class Aggregate:
    """An aggregate's state at ``version``. ``state`` belongs to whoever
    holds this value and must not be changed; apply works on a copy."""

    aggregate_id: str
    type: AggregateType
    version: int
    state: Message

    @property
    def exists(self) -> bool:
        return self.version > 0


def decode_event(registry: Registry, event: RecordedEvent) -> tuple[EventSpec, Message]:
    spec = registry.event(event.event_type)
    if spec is None:
        log.error(
            "no plugin handles event type %s (aggregate %s version %s)",
            event.event_type,
            event.aggregate_id,
            event.version,
        )
        raise EventNotReadable(
            f"no loaded plugin handles event type {event.event_type}",
            reason="UNKNOWN_EVENT_TYPE",
            metadata={"event_type": event.event_type, "aggregate_id": event.aggregate_id},
        )
    if event.schema_version != spec.schema_version:
        log.error(
            "event %s has schema version %s, plugin expects %s",
            event.event_type,
            event.schema_version,
            spec.schema_version,
        )
        raise EventNotReadable(
            f"{event.event_type} v{event.schema_version} cannot be read as v{spec.schema_version}",
            reason="UNSUPPORTED_SCHEMA_VERSION",
            metadata={"event_type": event.event_type, "schema_version": str(event.schema_version)},
        )
    try:
        return spec, spec.message_type.FromString(event.payload)
    except DecodeError as error:
        raise EventNotReadable(
            f"stored {event.event_type} at {event.aggregate_id} v{event.version} does not parse",
            reason="CORRUPT_EVENT",
        ) from error


def apply_messages(
    aggregate_type: AggregateType, state: Message, messages: Iterable[tuple[EventSpec, Message]]
) -> Message:
    """Apply decoded events to a copy of ``state`` and return the copy."""
    working = aggregate_type.state_type()
    working.CopyFrom(state)
    for spec, message in messages:
        replaced = spec.apply(working, message)
        if replaced is not None:
            working = replaced
    return working


class AggregateLoader:
    def __init__(self, store: EventStore, registry: Registry) -> None:
        self._store = store
        self._registry = registry

    def _usable(self, snapshot: Snapshot | None, aggregate_type: AggregateType, to_version: int | None) -> bool:
        return (
            snapshot is not None
            and snapshot.aggregate_type == aggregate_type.name
            and snapshot.state_type == aggregate_type.state_type_name
            and snapshot.schema_version == aggregate_type.state_schema_version
            and (to_version is None or snapshot.version <= to_version)
        )

    async def load(
        self, aggregate_id: str, aggregate_type: AggregateType, *, to_version: int | None = None
    ) -> Aggregate:
        """The aggregate as of ``to_version`` (default: latest).

        Raises AggregateTypeMismatch if its events belong to another type.
        """
        snapshot = await self._store.load_snapshot(aggregate_id, at_most=to_version)
        version, state = 0, aggregate_type.new_state()
        if snapshot is not None and self._usable(snapshot, aggregate_type, to_version):
            version = snapshot.version
            state = aggregate_type.state_type.FromString(snapshot.state)
        elif snapshot is not None and snapshot.aggregate_type != aggregate_type.name:
            raise AggregateTypeMismatch(aggregate_id, snapshot.aggregate_type, aggregate_type.name)
        events = await self._store.read_aggregate(
            aggregate_id, AggregateQuery(from_version=version + 1, to_version=to_version)
        )
        if events and events[0].aggregate_type != aggregate_type.name:
            raise AggregateTypeMismatch(aggregate_id, events[0].aggregate_type, aggregate_type.name)
        if events:
            state = apply_messages(aggregate_type, state, (decode_event(self._registry, e) for e in events))
            version = events[-1].version
        return Aggregate(aggregate_id, aggregate_type, version, state)

    async def load_any(self, aggregate_id: str, *, to_version: int | None = None) -> Aggregate | None:
        """The aggregate, whatever its type; None if it has no events."""
        head = await self._store.head(aggregate_id)
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
