"""Writing an export stream into a store, resumably.

Records are written in batches of one kind, each batch one transaction of
the store (``Transfer``), in the order the stream has them: an import
stopped anywhere (a crash, a cut connection, an incomplete file) has
written whole batches, and running it again from the start skips what is
there and writes the rest. Running it again after it finished writes
nothing.

Events keep their ids, aggregates, versions, timestamps and order, and
take new positions at the end of the target's log. Each is marked as
imported (``service.store.imported``): history, which reactions do not act
on again; an import into a store without events marks where reactions start
as a new store's first server does. An aggregate the target
holds other events for is refused (AGGREGATE_NOT_EMPTY, from the store)
unless ``overwrite`` is set: the target's events, snapshots and claims of it
are then removed in the transaction that writes the batch holding the
stream's first event of it (``restore_deleted`` does that only for an
aggregate that was deleted, to bring an archived one back). A deleted
aggregate (its tombstone alone in the target) is replaced only with
``restore_deleted``: otherwise, overwriting or not, AGGREGATE_DELETED. An overwrite
import is run through ``checked_first.CheckedFirst``: nothing is written
before the whole stream was read and checked.

Read models (read_models.py): a restore is refused (READ_MODELS_BEHIND)
while a stored projection is below the tombstone of an aggregate it
replaces, checked for the aggregates an archive's header names before
anything is written, and for any other at the batch that would replace it;
told to go on (``even_if_read_models_behind``), or overwriting, the import
names in its summary the projections it left unlike a rebuild.

Claims of aggregates that came without any (claims.py): with a
``registry``, an aggregate of a type whose plugin declares its claims
(``AggregateType.claims``) that the stream brought events for and no claim
record has them derived from its state in the target once the stream has
ended, and taken like the stream's own (CLAIM_HELD when another aggregate
holds a value).

The stream must begin with its header and end with its end record, whose
counts must match what came: a stream cut short is EXPORT_INCOMPLETE, after
what came was written.

Read models' data keys (an older export's) are passed over, counted:
the target makes its own (read_model_keys.py).

Each record is checked alone as it comes (records.py: BAD_RECORD; an event
no larger than the server's --max-event-bytes: event_size.py), and,
with a ``registry``, an event must be one its plugins can read
(readable.py), and a snapshot of a loaded aggregate type at its current
state type and schema must parse as that state, and a claim must not be
global in a scope its plugins declare per tenant (BAD_RECORD). What a record
must fit in the store (versions, event ids, an aggregate's type, a
snapshot's version) the store checks as it writes the batch, refusing the
batch whole (ImportConflict); the refusal then names the record. Two events
of the stream at one aggregate and version are a bad record (one_place.py).
"""

from __future__ import annotations

import json
import logging
from collections import Counter, deque
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError

from chronicle.v1 import export_pb2
from service.errors import ImportConflict, InvalidInput, StoreUnavailable
from service.plugins.registry import Registry
from service.store.base import AggregateQuery, SnapshotKind, Store
from service.store.encrypted import is_sealed_record
from service.store.encryption import is_sealed
from service.store.imported import mark_reaction_starts, marked_imported
from service.store.importing import (
    AGGREGATE_DELETED,
    AGGREGATE_FORGOTTEN,
    AGGREGATE_NOT_EMPTY,
    CLAIM_HELD,
    import_conflict,
)
from service.store.records import (
    DEFAULT_MAX_EVENT_BYTES,
    CommandRecord,
    DataKey,
    HeldClaim,
    RecordedEvent,
    Snapshot,
    is_tombstone,
)
from service.transfer.claims import ClaimsToDerive, Declared, LoadState
from service.transfer.event_size import check_event_size
from service.transfer.exporter import READABLE_VERSIONS
from service.transfer.forgotten import left_out, shredded
from service.transfer.one_place import (
    BatchPlaces,
    CarriedPlaces,
    held_elsewhere_hint,
    imported_since,
    raced,
    two_at_one_place,
    written_by_this_import,
)
from service.transfer.read_model_keys import is_read_model_key
from service.transfer.read_models import (
    DEFAULT_READ_MODELS_WAIT,
    Replaced,
    after_waiting,
    behind_refusal,
    below_tombstones,
    checkpoints,
    named_in,
    replaced_in,
    retired,
    stale,
    without,
)
from service.transfer.readable import check_readable
from service.transfer.records import (
    BAD_RECORD,
    stored_claim,
    stored_command,
    stored_data_key,
    stored_event,
    stored_snapshot,
)
from service.transfer.scope_switch import check_switching, left_out_to_derive
from service.transfer.sealing import ImportSealing, OfflineWithoutKeys
from service.transfer.stream import EXPORT_INCOMPLETE, FORMAT

log = logging.getLogger(__name__)

DATA_KEY_NOT_IN_STORE = "DATA_KEY_NOT_IN_STORE"
# Times the claims of aggregates other writers append to meanwhile are settled again.
_SETTLE_ROUNDS = 5
# Records written per transaction (fewer when their payloads are large).
BATCH = 500
BATCH_BYTES = 4 * 1024 * 1024
_COUNTED = ("event", "snapshot", "claim", "command", "data_key")


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportOptions:
    overwrite: bool = False
    restore_deleted: bool = False
    # Restore even while read models are below a tombstone it replaces
    # (read_models.py): they are then named in the summary, to be rebuilt.
    even_if_read_models_behind: bool = False
    # Seconds a restore waits for projections below a tombstone to pass it
    # before refusing (READ_MODELS_BEHIND): one lagging by milliseconds,
    # as right after a delete, is no reason to refuse.
    read_models_wait: float = DEFAULT_READ_MODELS_WAIT
    # Leave out claim records global in a scope declared per tenant, and
    # derive them per tenant from the aggregates' state (scope_switch.py).
    derive_per_tenant_claims: bool = False


@dataclass(slots=True)
class ImportSummary:
    """What an import read and wrote so far."""

    records: int = 0
    written: Counter[str] = field(default_factory=Counter)  # by kind: event, snapshot, claim, command, data_key
    events_skipped: int = 0
    aggregates_replaced: int = 0
    # Records of aggregates the target has forgotten that were left out:
    # their snapshots, claims and live data keys (service/transfer/forgotten.py).
    forgotten_skipped: int = 0
    # Read models' data keys an older export carried, passed over (read_model_keys.py).
    read_model_keys_skipped: int = 0
    # Claims derived from the state of aggregates that came without claim
    # records (claims.py), and such aggregates whose claims could not be.
    claims_derived: int = 0
    aggregates_without_claims: int = 0
    # Claims the touched aggregates held and their state no longer declares (claims.py).
    claims_released: int = 0
    # Claim records global in a scope declared per tenant, left out to be derived (scope_switch.py).
    global_claims_left_out: int = 0
    # Command records past the events of their aggregate, in the stream and
    # the target, left out (_of_imported_events).
    commands_past_events_left_out: int = 0
    # Projections (name: checkpoint) the events this import replaced leave
    # unlike a rebuild (read_models.py): they must be rebuilt.
    projections_to_rebuild: dict[str, int] = field(default_factory=dict)
    header: export_pb2.ExportHeader | None = None
    complete: bool = False


class Importer:
    def __init__(
        self,
        store: Store,
        *,
        options: ImportOptions = ImportOptions(),
        batch_size: int = BATCH,
        on_progress: Callable[[ImportSummary], None] | None = None,
        on_replaced: Callable[[str], None] | None = None,
        registry: Registry | None = None,
        sealing: ImportSealing | None = None,
        load_state: LoadState | None = None,
        checking_only: bool = False,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self._store = store
        # The largest event a command of the target's server may produce: no imported one is larger (event_size.py).
        self._max_event_bytes = max_event_bytes
        # Reads the stream and the target, and writes nothing: every check of
        # a record, and those of a batch that read the target, but none that
        # only a write finds (checked_first.py).
        self._checking_only = checking_only
        # Aggregates whose claims the import derives if the stream has none of them.
        self._to_derive = ClaimsToDerive(registry, load_state)
        # The target's encryption at rest (sealing.py): unless told, as with no
        # master keys, where nothing sealed is taken (it could not be checked).
        self._sealing = sealing if sealing is not None else OfflineWithoutKeys()
        self._registry = registry
        # Retired projections below a tombstone already logged (_retired_behind).
        self._retired_told: set[str] = set()
        self._options = options
        self._batch_size = batch_size
        self._on_progress = on_progress
        self._on_replaced = on_replaced
        self.summary = ImportSummary()
        self._pending: list[Any] = []
        self._pending_records: list[int] = []  # each pending record's index in the stream
        self._pending_kind = ""
        self._pending_bytes = 0
        self._received: Counter[str] = Counter()
        # Aggregates the target has forgotten (a forgotten one stays so).
        self._forgotten: set[str] = set()
        # Aggregates the target holds a data key of (looked at for a stream that left its keys out).
        self._keys_here: set[str] = set()
        # Where the pending batch's events go (two at one place: one_place.py).
        self._places = BatchPlaces()
        # The versions of each aggregate this import's written batches carried (one_place.py).
        self._carried = CarriedPlaces()
        # The log's head when the import began: what this import writes comes after it.
        self._log_head_at_start = 0

    async def run(self, records: AsyncIterable[export_pb2.ExportRecord]) -> ImportSummary:
        """Import ``records``; the summary, or an error after writing every
        batch before the record at fault."""
        async for record in records:
            await self.add(record)
        await self.finish()
        return self.summary

    async def run_file(self, records: Iterable[export_pb2.ExportRecord]) -> ImportSummary:
        """Import the records of a file as they are read (``stream.read``).
        A file that cannot be read on (cut short inside a record,
        EXPORT_INCOMPLETE, or holding something that is not a record) ends
        the stream there, as a stream that ends early: the whole records
        before it are written, then the reader's error is raised."""
        iterator = iter(records)
        while True:
            try:
                record = next(iterator)
            except StopIteration:
                break
            except InvalidInput as unreadable:
                await self._flush()
                if unreadable.reason == EXPORT_INCOMPLETE and self.summary.records:
                    unreadable.message += (
                        f"; the {self.summary.records} records before it were imported: import the whole export"
                        " again to finish (what is there already is skipped)"
                    )
                    unreadable.args = (unreadable.message,)
                raise
            await self.add(record)
        await self.finish()
        return self.summary

    async def add(self, record: export_pb2.ExportRecord) -> None:
        index = self.summary.records
        where = f"record[{index}]"
        kind = record.WhichOneof("record") or ""
        self.summary.records += 1
        if index == 0:
            self._check_header(record, where)
            if self._options.derive_per_tenant_claims:
                check_switching(self._registry)
            await self._sealing.start(self._store)
            self._log_head_at_start = await self._store.log.log_head()
            if self._log_head_at_start == 0 and not self._checking_only:
                await mark_reaction_starts(self._store.projections)
            if self._options.restore_deleted and not self._options.even_if_read_models_behind:
                # An archive names its aggregates: all are checked before anything is written.
                await self._check_restoring(record.header.aggregate_ids)
            return
        if self.summary.complete:
            raise InvalidInput.for_field(where, "comes after the end record", reason=BAD_RECORD)
        if kind == "header":
            raise InvalidInput.for_field(where, "a second header", reason=BAD_RECORD)
        if kind == "end":
            await self._flush()
            self._check_end(record.end, where)
            if not self._checking_only:
                await self._settled_or_said()
            self.summary.complete = True
            return
        stored = _stored(record, kind, where)
        if isinstance(stored, DataKey) and is_read_model_key(stored.aggregate_id):
            # Checked as a record, then passed over: it opens only documents,
            # which the target makes itself (read_model_keys.py).
            self._received[kind] += 1
            self.summary.read_model_keys_skipped += 1
            return
        if isinstance(stored, RecordedEvent):
            check_event_size(stored, index, self._max_event_bytes)
            if self._registry is not None:
                check_readable(self._registry, stored, index=index)
            stored = marked_imported(stored)
        elif isinstance(stored, Snapshot):
            self._check_state(stored, f"{where}.snapshot")
        elif isinstance(stored, HeldClaim) and self._registry is not None:
            deriving = self._options.derive_per_tenant_claims
            if left_out_to_derive(self._registry, self._to_derive, stored, f"{where}.claim.scope", deriving=deriving):
                # Counted as received (the end record announces it), never written.
                self._received[kind] += 1
                self.summary.global_claims_left_out += 1
                return
        self._sealing.check(stored, index)
        self._to_derive.saw(stored)
        self._received[kind] += 1
        if kind != self._pending_kind:
            await self._flush()
            self._pending_kind = kind
        if isinstance(stored, RecordedEvent):
            self._places.add(stored, index)
        self._pending.append(stored)
        self._pending_records.append(index)
        self._pending_bytes += record.ByteSize()
        if len(self._pending) >= self._batch_size or self._pending_bytes >= BATCH_BYTES:
            await self._flush()

    async def finish(self) -> None:
        await self._flush()
        if self.summary.records == 0:
            raise InvalidInput("the stream is empty: an export begins with its header", reason="NOT_AN_EXPORT")
        if not self.summary.complete:
            outcome = (
                "nothing was written (an import with --overwrite writes only a stream it read whole); import the"
                " whole export again"
                if self._checking_only
                else "what came was imported; import the whole export again to finish (what is there already is"
                " skipped)"
            )
            raise InvalidInput(
                f"the export ended after {self.summary.records} records, without its end record: {outcome}",
                reason=EXPORT_INCOMPLETE,
            )

    def _check_header(self, record: export_pb2.ExportRecord, where: str) -> None:
        if record.WhichOneof("record") != "header" or record.header.format != FORMAT:
            raise InvalidInput.for_field(
                where, f"an export begins with a header of format {FORMAT!r}", reason="NOT_AN_EXPORT"
            )
        if record.header.format_version not in READABLE_VERSIONS:
            readable = ", ".join(map(str, sorted(READABLE_VERSIONS)))
            raise InvalidInput.for_field(
                f"{where}.header.format_version",
                f"version {record.header.format_version} is not one this Chronicle reads ({readable})",
                reason="UNSUPPORTED_EXPORT_VERSION",
            )
        self.summary.header = record.header

    def _check_state(self, snapshot: Snapshot, where: str) -> None:
        """A snapshot the aggregate's loader would use (its plugin loaded,
        the state type and schema its current ones) must parse: one that
        does not would fail every command for the aggregate. Others are
        ignored by the loader (stale), and sealed states are opened only
        above the store."""
        aggregate_type = self._registry.aggregate(snapshot.aggregate_type) if self._registry is not None else None
        if aggregate_type is None or is_sealed(snapshot.state):
            return
        kind = SnapshotKind(
            aggregate_type.name, aggregate_type.snapshot_state_type, aggregate_type.state_schema_version
        )
        if not kind.usable(snapshot):
            return
        try:
            aggregate_type.state_type.FromString(snapshot.state)
        except DecodeError:
            raise InvalidInput.for_field(
                f"{where}.state", f"does not parse as {snapshot.state_type}", reason=BAD_RECORD
            ) from None

    def _check_end(self, end: export_pb2.ExportEnd, where: str) -> None:
        announced = {kind: getattr(end, "data_keys" if kind == "data_key" else kind + "s") for kind in _COUNTED}
        missing = {kind: n for kind, n in announced.items() if self._received[kind] != n}
        if missing:
            counts = ", ".join(f"{self._received[kind]} of {n} {kind} records" for kind, n in missing.items())
            raise InvalidInput(
                f"{where}: the stream lacks records its end announces ({counts})", reason=EXPORT_INCOMPLETE
            )

    async def _settled_or_said(self) -> None:
        """``_settle_claims``; if the store fails it (an outage, contention),
        the caller is told that the events are written and the claims of
        the stream's aggregates perhaps not settled, and that running the
        same import again settles them (every run settles every aggregate
        the stream brought, its events written now or before)."""
        try:
            await self._settle_claims()
        except StoreUnavailable as failed:  # a conflict or a bad declared value says what to do itself
            failed.message += (
                f" (while settling the claims of the imported aggregates: the {self.summary.records} records are"
                " written, and the values the aggregates' state declares may not be held yet: run the same import"
                " again to settle them)"
            )
            failed.args = (failed.message,)
            raise

    async def _settle_claims(self) -> None:
        """Make the claims of the stream's aggregates of declaring types what
        their state in the target declares (claims.py). An aggregate another
        writer appended to after its state was loaded (a second import of the
        same source running beside this one) is settled again from its new
        state, so that the last import to finish leaves the claims of the
        last history, whichever settled first."""
        again: set[str] | None = None  # None: every aggregate the stream touched
        for _ in range(_SETTLE_ROUNDS):
            derived = await self._to_derive.claims(self._head_version, only=again)
            if again is None:
                self.summary.claims_derived = sum(len(declared.claims) for declared in derived.declared)
                self.summary.aggregates_without_claims = derived.not_derived
            await self._settle(derived.declared)
            again = {
                declared.aggregate_id
                for declared in derived.declared
                if await self._head_version(declared.aggregate_id) != declared.version
            }
            if not again:
                return
        log.warning(
            "the claims of %d imported aggregates were settled from a state other writers kept changing;"
            " import again once they stopped",
            len(again or ()),
        )

    async def _head_version(self, aggregate_id: str) -> int:
        head = await self._store.events.head(aggregate_id)
        return 0 if head is None else head.version

    async def _settle(self, declared: Sequence[Declared]) -> None:
        """Settle ``declared`` in transactions of a batch of aggregates each.
        A value held by an aggregate still to be settled (two users who
        swapped addresses in the old application, in two batches) is the
        holder's to release first: the holder joins the batch, so that both
        are settled in one transaction (neither could be alone)."""
        queue = deque(declared)
        while queue:
            batch = [queue.popleft() for _ in range(min(self._batch_size, len(queue)))]
            while True:
                try:
                    await self._settle_batch(batch)
                    break
                except ImportConflict as conflict:
                    holder = conflict.metadata.get("holder")
                    waiting = next((d for d in queue if d.aggregate_id == holder), None)
                    if conflict.reason != CLAIM_HELD or waiting is None:
                        conflict.message += (
                            " (a claim derived from the aggregate's state, as the stream's history left it: the"
                            " events are written, and none of the claims of this batch of aggregates. Give one of"
                            " them another value with a command, then import again)"
                        )
                        conflict.args = (conflict.message,)
                        raise
                    queue.remove(waiting)
                    batch.append(waiting)

    async def _settle_batch(self, batch: Sequence[Declared]) -> None:
        """In one transaction: the claims ``batch``'s aggregates hold and
        their state no longer declares released, those it declares taken.
        Nothing for a forgotten aggregate (its values were released when
        it was forgotten)."""
        forgotten = await self._forgotten_among(declared.aggregate_id for declared in batch)
        live = [declared for declared in batch if declared.aggregate_id not in forgotten]
        claims = [claim for declared in live for claim in declared.claims]
        # As stored: hidden under their scope's key with encryption at rest,
        # as what the aggregates hold is (the stores' listings are as stored).
        taken, _ = await self._sealed(claims, [-1] * len(claims))
        declared_keys = {(claim.scope, claim.value, claim.aggregate_id) for claim in taken}
        released = [
            claim
            for declared in live
            for claim in await self._claims_held_by(declared.aggregate_id)
            if (claim.scope, claim.value, claim.aggregate_id) not in declared_keys
        ]
        left_out = sum(len(declared.claims) for declared in batch if declared.aggregate_id in forgotten)
        if not (taken or released):
            self.summary.forgotten_skipped += left_out
            return
        # In one order, so two imports settling the same aggregates lock the same rows in the same order.
        taken.sort(key=_claim_order)
        released.sort(key=_claim_order)
        transfer = self._store.transfer
        # An adapter of a plugin's written before releasing: only asked to release when there is something.
        written = await (
            transfer.import_claims(taken, released=released) if released else transfer.import_claims(taken)
        )
        self.summary.written["claim"] += written
        self.summary.claims_released += len(released)
        self.summary.forgotten_skipped += left_out
        if self._on_progress is not None:
            self._on_progress(self.summary)

    async def _claims_held_by(self, aggregate_id: str) -> list[HeldClaim]:
        held: list[HeldClaim] = []
        after = ("", "")
        while page := await self._store.transfer.claims_page(after, self._batch_size, aggregate_id=aggregate_id):
            held += page
            after = (page[-1].scope, page[-1].value)
        return held

    async def _flush(self) -> None:
        batch, kind, indexes = self._pending, self._pending_kind, self._pending_records
        if not batch:
            return
        self._pending, self._pending_bytes, self._pending_records = [], 0, []
        self._places.clear()
        batch, indexes = await self._of_forgotten(batch, indexes)
        if kind == "command" and not self._checking_only:  # the events it checks against are written first
            batch, indexes = await self._of_imported_events(batch, indexes)
        await self._check_keys_in_store(batch, indexes)
        if not self._checking_only:
            batch, indexes = await self._sealed(batch, indexes)  # sealing may write the aggregates' data keys
        if batch and self._checking_only:
            try:
                await self._check(kind, batch, indexes)
            except ImportConflict as conflict:
                _name_record(conflict, batch, indexes)
                raise
        elif batch:
            try:
                written = await self._write(kind, batch, indexes)
            except ImportConflict as conflict:
                _name_record(conflict, batch, indexes)
                if conflict.reason == AGGREGATE_NOT_EMPTY and kind == "event":
                    await self._not_empty(conflict, batch, indexes)
                    _name_diverged(conflict, await self._diverged(batch))
                raise
            self.summary.written[kind] += written
            if kind == "event":
                self._carried.add(batch)
        if self._on_progress is not None:
            self._on_progress(self.summary)

    async def _not_empty(
        self, conflict: ImportConflict, batch: Sequence[RecordedEvent], indexes: Sequence[int]
    ) -> None:
        """Look at what the target holds where the store refused an event
        (AGGREGATE_NOT_EMPTY): an event this import wrote from an earlier
        record is the stream's own second event at that place (BAD_RECORD,
        raised); another aggregate type's event is said in the refusal."""
        refused = next(
            (
                (event, index)
                for event, index in zip(batch, indexes, strict=True)
                if event.event_id == conflict.metadata.get("event_id")
            ),
            None,
        )
        if refused is None:
            return
        event, index = refused
        if await self._deleted(event.aggregate_id):
            deleted = import_conflict(AGGREGATE_DELETED, event)
            _name_record(deleted, [event], [index])
            raise deleted from None
        there = await self._store.events.read_aggregate(
            event.aggregate_id, AggregateQuery(from_version=event.version, to_version=event.version)
        )
        if not there:
            return
        self._refuse_if_placed_by_an_import(event, index, there[0])
        conflict.message += held_elsewhere_hint(event, there[0])
        conflict.args = (conflict.message,)

    def _refuse_if_placed_by_an_import(self, event: RecordedEvent, index: int, held: RecordedEvent) -> None:
        """Refuse ``event`` (record ``index``) if the target's ``held``
        event at its place was imported since this import began: this
        import's own (the stream holds two events there: BAD_RECORD), or
        another import's, running beside it (IMPORT_RACED)."""
        if written_by_this_import(held, self._log_head_at_start, self._carried):
            raise two_at_one_place(event, index, held) from None
        if imported_since(held, self._log_head_at_start):
            raise raced(event, index, held) from None

    async def _diverged(self, batch: Sequence[RecordedEvent]) -> list[str]:
        """The aggregates of ``batch`` whose history in the target parts
        from the stream's: the target holds another event at a version the
        batch has (it took commands since an earlier import of this
        source, say). Asked only once the store refused the batch, so that
        the refusal names each such aggregate, not the first alone."""
        firsts: dict[str, RecordedEvent] = {}
        for event in batch:
            firsts.setdefault(event.aggregate_id, event)
        diverged: list[str] = []
        for aggregate_id, event in firsts.items():
            there = await self._store.events.read_aggregate(
                aggregate_id, AggregateQuery(from_version=event.version, to_version=max_version(batch, aggregate_id))
            )
            theirs = {e.version: e.event_id for e in batch if e.aggregate_id == aggregate_id}
            if any(held.event_id != theirs.get(held.version, held.event_id) for held in there):
                diverged.append(aggregate_id)
        return diverged

    async def _of_forgotten(self, batch: list[Any], indexes: list[int]) -> tuple[list[Any], list[int]]:
        """``batch`` (and its records' indexes) as the target's forgotten
        aggregates take it: nothing that forgetting removed (their
        snapshots, claims, live data keys: counted), and their events and
        command records with nothing readable in them (forgotten.py). The
        stores leave out snapshots and claims of an aggregate forgotten
        while the batch is written (``Transfer.import_claims``)."""
        forgotten = await self._forgotten_among({stored.aggregate_id for stored in batch})
        if not forgotten:
            return batch, indexes
        kept: list[Any] = []
        kept_indexes: list[int] = []
        for stored, index in zip(batch, indexes, strict=True):
            if stored.aggregate_id in forgotten:
                if left_out(stored):
                    self.summary.forgotten_skipped += 1
                    continue
                stored = shredded(stored)
            kept.append(stored)
            kept_indexes.append(index)
        return kept, kept_indexes

    async def _of_imported_events(self, batch: list[Any], indexes: list[int]) -> tuple[list[Any], list[int]]:
        """``batch`` (command records) without those whose last version is
        beyond their aggregate's events in the target, which holds the
        stream's by now (counted). An export taken under load by Chronicle
        0.4.0 or earlier carries such records (read after its events): written,
        one would answer a retry "replayed" at a version no event of its
        own ever takes, and the command would be lost while its client is
        told it succeeded. Left out, the retry runs the command. Dropped
        rather than refused: the rest of such an export is a good copy, and
        refusing would make it useless as a backup. One that appended
        nothing at version 0 (a refusal before the aggregate existed) needs
        no event and stays."""
        heads: dict[str, int] = {}
        kept: list[Any] = []
        kept_indexes: list[int] = []
        for record, index in zip(batch, indexes, strict=True):
            aggregate_id = record.aggregate_id
            if aggregate_id not in heads:
                heads[aggregate_id] = await self._head_version(aggregate_id)
            if record.last_version > heads[aggregate_id]:
                self.summary.commands_past_events_left_out += 1
                continue
            kept.append(record)
            kept_indexes.append(index)
        return kept, kept_indexes

    async def _check_keys_in_store(self, batch: list[Any], indexes: list[int]) -> None:
        """A stream that left its aggregates' live data keys in the store it
        came from (an archive) writes what they sealed only where those keys
        are: anywhere else no key would open it, and the next command would
        make the aggregate a new key under which its old events never open.
        DATA_KEY_NOT_IN_STORE, before anything of the batch is written."""
        header = self.summary.header
        if header is None or not header.data_keys_left_out:
            return
        for stored, index in zip(batch, indexes, strict=True):
            aggregate_id = stored.aggregate_id
            if aggregate_id in self._keys_here or aggregate_id in self._forgotten or not _sealed_by_key(stored):
                continue
            if await self._store.keys.load_data_key(aggregate_id) is None:
                raise ImportConflict(
                    f"record[{index}]: {aggregate_id!r} is sealed under its data key, which this archive left in the"
                    " store it was made from (an archive keeps no key, so that forgetting the aggregate there makes"
                    " the archive unreadable too), and this store does not hold it: restore the archive into that"
                    " store (or a copy of it that holds its keys). The import stopped here, before writing this"
                    " record's batch",
                    reason=DATA_KEY_NOT_IN_STORE,
                    metadata={"record": str(index), "aggregate_id": aggregate_id},
                )
            self._keys_here.add(aggregate_id)

    async def _sealed(self, batch: list[Any], indexes: list[int]) -> tuple[list[Any], list[int]]:
        """``batch`` as the target's encryption at rest must hold it (sealing.py)."""
        if not batch:
            return batch, indexes
        prepared = await self._sealing.prepared(batch)
        kept = [(stored, index) for stored, index in zip(prepared, indexes, strict=True) if stored is not None]
        return [stored for stored, _ in kept], [index for _, index in kept]

    async def _forgotten_among(self, aggregate_ids: Iterable[str]) -> set[str]:
        """Those of ``aggregate_ids`` the target has forgotten (asked of the
        store for those not known forgotten yet: one query)."""
        asked = set(aggregate_ids)
        unknown = sorted(asked - self._forgotten)
        if not unknown:
            return asked & self._forgotten
        among = getattr(self._store.transfer, "forgotten_aggregates", None)
        if among is not None:
            self._forgotten |= await among(unknown)
        else:  # a plugin's store adapter written before Transfer had it: one key at a time
            keys = [await self._store.keys.load_data_key(aggregate_id) for aggregate_id in unknown]
            self._forgotten |= {key.aggregate_id for key in keys if key is not None and key.forgotten}
        return asked & self._forgotten

    async def _check(self, kind: str, batch: list[Any], indexes: Sequence[int]) -> None:
        """What ``_write`` would refuse of ``batch`` before writing it, read
        without writing: the aggregates its events would replace."""
        if kind == "event":
            await self._removing(await self._to_replace(batch, indexes))

    async def _check_restoring(self, aggregate_ids: Iterable[str]) -> None:
        """READ_MODELS_BEHIND if a read model is below the tombstone of one of
        ``aggregate_ids`` (those the target deleted and has not forgotten)."""
        named = list(dict.fromkeys(aggregate_ids))
        forgotten = await self._forgotten_among(named) if named else set()
        deleted = []
        for aggregate_id in named:
            replaced = await replaced_in(self._store.events, aggregate_id)
            if aggregate_id not in forgotten and replaced is not None and replaced.tombstone is not None:
                deleted.append(replaced)
        await self._behind_tombstones(deleted)

    async def _removing(
        self, replaced: dict[str, tuple[RecordedEvent, list[RecordedEvent]]]
    ) -> tuple[list[Replaced], dict[str, int]]:
        """What replacing ``replaced`` (``_to_replace``'s) removes of each
        live aggregate, and the read models below the tombstone of a deleted
        one (which refuse a restore: ``_behind_tombstones``)."""
        removing = []
        for aggregate_id, (_, back) in replaced.items():
            found = await replaced_in(self._store.events, aggregate_id, kept=len(back))
            if found is not None:
                removing.append(found)
        behind = await self._behind_tombstones([found for found in removing if found.tombstone is not None])
        return [found for found in removing if found.tombstone is None], behind

    async def _behind_tombstones(self, deleted: Sequence[Replaced]) -> dict[str, int]:
        """The read models (name: checkpoint) below the tombstone of one of
        ``deleted``; a restore waits for them to pass it for a while, then
        is refused (READ_MODELS_BEHIND) for those still below unless told to
        go on. Retired ones (read_models.retired) never refuse it: they are
        named to be rebuilt. Read before the tombstone is removed: one below
        it then never sees it (a checkpoint only moves on)."""
        if not deleted:
            return {}
        read_models = await checkpoints(self._store.projections, self._registry)
        behind = below_tombstones(deleted, read_models, self._registry)
        gone = retired(named_in(behind), self._registry)
        self._retired_behind(gone)
        behind = without(behind, gone)
        if behind and self._options.restore_deleted and not self._options.even_if_read_models_behind:
            wait = self._options.read_models_wait
            behind, stopped = await after_waiting(self._store.projections, behind, max_wait=wait)
            if behind:
                raise behind_refusal(behind, stopped, waited=wait)
        return named_in(behind) | gone

    def _retired_behind(self, projections: dict[str, int]) -> None:
        """Say, once each, that retired ``projections`` below a tombstone
        are not waited for (read_models.py)."""
        new = sorted(set(projections) - self._retired_told)
        if not new or self._checking_only:
            return
        self._retired_told.update(new)
        log.warning(
            "projections %s are below the tombstone of an aggregate restored, and no loaded plugin declares them"
            " (retired): the restore does not wait for them nor refuse for them; rebuild them if they are ever"
            " deployed again, or delete them (chronicle projection delete NAME)",
            ", ".join(f"{name} (at {projections[name]})" for name in new),
            extra={"projections": new},
        )

    async def _applied_replaced(self, removed: Sequence[Replaced]) -> None:
        """Note the read models whose checkpoint reached an event of
        ``removed`` (live aggregates this import replaced): read after the
        removal, as a checkpoint that reached one then reached it before."""
        if not removed:
            return
        read_models = await checkpoints(self._store.projections, self._registry)
        for found in removed:
            self._to_rebuild(stale(found, read_models, self._registry))

    def _to_rebuild(self, projections: dict[str, int]) -> None:
        if self._checking_only:
            return
        new = sorted(set(projections) - set(self.summary.projections_to_rebuild))
        self.summary.projections_to_rebuild.update(projections)
        if new:
            log.warning(
                "projections %s applied events this import replaced (or are behind a tombstone it replaced):"
                " their documents differ from a rebuild's; rebuild them (chronicle projection rebuild NAME)",
                ", ".join(f"{name} (at {projections[name]})" for name in new),
                extra={"projections": new},
            )

    async def _write(self, kind: str, batch: list[Any], indexes: Sequence[int]) -> int:
        transfer = self._store.transfer
        if kind == "event":
            written = await self._write_events(batch, indexes)
            self.summary.events_skipped += len(batch) - written
        elif kind == "snapshot":
            written = await transfer.import_snapshots(batch)
        elif kind == "claim":
            written = await transfer.import_claims(batch)
        elif kind == "command":
            written = await transfer.import_commands(batch)
        else:
            written = await transfer.import_data_keys(batch)
        return written

    async def _write_events(self, batch: Sequence[RecordedEvent], indexes: Sequence[int]) -> int:
        """Write ``batch``; with overwriting (or restoring a deleted
        aggregate), in the same transaction as the removal of what the
        target holds of an aggregate whose first event this batch has,
        unless that event is already there (an import resumed), or whose
        history parts from the stream's (``_parted``), its events before
        the parting written back first: no reader sees such an aggregate
        removed and not yet replaced, and a refused batch (or a store that
        went away during it) has removed nothing. A forgotten aggregate is
        never replaced (AGGREGATE_FORGOTTEN), nor is an event this import
        wrote replaced by another of its own (BAD_RECORD: one_place.py).
        How many of ``batch``'s events were written."""
        replaced = await self._to_replace(batch, indexes)
        if not replaced:
            return await self._store.transfer.import_events(batch)
        removed, behind = await self._removing(replaced)
        back = [event for _, same in replaced.values() for event in same]
        written_back = {event.event_id for event in back}
        events = [*back, *(event for event in batch if event.event_id not in written_back)]
        written = await self._store.transfer.import_events(events, replacing=list(replaced))
        for aggregate_id in replaced:
            self._replaced(aggregate_id)
        self._to_rebuild(behind)
        await self._applied_replaced(removed)
        # The events written back were there before (the batch's among them count as already there).
        return written - len(back)

    async def _to_replace(
        self, batch: Sequence[RecordedEvent], indexes: Sequence[int]
    ) -> dict[str, tuple[RecordedEvent, list[RecordedEvent]]]:
        """What ``_write_events`` removes for ``batch``, read without writing:
        by aggregate, the stream's event that replaces it and the target's
        events to write back after the removal. Refuses the batch
        (AGGREGATE_FORGOTTEN, BAD_RECORD, IMPORT_RACED) before anything is
        removed."""
        if not (self._options.overwrite or self._options.restore_deleted):
            return {}
        events = self._store.events
        # Aggregate -> the stream's event that replaces it, and the target's
        # events to write back after the removal.
        replaced: dict[str, tuple[RecordedEvent, list[RecordedEvent]]] = {}
        for event, index in zip(batch, indexes, strict=True):
            if event.version != 1 and not is_tombstone(event):
                continue
            aggregate_id = event.aggregate_id
            if await events.head(aggregate_id) is None:
                continue
            there = await events.read_aggregate(
                aggregate_id, AggregateQuery(from_version=event.version, to_version=event.version)
            )
            if there and there[0].event_id == event.event_id:
                continue
            if there:
                self._refuse_if_placed_by_an_import(event, index, there[0])
            deleted = await self._deleted(aggregate_id)
            if deleted and not self._options.restore_deleted:
                # Overwriting replaces a history, not a deletion: only a restore brings one back.
                raise import_conflict(AGGREGATE_DELETED, event)
            if self._options.overwrite or deleted:
                replaced[aggregate_id] = (event, [])
        if self._options.overwrite:
            for aggregate_id, parted in (await self._parted(batch, indexes)).items():
                replaced.setdefault(aggregate_id, parted)
        forgotten = await self._forgotten_among(replaced)
        for aggregate_id, (event, _) in replaced.items():
            if aggregate_id in forgotten:
                raise import_conflict(AGGREGATE_FORGOTTEN, event)
        return replaced

    async def _parted(
        self, batch: Sequence[RecordedEvent], indexes: Sequence[int]
    ) -> dict[str, tuple[RecordedEvent, list[RecordedEvent]]]:
        """With overwriting, an aggregate whose first events in the target
        are the stream's (an earlier import wrote them) but whose history
        then parts from the stream's (the target took other commands since)
        is replaced too: its events before the version where they part, the
        stream's own, are written back after the removal. By aggregate: the
        stream's event where they part, and those events."""
        events = self._store.events
        ids: dict[str, dict[int, RecordedEvent]] = {}
        index_of = {event.event_id: index for event, index in zip(batch, indexes, strict=True)}
        for event in batch:
            if event.version != 1 and not is_tombstone(event):
                ids.setdefault(event.aggregate_id, {})[event.version] = event
        parted: dict[str, tuple[RecordedEvent, list[RecordedEvent]]] = {}
        for aggregate_id, versions in ids.items():
            there = await events.read_aggregate(
                aggregate_id, AggregateQuery(from_version=min(versions), to_version=max(versions))
            )
            held = next(
                (e for e in there if e.version in versions and versions[e.version].event_id != e.event_id), None
            )
            if held is None:
                continue
            where = held.version
            self._refuse_if_placed_by_an_import(versions[where], index_of[versions[where].event_id], held)
            same = await events.read_aggregate(aggregate_id, AggregateQuery(to_version=where - 1))
            parted[aggregate_id] = (versions[where], same)
        return parted

    async def _deleted(self, aggregate_id: str) -> bool:
        """Whether the target holds ``aggregate_id`` deleted (its last event a tombstone)."""
        last = await self._store.events.read_aggregate(aggregate_id, AggregateQuery(backwards=True, limit=1))
        return bool(last) and is_tombstone(last[0])

    def _replaced(self, aggregate_id: str) -> None:
        self.summary.aggregates_replaced += 1
        if self._on_replaced is not None:
            self._on_replaced(aggregate_id)


def _claim_order(claim: HeldClaim) -> tuple[str, str]:
    return claim.scope, claim.value


def _sealed_by_key(stored: Any) -> bool:
    """Whether ``stored`` holds what only its aggregate's data key opens."""
    if isinstance(stored, RecordedEvent):
        return is_sealed(stored.payload)
    if isinstance(stored, Snapshot):
        return is_sealed(stored.state)
    if isinstance(stored, CommandRecord):
        return is_sealed_record(stored)
    return False


def _name_record(conflict: ImportConflict, batch: Sequence[Any], indexes: Sequence[int]) -> None:
    """Add to ``conflict`` (the store's, which names the record by what it
    holds: an event id, an aggregate and version, a claim's scope) the index
    in the stream of the record of ``batch`` it names, if it names one."""
    named = {key: value for key, value in conflict.metadata.items() if key in _NAMING}
    if not named or "record" in conflict.metadata:  # named already (one_place.raced)
        return
    found = [
        index
        for stored, index in zip(batch, indexes, strict=True)
        if all(str(getattr(stored, key, None)) == value for key, value in named.items())
    ]
    # Several: a claim of the aggregate, which its value (not told) would tell
    # apart. A negative index: a record the import derived, not the stream's.
    if len(found) == 1 and found[0] >= 0:
        conflict.metadata["record"] = str(found[0])
        conflict.message = f"record[{found[0]}]: {conflict.message}"
        conflict.args = (conflict.message,)


def max_version(batch: Sequence[RecordedEvent], aggregate_id: str) -> int:
    return max(event.version for event in batch if event.aggregate_id == aggregate_id)


# How many diverged aggregates a refusal lists by name (its metadata counts them all).
_NAMED_AT_MOST = 20


def _name_diverged(conflict: ImportConflict, diverged: Sequence[str]) -> None:
    """Add to an AGGREGATE_NOT_EMPTY refusal of a batch every aggregate of
    the batch that diverged (``Importer._diverged``), so that an operator
    decides about all of them at once: the batch is written whole or not
    at all, so the other aggregates' events in it were not written either."""
    if not diverged:
        return
    shown = ", ".join(repr(aggregate_id) for aggregate_id in diverged[:_NAMED_AT_MOST])
    more = f" and {len(diverged) - _NAMED_AT_MOST} more" if len(diverged) > _NAMED_AT_MOST else ""
    conflict.metadata["diverged_aggregates"] = json.dumps(list(diverged[:_NAMED_AT_MOST]))
    conflict.metadata["diverged_count"] = str(len(diverged))
    conflict.message += (
        f". {len(diverged)} aggregate(s) of this batch hold events here that the import does not: {shown}{more}"
        " (the target took commands on them after an earlier import?). Nothing of the batch was written, the other"
        " aggregates' events in it included: leave these out (--leave-out AGGREGATE) to import the rest, or"
        " replace them with the stream's history (--overwrite, losing what the target wrote of them)"
    )
    conflict.args = (conflict.message,)


# What the stores' import conflicts name a record by (service/store/importing.py).
_NAMING = ("event_id", "aggregate_id", "version", "scope")


def _stored(
    record: export_pb2.ExportRecord, kind: str, where: str
) -> RecordedEvent | Snapshot | HeldClaim | CommandRecord | DataKey:
    if kind == "event":
        return stored_event(record.event, f"{where}.event")
    if kind == "snapshot":
        return stored_snapshot(record.snapshot, f"{where}.snapshot")
    if kind == "claim":
        return stored_claim(record.claim, f"{where}.claim")
    if kind == "command":
        return stored_command(record.command, f"{where}.command")
    if kind == "data_key":
        return stored_data_key(record.data_key, f"{where}.data_key")
    raise InvalidInput.for_field(where, "carries no record", reason=BAD_RECORD)
