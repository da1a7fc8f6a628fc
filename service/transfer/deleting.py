"""Deleting an aggregate: its events, snapshots and claims removed and its
tombstone appended in one transaction (``Transfer.delete_aggregate``), the
tombstone saying when, by whom, why and where the events were archived.
Works below encryption at rest, like exports. The administrator's reason may
name the person ("closed at Zelda's request"), so with encryption at rest a
tombstone is sealed under the aggregate's key like its other events, and a
forget shreds it with them; an aggregate forgotten already has no key to
seal under, and its tombstone keeps no reason. An aggregate that never had a
key (written before encryption was on) gets its tombstone in the clear, as
its events were: it has nothing a forget could shred."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace

from chronicle.v1 import event_pb2
from service.errors import AggregateNotFound, ConcurrencyConflict, WrongExpectedVersion
from service.store.base import Store
from service.store.encrypted import opened_event
from service.store.encryption import Keyring, event_context, seal
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
    keyring: Keyring | None = None,
) -> Deletion:
    """Delete ``aggregate_id`` (at ``expected_version``, if given) from
    ``store`` (the adapter's own roles), its tombstone sealed under its key
    in ``keyring`` (encryption at rest). Deleting it again returns its
    tombstone. ``AggregateNotFound`` for an aggregate with no events,
    ``WrongExpectedVersion`` when it is at another version. The tombstone
    returned is opened (redacted if the aggregate was forgotten)."""
    now_us = time.time_ns() // 1000
    cipher, forgotten = (None, False) if keyring is None else await keyring.cipher_or_forgotten(aggregate_id)
    payload = event_pb2.AggregateDeleted(
        deleted_at=timestamp(now_us), deleted_by=principal, reason="" if forgotten else reason, archive=archive
    ).SerializeToString()
    event_id = str(uuid.uuid4())
    tombstone = NewEvent(
        event_id=event_id,
        aggregate_type="",  # the store writes the aggregate's
        event_type=TOMBSTONE_EVENT_TYPE,
        schema_version=1,
        payload=payload if cipher is None else seal(cipher, payload, event_context(aggregate_id, event_id)),
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
        return Deletion(opened_event(cipher, recorded), already_deleted=True, events_deleted=0)
    return Deletion(replace(recorded, payload=payload), already_deleted=False, events_deleted=recorded.version - 1)
