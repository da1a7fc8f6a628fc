"""Two events of one import at one aggregate and version: a bad stream.

An aggregate's history has one event per version, so a stream that holds two
(a converter that mapped KurrentDB's ``account-k1`` and ``user-k1`` both to
``k1``, say) cannot be imported whatever the target holds; overwriting would
only replace the first with the second. Such a stream is refused as a bad
record (BAD_RECORD, INVALID_ARGUMENT), naming both events, with the advice
that aggregate ids are one namespace across aggregate types.

Two events of one batch with one event id (KurrentDB keeps ids unique per
stream only) are a bad record too, naming both (``two_with_one_id``); the
second of two in different batches meets the first in the store
(EVENT_ID_TAKEN).

Two events of one batch are seen as they are added (``BatchPlaces``). For
the first in an earlier batch, the importer asks the target when the store
refuses the second (AGGREGATE_NOT_EMPTY) or overwriting would replace the
first: the event the target holds there is this import's own if it is
marked as imported, came after the log's head when this import began, and
is at a version this import's written batches carried for its aggregate
(``CarriedPlaces``: an aggregate's events come in version order, so a span
of versions per aggregate says it). One marked as imported since this
import began at a version it never carried is another import's, running
at the same moment (two ``chronicle import`` processes into one store):
``raced``, ABORTED (IMPORT_RACED), not a bad stream.
"""

from __future__ import annotations

from collections.abc import Iterable

from service.errors import FieldViolation, ImportRaced, InvalidInput
from service.store.imported import is_imported
from service.store.records import RecordedEvent
from service.transfer.records import BAD_RECORD

_ADVICE = (
    "an aggregate id names one aggregate across all aggregate types (an Account and a User cannot both be 'k1'):"
    " give each aggregate its own id in the conversion (its type as a prefix, say) and import again"
)


class BatchPlaces:
    """The (aggregate, version) and the event id of each event of the batch
    being gathered."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, int], tuple[int, RecordedEvent]] = {}
        self._ids: dict[str, tuple[int, RecordedEvent]] = {}

    def add(self, event: RecordedEvent, index: int) -> None:
        """Take ``event`` (record ``index``), or raise BAD_RECORD if the
        batch has another event at its place or with its id (KurrentDB
        keeps event ids unique within a stream only, so an export of it
        can carry one id in two streams; a store holds an id once)."""
        place = (event.aggregate_id, event.version)
        earlier = self._held.get(place)
        if earlier is not None:
            raise two_at_one_place(event, index, earlier[1], earlier[0])
        same_id = self._ids.get(event.event_id)
        if same_id is not None:
            raise two_with_one_id(event, index, same_id[1], same_id[0])
        self._held[place] = (index, event)
        self._ids[event.event_id] = (index, event)

    def clear(self) -> None:
        self._held.clear()
        self._ids.clear()


class CarriedPlaces:
    """The span of versions of each aggregate that this import's written
    batches carried (each of those events is in the target, written by this
    import or found there with its id). One pair of numbers an aggregate."""

    def __init__(self) -> None:
        self._spans: dict[str, tuple[int, int]] = {}

    def add(self, events: Iterable[RecordedEvent]) -> None:
        for event in events:
            low, high = self._spans.get(event.aggregate_id, (event.version, event.version))
            self._spans[event.aggregate_id] = (min(low, event.version), max(high, event.version))

    def holds(self, event: RecordedEvent) -> bool:
        span = self._spans.get(event.aggregate_id)
        return span is not None and span[0] <= event.version <= span[1]


def imported_since(held: RecordedEvent, log_head_at_start: int) -> bool:
    """Whether the target's ``held`` event was imported after this import
    began (by this import or another running beside it)."""
    return is_imported(held) and held.position > log_head_at_start


def written_by_this_import(held: RecordedEvent, log_head_at_start: int, carried: CarriedPlaces) -> bool:
    """Whether the target's ``held`` event is one this import wrote (see the module)."""
    return imported_since(held, log_head_at_start) and carried.holds(held)


def raced(event: RecordedEvent, index: int, held: RecordedEvent) -> ImportRaced:
    """The refusal of ``event`` (record ``index``): another import wrote
    ``held`` at its place since this one began."""
    return ImportRaced(
        f"record[{index}]: another import into this store, running beside this one, wrote event {held.event_id} at"
        f" aggregate {event.aggregate_id!r}, version {event.version}, where this import has event {event.event_id}."
        " Nothing of this record's batch was written. Import again once the other has finished: what is there is"
        " skipped, and a history that parts from the stream's is refused (AGGREGATE_NOT_EMPTY)",
        metadata={
            "record": str(index),
            "event_id": event.event_id,
            "aggregate_id": event.aggregate_id,
            "version": str(event.version),
            "other_event_id": held.event_id,
        },
    )


def two_at_one_place(
    event: RecordedEvent, index: int, earlier: RecordedEvent, earlier_index: int | None = None
) -> InvalidInput:
    """The refusal of ``event`` (record ``index``): ``earlier`` (record
    ``earlier_index``, if known) came before it in the stream at its place."""
    where = f"record[{earlier_index}]" if earlier_index is not None else "an earlier record"
    types = (
        f" (of aggregate type {earlier.aggregate_type}, {earlier.event_type}, then of {event.aggregate_type},"
        f" {event.event_type})"
        if earlier.aggregate_type != event.aggregate_type
        else ""
    )
    why = (
        f"the import holds two events at aggregate {event.aggregate_id!r}, version {event.version}: event"
        f" {earlier.event_id} ({where}) and event {event.event_id}{types}"
    )
    metadata = {
        "record": str(index),
        "event_id": event.event_id,
        "aggregate_id": event.aggregate_id,
        "version": str(event.version),
        "other_event_id": earlier.event_id,
    }
    if earlier_index is not None:
        metadata["other_record"] = str(earlier_index)
    return InvalidInput(
        f"record[{index}]: {why}; {_ADVICE}. The import stopped here, before writing this record's batch",
        reason=BAD_RECORD,
        violations=(FieldViolation(f"record[{index}].event.event.version", why),),
        metadata=metadata,
    )


def two_with_one_id(event: RecordedEvent, index: int, earlier: RecordedEvent, earlier_index: int) -> InvalidInput:
    """The refusal of ``event`` (record ``index``): ``earlier`` (record
    ``earlier_index``) came before it in the stream with its event id."""
    why = (
        f"the import holds two events with event id {event.event_id}: record[{earlier_index}] (aggregate"
        f" {earlier.aggregate_id!r}, version {earlier.version}) and record[{index}] (aggregate"
        f" {event.aggregate_id!r}, version {event.version})"
    )
    return InvalidInput(
        f"record[{index}]: {why}; an event id names one event across the whole store (KurrentDB keeps them unique"
        " within a stream only): give one of them another id in the conversion (a UUID derived from its stream and"
        " event number, say) and import again. The import stopped here, before writing this record's batch",
        reason=BAD_RECORD,
        violations=(FieldViolation(f"record[{index}].event.event.event_id", why),),
        metadata={
            "record": str(index),
            "event_id": event.event_id,
            "aggregate_id": event.aggregate_id,
            "version": str(event.version),
            "other_record": str(earlier_index),
            "other_aggregate_id": earlier.aggregate_id,
            "other_version": str(earlier.version),
        },
    )


def held_elsewhere_hint(event: RecordedEvent, held: RecordedEvent) -> str:
    """What to add to an AGGREGATE_NOT_EMPTY refusal of ``event`` when the
    target's ``held`` event at its place is another aggregate type's: the
    ids of two kinds of aggregate met ("" otherwise)."""
    if held.aggregate_type == event.aggregate_type:
        return ""
    return (
        f". The target's event there, {held.event_id}, is of aggregate type {held.aggregate_type}"
        f" ({held.event_type}), the import's of {event.aggregate_type}: {_ADVICE}"
    )
