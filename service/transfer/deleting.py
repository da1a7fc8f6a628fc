"""Deleting an aggregate: its events, snapshots and claims removed and its
tombstone appended in one transaction (``Transfer.delete_aggregate``), the
tombstone saying when, by whom, why and where the events were archived.
Works below encryption at rest, like exports: the tombstone is in the clear
and holds no payload of the aggregate's."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from chronicle.v1 import event_pb2
from service.errors import AggregateNotFound, ConcurrencyConflict, WrongExpectedVersion
from service.store.base import Store
from service.store.records import TOMBSTONE_EVENT_TYPE, NewEvent, RecordedEvent
from service.transfer.records import timestamp


@dataclass(frozen=True, slots=True)
class Deletion:
    tombstone: RecordedEvent
    already_deleted: bool
    events_deleted: int


async def delete_aggregate(
    store: Store,
    aggregate_id: str,
    *,
    expected_version: int | None = None,
    principal: str = "",
    reason: str = "",
    archive: str = "",
) -> Deletion:
    """Delete ``aggregate_id`` (at ``expected_version``, if given) from
    ``store`` (the adapter's own roles). Deleting it again returns its
    tombstone. ``AggregateNotFound`` for an aggregate with no events,
    ``WrongExpectedVersion`` when it is at another version."""
    now_us = time.time_ns() // 1000
    payload = event_pb2.AggregateDeleted(
        deleted_at=timestamp(now_us), deleted_by=principal, reason=reason, archive=archive
    )
    tombstone = NewEvent(
        event_id=str(uuid.uuid4()),
        aggregate_type="",  # the store writes the aggregate's
        event_type=TOMBSTONE_EVENT_TYPE,
        schema_version=1,
        payload=payload.SerializeToString(),
        timestamp_us=now_us,
        user_id=principal,
        origin="admin",
    )
    try:
        recorded = await store.transfer.delete_aggregate(aggregate_id, tombstone, expected_version=expected_version)
    except ConcurrencyConflict as conflict:
        current = int(conflict.metadata.get("current_version", "0"))
        raise WrongExpectedVersion(aggregate_id, expected_version or 0, current) from None
    if recorded is None:
        raise AggregateNotFound(aggregate_id)
    if recorded.event_id != tombstone.event_id:
        return Deletion(recorded, already_deleted=True, events_deleted=0)
    return Deletion(recorded, already_deleted=False, events_deleted=recorded.version - 1)
