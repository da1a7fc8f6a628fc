"""Which of a batch of imported events a store must write, and whether they
fit where they go: the rule of ``Transfer.import_events``, written once for
the adapters that check in Python (memory, SQLite). PostgreSQL's statement
(postgres/sql.py, ``IMPORT_EVENTS_CHECK``) checks the same in SQL.

An event the store holds already, at the same aggregate and version, was
imported before: skipped. Any other event must come right after its
aggregate's last version (counting the batch's earlier events), except a
deleted aggregate's tombstone, which stands alone (on an aggregate with no
events) above the versions it replaced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from service.errors import ImportConflict
from service.store.records import RecordedEvent, is_tombstone

EVENT_ID_TAKEN = "EVENT_ID_TAKEN"
AGGREGATE_NOT_EMPTY = "AGGREGATE_NOT_EMPTY"
VERSION_GAP = "VERSION_GAP"
CLAIM_HELD = "CLAIM_HELD"
DATA_KEY_CONFLICT = "DATA_KEY_CONFLICT"


def events_to_write(
    events: Sequence[RecordedEvent],
    *,
    stored_at: Callable[[str], tuple[str, int] | None],
    current_version: Callable[[str], int],
) -> list[RecordedEvent]:
    """The events of ``events`` the store does not hold, in order; raises
    ``ImportConflict`` for the first that does not fit. ``stored_at(event_id)``
    is where the store holds an event id (aggregate, version), if anywhere;
    ``current_version(aggregate_id)`` the aggregate's last version (0: none)."""
    fresh: list[RecordedEvent] = []
    versions: dict[str, int] = {}
    for event in events:
        place = stored_at(event.event_id)
        if place is not None:
            if place != (event.aggregate_id, event.version):
                raise import_conflict(EVENT_ID_TAKEN, event)
            continue
        current = versions.get(event.aggregate_id)
        if current is None:
            current = current_version(event.aggregate_id)
        problem = misfit(event, expected=current + 1)
        if problem:
            raise import_conflict(problem, event)
        versions[event.aggregate_id] = event.version
        fresh.append(event)
    return fresh


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
}


def import_conflict(reason: str, event: RecordedEvent) -> ImportConflict:
    """The refusal of ``event`` for ``reason`` (one of this module's)."""
    return ImportConflict(
        f"event {event.event_id} (aggregate {event.aggregate_id!r}, version {event.version}) cannot be imported: "
        + _WHY[reason],
        reason=reason,
        metadata={"aggregate_id": event.aggregate_id, "version": str(event.version), "event_id": event.event_id},
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
    return ImportConflict(
        f"the store holds another data key for {aggregate_id!r}: its events are sealed under that key",
        reason=DATA_KEY_CONFLICT,
        metadata={"aggregate_id": aggregate_id},
    )
