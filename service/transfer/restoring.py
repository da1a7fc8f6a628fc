"""Restoring from an archive: the records of some of its aggregates, as an
export stream of their own (the header names them, the end counts them)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

from chronicle.v1 import export_pb2
from service.transfer.records import end_record


def aggregate_of(record: export_pb2.ExportRecord) -> str | None:
    """The aggregate a record belongs to (None for the header and the end)."""
    kind = record.WhichOneof("record")
    if kind == "event":
        return record.event.event.aggregate_id
    if kind in ("snapshot", "claim", "command", "data_key"):
        return str(getattr(record, kind).aggregate_id)
    return None


def only_aggregates(records: Iterable[export_pb2.ExportRecord], chosen: set[str]) -> Iterator[export_pb2.ExportRecord]:
    """``records`` of the ``chosen`` aggregates (all when empty), between
    the stream's header (naming them) and an end that counts what passed."""
    counts: Counter[str] = Counter()
    for record in records:
        kind = record.WhichOneof("record") or ""
        if kind == "header":
            header = export_pb2.ExportRecord()
            header.CopyFrom(record)
            if chosen:
                named = [a for a in header.header.aggregate_ids if a in chosen] or sorted(chosen)
                del header.header.aggregate_ids[:]
                header.header.aggregate_ids.extend(named)
            yield header
        elif kind == "end":
            yield end_record(counts)
        elif not chosen or aggregate_of(record) in chosen:
            counts[kind] += 1
            yield record
