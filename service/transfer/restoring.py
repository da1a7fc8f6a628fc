"""Restoring from an archive: the records of some of its aggregates, as an
export stream of their own (the header names them, the end counts them)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence, Set

from chronicle.v1 import export_pb2
from service.errors import InvalidInput
from service.store.encryption import CLAIMS_KEY_PREFIX, PROJECTION_KEY_PREFIX
from service.transfer.records import end_record
from service.transfer.stream import EXPORT_INCOMPLETE


def aggregate_of(record: export_pb2.ExportRecord) -> str | None:
    """The aggregate a record belongs to (None for the header and the end)."""
    kind = record.WhichOneof("record")
    if kind == "event":
        return record.event.event.aggregate_id
    if kind in ("snapshot", "claim", "command", "data_key"):
        return str(getattr(record, kind).aggregate_id)
    return None


def aggregates_in(records: Iterable[export_pb2.ExportRecord]) -> set[str]:
    """The aggregates a stream holds records of: the ones its header names
    (an archive's), else (a whole export) those its records are of."""
    held: set[str] = set()
    for record in records:
        if record.HasField("header"):
            if record.header.aggregate_ids:
                return set(record.header.aggregate_ids)
            continue
        aggregate_id = aggregate_of(record)
        if aggregate_id is not None and not aggregate_id.startswith((CLAIMS_KEY_PREFIX, PROJECTION_KEY_PREFIX)):
            held.add(aggregate_id)  # (claims scopes' and read models' keys are no aggregates')
    return held


def only_aggregates(
    records: Iterable[export_pb2.ExportRecord], chosen: set[str], *, leaving_out: Set[str] = frozenset()
) -> Iterator[export_pb2.ExportRecord]:
    """``records`` of the ``chosen`` aggregates (all when empty) but those
    ``leaving_out``, between the stream's header (naming them) and an end
    that counts what passed. The stream's own end must count every record
    that came (EXPORT_INCOMPLETE otherwise, as the importer says of a whole
    stream): a stream missing records is not passed on as a whole one."""
    counts: Counter[str] = Counter()
    read: Counter[str] = Counter()
    left_out: set[str] = set()  # the aggregates of ``leaving_out`` met
    for record in records:
        kind = record.WhichOneof("record") or ""
        if kind == "header":
            header = export_pb2.ExportRecord()
            header.CopyFrom(record)
            if chosen:
                named = [a for a in header.header.aggregate_ids if a in chosen] or sorted(chosen)
                del header.header.aggregate_ids[:]
                header.header.aggregate_ids.extend(named)
            if leaving_out:
                kept = [a for a in header.header.aggregate_ids if a not in leaving_out]
                del header.header.aggregate_ids[:]
                header.header.aggregate_ids.extend(kept)
            yield header
        elif kind == "end":
            _check_end(record.end, read)
            if missing := sorted(leaving_out - left_out):
                # A stream read once (standard input): said at its end, before the importer sees it.
                raise not_in_export(missing, "the stream")
            yield end_record(counts)
        else:
            read[kind] += 1
            aggregate_id = aggregate_of(record)
            if aggregate_id is not None and aggregate_id in leaving_out:
                left_out.add(aggregate_id)
            elif not chosen or aggregate_id in chosen:
                counts[kind] += 1
                yield record


NOT_IN_EXPORT = "NOT_IN_EXPORT"


def not_in_export(missing: Sequence[str], where: str, held: Set[str] | None = None) -> InvalidInput:
    """The refusal of an import whose ``--leave-out`` names aggregates
    (``missing``) that the export (``where``) holds no record of: a typo,
    which would leave out nothing, and with ``--overwrite`` replace the
    aggregate it was meant to protect."""
    names = ", ".join(repr(name) for name in missing)
    holds = ""
    if held is not None:
        shown = ", ".join(sorted(held)[:20]) + (", …" if len(held) > 20 else "")
        holds = f" (it holds {shown or 'no aggregate'})"
    return InvalidInput(
        f"--leave-out {names}: {where} holds no record of {'it' if len(missing) == 1 else 'them'}{holds}, so"
        " nothing would be left out (a typo?): nothing was imported",
        reason=NOT_IN_EXPORT,
        metadata={"aggregate_ids": ",".join(missing)},
    )


def _check_end(end: export_pb2.ExportEnd, read: Counter[str]) -> None:
    announced = end_record(read).end
    if announced != end:
        raise InvalidInput(
            f"the stream lacks records its end announces ({end.events} events, {end.snapshots} snapshots,"
            f" {end.claims} claims, {end.commands} command records and {end.data_keys} data keys; it held"
            f" {announced.events}, {announced.snapshots}, {announced.claims}, {announced.commands} and"
            f" {announced.data_keys})",
            reason=EXPORT_INCOMPLETE,
        )
