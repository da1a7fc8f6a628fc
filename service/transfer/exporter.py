"""Reading a store into an export stream (export.proto): the header, the
data keys (but read models': read_model_keys.py), the events up to the
log's head when the export began (in log order; an archive of chosen
aggregates has each one's events in version order), the snapshots and
command records when asked for, the claims, and the end record that proves
the stream whole. What is read after the events is bounded by them
(head_bound.py): a store written to while it is exported gives a
consistent copy up to the head.

Records come from the store a page at a time, so an export of any size
runs in bounded memory; a reader that stops reading stops the export.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

from chronicle.v1 import export_pb2
from service.store.base import AggregateQuery, Store
from service.store.records import TOMBSTONE_EVENT_TYPE, AggregateLastEvent, DataKey, LogFilter
from service.transfer.head_bound import HeadBound
from service.transfer.read_model_keys import is_read_model_key
from service.transfer.records import (
    end_record,
    exported_claim,
    exported_command,
    exported_data_key,
    exported_event,
    exported_snapshot,
    timestamp,
)
from service.transfer.stream import FORMAT as FORMAT  # defined with the stream it heads; exported here as before

FORMAT_VERSION = 1
# A stream that leaves out its aggregates' live data keys (an archive:
# ExportHeader.data_keys_left_out); readers of version 1 would import its
# sealed events where no key opens them.
KEYS_LEFT_OUT_VERSION = 2
READABLE_VERSIONS = frozenset({FORMAT_VERSION, KEYS_LEFT_OUT_VERSION})
PAGE = 500


@dataclass(frozen=True, slots=True, kw_only=True)
class ArchiveRule:
    """Aggregates of ``aggregate_type`` whose last event is one of
    ``last_event_types`` (any when empty) and older than
    ``untouched_since_us`` (any time when None); at most ``limit``, in id
    order. Deleted aggregates never match."""

    aggregate_type: str
    last_event_types: frozenset[str] = frozenset()
    untouched_since_us: int | None = None
    limit: int = 100

    def matches(self, aggregate: AggregateLastEvent) -> bool:
        return (
            aggregate.aggregate_type == self.aggregate_type
            and aggregate.last_event_type != TOMBSTONE_EVENT_TYPE
            and (not self.last_event_types or aggregate.last_event_type in self.last_event_types)
            and (self.untouched_since_us is None or aggregate.last_timestamp_us < self.untouched_since_us)
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportSelection:
    """What an export holds besides events and claims (and the data keys
    that open them): snapshots, command records, and with ``aggregate_ids``
    or a ``rule`` only those aggregates (an archive; command records are for
    whole stores only). With a ``rule`` (an archive, its aggregates deleted
    after it), the live data keys stay in the store, out of the stream: a
    forget there shreds the archived events too."""

    snapshots: bool = True
    commands: bool = False
    aggregate_ids: tuple[str, ...] = ()
    rule: ArchiveRule | None = None


class Exporter:
    """Reads ``store``, the adapter's own roles (never the encrypting
    wrapper's: an export carries what is stored). ``source`` names the kind
    of store in the header."""

    def __init__(self, store: Store, *, source: str, page_size: int = PAGE) -> None:
        self._store = store
        self._source = source
        self._page = page_size

    async def records(self, selection: ExportSelection) -> AsyncIterator[export_pb2.ExportRecord]:
        head = await self._store.log.log_head()
        # The aggregates chosen (by id, by a rule, or both), None for the whole store.
        chosen: tuple[str, ...] | None = selection.aggregate_ids or None
        if selection.rule is not None:
            matching = await self.matching(selection.rule)
            chosen = tuple(a for a in matching if chosen is None or a in chosen)
        keys: list[DataKey] | None = None  # read before the header, which says whether any is left out
        left_out = False
        if chosen is not None:
            keys = [key for a in chosen if (key := await self._store.keys.load_data_key(a)) is not None]
            if selection.rule is not None:
                left_out = any(not key.forgotten for key in keys)
                keys = [key for key in keys if key.forgotten]  # a tombstone travels: forgotten stays forgotten
        yield export_pb2.ExportRecord(
            header=export_pb2.ExportHeader(
                format=FORMAT,
                format_version=KEYS_LEFT_OUT_VERSION if left_out else FORMAT_VERSION,
                exported_at=timestamp(time.time_ns() // 1000),
                log_head=head,
                source=self._source,
                snapshots=selection.snapshots,
                commands=selection.commands and chosen is None,
                aggregate_ids=chosen or (),
                data_keys_left_out=left_out,
            )
        )
        counts: Counter[str] = Counter()
        bound = HeadBound(self._store, head)
        parts = [self._data_keys(keys), self._events(chosen, head)]
        if selection.snapshots:
            parts.append(self._snapshots(chosen, bound))
        parts.append(self._claims(chosen, bound))
        if selection.commands and chosen is None:
            parts.append(self._commands(bound))
        for part in parts:
            async for record in part:
                counts[record.WhichOneof("record") or ""] += 1
                yield record
        yield end_record(counts)

    async def matching(self, rule: ArchiveRule) -> list[str]:
        """The ids of the aggregates ``rule`` picks, looking at each
        aggregate's last event, a page at a time."""
        chosen: list[str] = []
        after = ""
        while len(chosen) < rule.limit:
            page = await self._store.transfer.aggregates_page(after, self._page)
            if not page:
                break
            chosen += [a.aggregate_id for a in page if rule.matches(a)]
            after = page[-1].aggregate_id
        return chosen[: rule.limit]

    async def _data_keys(self, keys: list[DataKey] | None) -> AsyncIterator[export_pb2.ExportRecord]:
        """``keys`` (the chosen aggregates'), or every key of the store when
        None but read models' (read_model_keys.py: their documents are not
        exported, and a target makes its own)."""
        if keys is not None:
            for key in keys:
                yield exported_data_key(key)
            return
        after = ""
        while page := await self._store.transfer.data_keys_page(after, self._page):
            for key in page:
                if not is_read_model_key(key.aggregate_id):
                    yield exported_data_key(key)
            after = page[-1].aggregate_id

    async def _events(self, chosen: tuple[str, ...] | None, head: int) -> AsyncIterator[export_pb2.ExportRecord]:
        if chosen is not None:
            for aggregate_id in chosen:
                version = 0
                while events := await self._store.events.read_aggregate(
                    aggregate_id, AggregateQuery(from_version=version + 1, limit=self._page)
                ):
                    for event in events:
                        if event.position <= head:
                            yield exported_event(event)
                    version = events[-1].version
            return
        after = 0
        while after < head:
            page = await self._store.log.read_log(after, LogFilter(), self._page)
            for event in page.events:
                if event.position > head:
                    return
                yield exported_event(event)
            if page.scanned_to <= after:
                return
            after = page.scanned_to

    async def _snapshots(
        self, chosen: tuple[str, ...] | None, bound: HeadBound
    ) -> AsyncIterator[export_pb2.ExportRecord]:
        """The snapshots of exported versions (one taken after the head is left out)."""
        for aggregate_id in (None,) if chosen is None else chosen:
            after: tuple[str, int] = ("", 0)
            while page := await self._store.transfer.snapshots_page(after, self._page, aggregate_id=aggregate_id):
                bound.next_page()
                for snapshot in page:
                    if await bound.covers(snapshot.aggregate_id, snapshot.version):
                        yield exported_snapshot(snapshot)
                after = (page[-1].aggregate_id, page[-1].version)

    async def _claims(self, chosen: tuple[str, ...] | None, bound: HeadBound) -> AsyncIterator[export_pb2.ExportRecord]:
        """The claims of aggregates that exist at the head (one created
        after it holds nothing in the export)."""
        for aggregate_id in (None,) if chosen is None else chosen:
            after: tuple[str, str] = ("", "")
            while page := await self._store.transfer.claims_page(after, self._page, aggregate_id=aggregate_id):
                bound.next_page()
                for claim in page:
                    if await bound.covers(claim.aggregate_id, 1):
                        yield exported_claim(claim)
                after = (page[-1].scope, page[-1].value)

    async def _commands(self, bound: HeadBound) -> AsyncIterator[export_pb2.ExportRecord]:
        """The command records whose events are exported. One that
        appended nothing on an aggregate without events (a refusal at
        version 0) is kept, and when that aggregate has no exported event,
        its data key follows it: minted for the refusal's sealed texts, it
        may be younger than the keys read first (an import writes a key an
        aggregate has already as a no-op)."""
        after = ""
        while page := await self._store.transfer.commands_page(after, self._page):
            bound.next_page()
            keys_after: set[str] = set()
            for command in page:
                if command.last_version == 0:
                    if not await bound.covers(command.aggregate_id, 1):
                        keys_after.add(command.aggregate_id)
                elif not await bound.covers(command.aggregate_id, command.last_version):
                    continue
                yield exported_command(command)
            for aggregate_id in sorted(keys_after):
                key = await self._store.keys.load_data_key(aggregate_id)
                if key is not None:
                    yield exported_data_key(key)
            after = page[-1].command_id
