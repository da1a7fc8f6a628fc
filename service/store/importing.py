"""Which of a batch of imported events a store must write, and whether they
fit where they go: the rule of ``Transfer.import_events``, written once for
the adapters that check in Python (memory, SQLite). PostgreSQL's statement
(postgres/sql.py, ``IMPORT_EVENTS_CHECK``) checks the same in SQL.

An event the store holds already, at the same aggregate and version, was
imported before: skipped. Any other event must come right after its
aggregate's last version (counting the batch's earlier events), except a
deleted aggregate's tombstone, which stands alone (on an aggregate with no
events) above the versions it replaced; and it must be of its aggregate's
type (AGGREGATE_TYPE_MISMATCH), or the aggregate could not be loaded.

A snapshot is of an aggregate's state at one of its versions: it must be at
most the aggregate's last version in the store (whose events an import
writes before its snapshots), and of the aggregate's type. One ahead of the
events (SNAPSHOT_AHEAD) would be taken for the aggregate's state, at a
version no command can ever append after.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from service.errors import ImportConflict
from service.store.encryption import CLAIMS_KEY_PREFIX
from service.store.key_names import key_owner
from service.store.records import RecordedEvent, Snapshot, is_tombstone

EVENT_ID_TAKEN = "EVENT_ID_TAKEN"
AGGREGATE_NOT_EMPTY = "AGGREGATE_NOT_EMPTY"
VERSION_GAP = "VERSION_GAP"
AGGREGATE_TYPE_MISMATCH = "AGGREGATE_TYPE_MISMATCH"
SNAPSHOT_AHEAD = "SNAPSHOT_AHEAD"
CLAIM_HELD = "CLAIM_HELD"
AGGREGATE_FORGOTTEN = "AGGREGATE_FORGOTTEN"
AGGREGATE_DELETED = "AGGREGATE_DELETED"
DATA_KEY_CONFLICT = "DATA_KEY_CONFLICT"


def events_to_write(
    events: Sequence[RecordedEvent],
    *,
    stored_at: Callable[[str], tuple[str, int] | None],
    head: Callable[[str], tuple[int, str] | None],
) -> list[RecordedEvent]:
    """The events of ``events`` the store does not hold, in order; raises
    ``ImportConflict`` for the first that does not fit. ``stored_at(event_id)``
    is where the store holds an event id (aggregate, version), if anywhere;
    ``head(aggregate_id)`` the aggregate's last version and its type (None:
    no events)."""
    fresh: list[RecordedEvent] = []
    heads: dict[str, tuple[int, str] | None] = {}
    for event in events:
        place = stored_at(event.event_id)
        if place is not None:
            if place != (event.aggregate_id, event.version):
                raise import_conflict(EVENT_ID_TAKEN, event)
            continue
        current = heads[event.aggregate_id] if event.aggregate_id in heads else head(event.aggregate_id)
        problem = misfit(event, expected=(current[0] if current else 0) + 1)
        if not problem and current is not None and current[1] != event.aggregate_type:
            problem = AGGREGATE_TYPE_MISMATCH
        if problem:
            raise import_conflict(problem, event)
        heads[event.aggregate_id] = (event.version, event.aggregate_type)
        fresh.append(event)
    return fresh


def check_snapshots(snapshots: Sequence[Snapshot], *, head: Callable[[str], tuple[int, str] | None]) -> None:
    """Raise ``ImportConflict`` for the first of ``snapshots`` that does not
    fit its aggregate's events in the store (``head`` as for
    ``events_to_write``)."""
    for snapshot in snapshots:
        current = head(snapshot.aggregate_id)
        if current is None or snapshot.version > current[0]:
            raise snapshot_conflict(SNAPSHOT_AHEAD, snapshot, current)
        if snapshot.aggregate_type != current[1]:
            raise snapshot_conflict(AGGREGATE_TYPE_MISMATCH, snapshot, current)


def misfit(event: RecordedEvent, *, expected: int) -> str:
    """Why ``event`` cannot be its aggregate's next, "" if it can. A
    tombstone stands alone: only on an aggregate with no events, at any
    version."""
    if is_tombstone(event):
        return "" if expected == 1 else AGGREGATE_NOT_EMPTY
    if event.version < expected:
        return AGGREGATE_NOT_EMPTY
    if event.version > expected:
        return VERSION_GAP
    return ""


_WHY = {
    EVENT_ID_TAKEN: "its event id is held by another event of the store",
    AGGREGATE_NOT_EMPTY: "the aggregate holds other events at that version (import with overwriting to replace them)",
    VERSION_GAP: "the versions before it are neither in the store nor in the import",
    AGGREGATE_TYPE_MISMATCH: "the aggregate's other events, in the store or before it in the import, are of another"
    " type",
    AGGREGATE_FORGOTTEN: "the aggregate was forgotten here, and an import never replaces a forgotten aggregate"
    " (overwriting or restoring it would put back a history whose key was destroyed): nothing of it was written;"
    " leave it out of the import",
    AGGREGATE_DELETED: "the aggregate was deleted here: only its tombstone stands for it, and a deleted"
    " aggregate's id is never used again (overwriting would bring its history back unseen): nothing of it was"
    " written; leave it out of the import (--leave-out), or bring it back on purpose with --restore-deleted",
}


def import_conflict(reason: str, event: RecordedEvent) -> ImportConflict:
    """The refusal of ``event`` for ``reason`` (one of this module's)."""
    return ImportConflict(
        f"event {event.event_id} (aggregate {event.aggregate_id!r}, version {event.version}) cannot be imported: "
        + _WHY[reason],
        reason=reason,
        metadata={"aggregate_id": event.aggregate_id, "version": str(event.version), "event_id": event.event_id},
    )


def snapshot_conflict(reason: str, snapshot: Snapshot, head: tuple[int, str] | None) -> ImportConflict:
    """The refusal of ``snapshot`` for ``reason``; ``head``: its aggregate's
    last version and type in the store (None: it has no events)."""
    if reason == SNAPSHOT_AHEAD:
        held = f"its events end at version {head[0]}" if head else "it has no events"
        why = f"it is at version {snapshot.version} and {held}, in the store and in the import"
    else:
        why = f"it is of a {snapshot.aggregate_type} and the aggregate's events of a {head[1] if head else ''}"
    return ImportConflict(
        f"snapshot of aggregate {snapshot.aggregate_id!r} at version {snapshot.version} cannot be imported: {why}",
        reason=reason,
        metadata={"aggregate_id": snapshot.aggregate_id, "version": str(snapshot.version)},
    )


def claim_conflict(scope: str, aggregate_id: str, holder: str) -> ImportConflict:
    """An imported claim whose value another aggregate holds. The value is
    left out of the message: it is often personal data."""
    return ImportConflict(
        f"a value aggregate {aggregate_id!r} claims in {scope!r} is held by aggregate {holder!r}",
        reason=CLAIM_HELD,
        metadata={"scope": scope, "aggregate_id": aggregate_id, "holder": holder},
    )


def data_key_conflict(aggregate_id: str) -> ImportConflict:
    why = "what it sealed is sealed under that key"
    if aggregate_id.startswith(CLAIMS_KEY_PREFIX):
        # Made by a claim taken or looked up here, never by the store on its own:
        # the import could only ever meet one where the target took claims.
        why = (
            "the values claimed here in that scope are keyed hashes under that key, and the export's under its own,"
            " so neither could be checked against the other: import into a store that has taken no claims in it"
        )
    return ImportConflict(
        f"the store holds another data key for {key_owner(aggregate_id)}: {why}",
        reason=DATA_KEY_CONFLICT,
        metadata={"aggregate_id": aggregate_id},
    )
