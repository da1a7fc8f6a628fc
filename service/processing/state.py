"""Rebuilding an aggregate's state: latest usable snapshot, then the events
after it, each read through ``upcasting.EventReader`` (so at the plugin's
current schema) and applied by the plugin's apply function.

A snapshot is a cache of the events, used only by code that reads them the
same way: the loader takes the newest snapshot of the aggregate type's
``SnapshotKind``, whose state type carries a fingerprint of the state's
layout, its schema version and the event versions and upcasters it was
built through (``service.plugins.fingerprint``); newer snapshots of any
other kind are passed over. One of the right kind whose state still does
not parse (imported, say) is skipped with a warning and the state rebuilt
from all the events, rather than failing every command for the
aggregate."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from google.protobuf.message import DecodeError, Message

from service.errors import AggregateTypeMismatch, EventNotReadable, HandlerFailed
from service.plugins.api import AggregateType, EventSpec
from service.plugins.registry import Registry
from service.processing.upcasting import EventReader
from service.store.base import AggregateQuery, SnapshotKind, Store, loads_in_one_round_trip
from service.store.records import RecordedEvent, Snapshot
from service.values import value

__all__ = ["Aggregate", "AggregateLoader", "ApplyFailed", "EventNotReadable", "apply_messages"]

log = logging.getLogger(__name__)


class _UnreadableSnapshot(Exception):
    """The snapshot ``_rebuilt`` was given does not parse: load without it."""


@value(frozen=True, slots=True)
class Aggregate:
    """An aggregate's state at ``version``. ``state`` belongs to whoever
    holds this value and must not be changed; apply works on a copy."""

    aggregate_id: str
    type: AggregateType[Any]
    version: int
    state: Message
    # The id of the event at ``version``, when known (after an append, or a
    # load that read events): what a snapshot of this state is taken through.
    last_event_id: str | None = None
    # The version of the snapshot this state was rebuilt from (0: none, the
    # whole history replayed). Kept through the appends made on it, so that
    # the first append after a load can tell a fresh snapshot from none.
    snapshot_version: int = 0

    @property
    def exists(self) -> bool:
        return self.version > 0


class ApplyFailed(Exception):
    """An apply function raised, or returned something that is not the
    aggregate's state: the state after the event is not known."""

    def __init__(self, event_type: str, cause: str) -> None:
        super().__init__(f"applying a {event_type} failed: {cause}")
        self.event_type = event_type
        self.cause = cause


def apply_messages(
    aggregate_type: AggregateType[Any], state: Message, messages: Iterable[tuple[EventSpec, Message]]
) -> Message:
    """Apply decoded events to a copy of ``state`` and return the copy;
    ``ApplyFailed`` if an apply function raises or returns anything but
    ``None`` or a state message (which would be taken as the state, and
    break every later use of it)."""
    state_type = aggregate_type.state_type
    working: Message = state_type()
    working.CopyFrom(state)
    for spec, message in messages:
        try:
            replaced = spec.apply(working, message)
        except Exception as error:
            raise ApplyFailed(spec.name, f"{type(error).__name__}: {error}") from error
        if replaced is not None:
            if not isinstance(replaced, state_type):
                raise ApplyFailed(
                    spec.name,
                    f"its apply function returned {type(replaced).__name__}; an apply function changes the state"
                    f" in place and returns None, or returns a new {state_type.DESCRIPTOR.full_name}",
                )
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
        kind = SnapshotKind(
            aggregate_type.name, aggregate_type.snapshot_state_type, aggregate_type.state_schema_version
        )
        loaded = None
        if self._in_one is not None:
            loaded = await self._in_one.load_from_snapshot(aggregate_id, kind, to_version=to_version)
        if loaded is None:
            snapshot = await self._snapshots.load_snapshot(aggregate_id, at_most=to_version, kind=kind)
            after = snapshot.version if snapshot is not None else 0
            events = await self._events.read_aggregate(
                aggregate_id, AggregateQuery(from_version=after + 1, to_version=to_version)
            )
            loaded = snapshot, events
        try:
            return self._rebuilt(aggregate_id, aggregate_type, kind, *loaded)
        except _UnreadableSnapshot:
            events = await self._events.read_aggregate(aggregate_id, AggregateQuery(to_version=to_version))
            return self._rebuilt(aggregate_id, aggregate_type, kind, None, events)

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
        snapshot_version = 0
        if snapshot is not None and kind.usable(snapshot):
            try:
                state = aggregate_type.state_type.FromString(snapshot.state)
            except DecodeError as error:
                log.warning(
                    "the snapshot of aggregate %r at version %d does not parse as %s (%s): rebuilding its state"
                    " from its events",
                    aggregate_id,
                    snapshot.version,
                    aggregate_type.state_type_name,
                    error,
                )
                raise _UnreadableSnapshot from None
            version = snapshot_version = snapshot.version
        elif snapshot is not None and snapshot.aggregate_type != aggregate_type.name:
            raise AggregateTypeMismatch(aggregate_id, snapshot.aggregate_type, aggregate_type.name)
        if events and events[0].aggregate_type != aggregate_type.name:
            raise AggregateTypeMismatch(aggregate_id, events[0].aggregate_type, aggregate_type.name)
        if events:
            try:
                state = apply_messages(aggregate_type, state, self.reader.messages(events))
            except ApplyFailed as failed:
                # A stored event the plugin's apply function cannot take:
                # every command and read of the aggregate fails alike until
                # the plugin is fixed. Named, so the operator knows which.
                log.error("aggregate %r cannot be rebuilt: %s", aggregate_id, failed, exc_info=failed.__cause__)
                raise HandlerFailed(
                    f"aggregate {aggregate_id!r} cannot be rebuilt: {failed}",
                    metadata={"aggregate_id": aggregate_id, "event_type": failed.event_type},
                ) from None
            version = events[-1].version
            return Aggregate(aggregate_id, aggregate_type, version, state, events[-1].event_id, snapshot_version)
        return Aggregate(aggregate_id, aggregate_type, version, state, snapshot_version=snapshot_version)

    async def state_of(self, aggregate_id: str, aggregate_type: AggregateType[Any]) -> Message:
        """The aggregate's latest state (``load``'s, without its version)."""
        return (await self.load(aggregate_id, aggregate_type)).state

    async def load_any(self, aggregate_id: str, *, to_version: int | None = None) -> Aggregate | None:
        """The aggregate, whatever its type; None if it has no events."""
        head = await self._events.head(aggregate_id)
        if head is None:
            return None
        aggregate_type = self._registry.aggregate(head.aggregate_type)
        if aggregate_type is None:
            raise EventNotReadable(
                f"no loaded plugin declares aggregate type {head.aggregate_type}, so aggregate"
                f" {aggregate_id!r} cannot be rebuilt: load the plugin that declares it (its events are read"
                " as stored with ReadAggregate)",
                reason="UNKNOWN_AGGREGATE_TYPE",
                metadata={"aggregate_type": head.aggregate_type, "aggregate_id": aggregate_id},
            )
        return await self.load(aggregate_id, aggregate_type, to_version=to_version)
