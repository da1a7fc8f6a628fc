"""What Chronicle needs from storage, as one small protocol per role.

    Lifecycle        open, close, ping
    EventRecorder    append (events + command records + claims, one transaction), find_command,
                     head, read_aggregate, version_at
    LogReader        read_log, log_head, wait_for_commit: the global log, never skipping
    ClaimRegistry    claim_owner and the hiding of claims taken in the clear
    SnapshotStore    save_snapshot, load_snapshot
    ProjectionStore  projection checkpoints and documents, committed together
    AuditRecorder    audit entries no command record carries, and reading the audit log
    KeyStore         per-aggregate data keys (encryption at rest)
    Transfer         everything above as stored, read out in pages and written in (export, import)
    Retention        pruning command records and refusals older than a window
    LeaseStore       leases that share work among live replicas (partitions, projections)
    GroupStore       subscription groups: settings, segment checkpoints, parked events, and the
                     leases by which consumers hold segments

Each role has its own contract test file in ``tests/contract``. Three
adapters (memory, SQLite, PostgreSQL) implement every role
(``StoreAdapter``); ``Store`` is the set of roles the composition root hands
out, so that a wrapper (encryption at rest, metrics) replaces only the roles
it changes, and each consumer asks only for the roles it uses. Adapters
document only where they differ from what is written here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Protocol, runtime_checkable

from service.store.grouping import ConsumerReport, GroupParkedEvent, GroupSpec, GroupState, SettledEvent
from service.store.leasing import Fencing, Lease, LeaseMember, LeaseView
from service.store.records import (
    AggregateHead,
    AggregateLastEvent,
    AggregateSummary,
    AuditEntry,
    ClaimChange,
    CommandRecord,
    DataKey,
    DocumentRange,
    DocumentWrite,
    Forgetting,
    HeldClaim,
    LogFilter,
    LogPage,
    NewEvent,
    ParkedEvent,
    RecordedEvent,
    Snapshot,
    StoredDocument,
)


@dataclass(frozen=True, slots=True)
class AggregateQuery:
    """Which of an aggregate's events to read.

    Versions are inclusive bounds. ``event_types`` empty means all types;
    ``origin`` None means any origin. ``backwards`` returns the newest first
    (``from_version`` is then ignored unless set; ``to_version`` caps).
    """

    from_version: int = 1
    to_version: int | None = None
    origin: str | None = None
    event_types: frozenset[str] = frozenset()
    limit: int | None = None
    backwards: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditQuery:
    """Which audit entries to read, newest first. Every set field must match;
    times are microseconds since the epoch, ``since_us`` inclusive,
    ``until_us`` exclusive."""

    aggregate_id: str | None = None
    principal: str | None = None
    command_id: str | None = None
    outcome: str | None = None
    since_us: int | None = None
    until_us: int | None = None
    limit: int = 100
    command_type: str | None = None  # a command's full name, or an administrator's action (SERVICE/RPC)
    # Entries whose aggregate id begins with it: a tenant's (``acme:``), for
    # its own administrator (service/api/admin_service.py).
    aggregate_id_prefix: str | None = None

    def matches(self, entry: AuditEntry) -> bool:
        return (
            (self.aggregate_id is None or entry.aggregate_id == self.aggregate_id)
            and (self.aggregate_id_prefix is None or entry.aggregate_id.startswith(self.aggregate_id_prefix))
            and (self.principal is None or entry.principal == self.principal)
            and (self.command_id is None or entry.command_id == self.command_id)
            and (self.command_type is None or entry.command_type == self.command_type)
            and (self.outcome is None or entry.outcome == self.outcome)
            and (self.since_us is None or entry.recorded_at_us >= self.since_us)
            and (self.until_us is None or entry.recorded_at_us < self.until_us)
        )


# Snapshots kept per aggregate (the newest ones) unless a store is told
# otherwise: enough for recent time travel to start from a snapshot, few
# enough that storage follows the number of aggregates, not of events.
DEFAULT_KEEP_SNAPSHOTS = 3


def check_keep_snapshots(keep: int) -> int:
    if keep < 1:
        raise ValueError(f"a store keeps at least one snapshot per aggregate, got {keep}")
    return keep


class Lifecycle(Protocol):
    """Opening and closing a store, and whether it can serve."""

    async def open(self) -> None:
        """Connect and create or migrate the schema. Idempotent."""

    async def close(self) -> None:
        """Release connections. The store is unusable afterwards."""

    async def ping(self) -> None:
        """Return if the store can serve requests, raise StoreUnavailable if not."""


class EventRecorder(Protocol):
    """Aggregates' events and the command records that make command ids
    idempotent, written together; reads of one aggregate."""

    def append(
        self,
        aggregate_id: str,
        events: Sequence[NewEvent],
        expected_version: int,
        *,
        commands: Sequence[CommandRecord] = (),
        claims: Sequence[ClaimChange] = (),
    ) -> Awaitable[list[RecordedEvent]]:
        """Append ``events`` as versions ``expected_version + 1`` onward.

        All or nothing, in one transaction together with ``commands`` (the
        records that make command ids idempotent; several for a batch) and
        ``claims`` (uniqueness claims taken or released for
        ``aggregate_id``, applied in order). Checked in this order, the
        first failure raising and writing nothing:

        1. ``CommandAlreadyRecorded`` if a command id is already recorded
           (first, so a retry is recognised even when the aggregate moved on);
        2. ``ConcurrencyConflict`` if the aggregate is not at
           ``expected_version`` (0: it must have no events);
        3. ``NotUnique`` if a claimed value is held by another aggregate.
           Claiming a value the aggregate already holds, or releasing one it
           does not hold, changes nothing. The database enforces this (a
           unique constraint on scope and value), so concurrent appends by
           several replicas cannot both take one value.

        The version is checked even when ``events`` is empty: recording that
        a command changed nothing, or was refused, is only right if it was
        decided on the aggregate's latest state.
        """

    async def find_command(self, command_id: str) -> CommandRecord | None:
        """The record of a command id, or None."""

    async def head(self, aggregate_id: str) -> AggregateHead | None:
        """The aggregate's type and latest version, or None if it has no events."""

    async def read_aggregate(self, aggregate_id: str, query: AggregateQuery = AggregateQuery()) -> list[RecordedEvent]:
        """The aggregate's events matching ``query``, in version order
        (descending when ``query.backwards``)."""

    async def version_at(self, aggregate_id: str, timestamp_us: int) -> int:
        """The aggregate's version as of ``timestamp_us`` (microseconds since
        the epoch): the last version of the longest run of events from
        version 1 whose timestamps are all at or before it. 0 if the first
        event is later (or there is none). Defined over the prefix because
        clocks of different writers may disagree: versions, not timestamps,
        order an aggregate's events."""

    async def list_aggregates(
        self, prefix: str, *, after: str = "", limit: int, aggregate_type: str | None = None
    ) -> list[AggregateSummary]:
        """Up to ``limit`` aggregates whose id starts with ``prefix`` (every
        one for ""), and is greater than ``after``, in code point order of
        ids (``after``: the last id of the page before); only those of
        ``aggregate_type`` when given. For browsing (the console,
        ListAggregates), not for the command path: it walks an index of ids
        in code point order from the prefix to its end (``prefix_end``)."""


class LogReader(Protocol):
    """The global log, in position order, for subscribers and projections."""

    async def read_log(
        self, after_position: int, log_filter: LogFilter, limit: int, *, max_bytes: int | None = None
    ) -> LogPage:
        """Up to ``limit`` events matching ``log_filter`` with positions
        greater than ``after_position``, in position order, and the position
        the log was examined up to (the last event's when the page is full,
        else the log's end as of the same read). With ``max_bytes``, the page
        also ends with the first event that brings the total of the events'
        ``stored_size()`` to ``max_bytes`` (so it is full then too, and never
        empty while an event matches: one event larger than ``max_bytes``
        is a page of its own).

        Never skips: an event with a lower position than one already returned
        can not commit later (each store's own reason is in its docstring)."""

    async def log_head(self) -> int:
        """The position of the last committed event (0 for an empty log)."""

    async def stored_event_kinds(self) -> list[tuple[str, str, int]]:
        """Every (aggregate type, event type, schema version) the log holds,
        each once, in that order: what ``chronicle plugins --check`` judges
        the plugins by. A scan of the whole log (no index holds the three)."""

    async def wait_for_commit(self, after_position: int, max_wait: float) -> None:
        """Return when an event after ``after_position`` may have committed
        (through any replica), or after ``max_wait`` seconds."""


class ClaimRegistry(Protocol):
    """Uniqueness claims (taken and released by ``EventRecorder.append``)."""

    async def claim_owner(self, scope: str, value: str) -> str | None:
        """The aggregate holding ``value`` in ``scope``, or None."""

    async def claims_in_clear(self, limit: int) -> list[HeldClaim]:
        """Up to ``limit`` claims whose value does not start with
        ``HIDDEN_CLAIM_MARK``: taken before encryption at rest was on."""

    async def hide_claim(self, claim: HeldClaim, hidden_value: str) -> bool:
        """In one transaction, replace ``claim`` (if it is still held as
        given) by the same holder's claim on ``hidden_value``. False if the
        claim was gone, or ``hidden_value`` is held by another aggregate (the
        clear one is dropped all the same: it can no longer be checked)."""


@runtime_checkable
class TenantClaimsProbe(Protocol):
    """Whether a scope holds claims stored per tenant (a role of its own, so
    that a plugin's adapter without it still serves: its scopes are then
    not checked at start)."""

    async def holds_tenant_claims(self, scope: str) -> bool:
        """Whether any claim is stored under ``scope``, the tenant mark and
        some tenant (``claim_scope_names.tenant_scope``): one index range,
        in code point order whatever the database's collation."""

    async def tenant_claim_scopes(self) -> list[str]:
        """The scopes (as declared: ``claim_scope_names.declared_scope``)
        that hold claims stored per tenant, in code point order: one index
        probe per such scope, however many tenants and claims each holds."""


class SnapshotStore(Protocol):
    """Aggregates' snapshots: an optimisation, never the truth."""

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Keep ``snapshot`` beside the aggregate's earlier ones (replacing
        one at the same version), so that past versions load from a
        snapshot too; then, in the same transaction, delete all but the
        aggregate's newest ``keep_snapshots`` (each store's constructor
        argument, ``DEFAULT_KEEP_SNAPSHOTS`` unless set). A snapshot older
        than that many others is not kept at all. A past version older than
        every kept snapshot loads from the first event."""

    async def load_snapshot(
        self, aggregate_id: str, *, at_most: int | None = None, kind: SnapshotKind | None = None
    ) -> Snapshot | None:
        """The aggregate's latest snapshot, or with ``at_most`` the latest at
        or below that version; with ``kind``, the latest that ``kind`` can
        use (an older usable one is taken over a newer one of another kind;
        a store may look among the newest ``keep_snapshots`` only, all it
        keeps but for an import's surplus); None if there is none."""


@dataclass(frozen=True, slots=True)
class SnapshotKind:
    """The snapshots an aggregate type can load from: its name, its state's
    message type with the fingerprint of what the state depends on
    (``AggregateType.snapshot_state_type``) and its state schema version
    (any other is stale)."""

    aggregate_type: str
    state_type: str
    schema_version: int

    def usable(self, snapshot: Snapshot) -> bool:
        return (
            snapshot.aggregate_type == self.aggregate_type
            and snapshot.state_type == self.state_type
            and snapshot.schema_version == self.schema_version
        )


@runtime_checkable
class SnapshotAndEvents(Protocol):
    """Loading an aggregate in one round trip: a store that plays both the
    snapshot and the event roles may offer it (PostgreSQL does)."""

    async def load_from_snapshot(
        self, aggregate_id: str, kind: SnapshotKind, *, to_version: int | None = None
    ) -> tuple[Snapshot | None, list[RecordedEvent]] | None:
        """What ``load_snapshot(aggregate_id, at_most=to_version, kind=kind)``
        returns, and the aggregate's events after it (up to ``to_version``;
        from the first when there is no snapshot). None when
        the two could not be read as one (a snapshot saved or pruned
        meanwhile): the caller reads them one after the other instead."""


def loads_in_one_round_trip(store: Store) -> SnapshotAndEvents | None:
    """``store``'s snapshot role, if it loads an aggregate in one round trip
    and plays the event role too: a wrapper of either role alone
    (encryption, say) must see both reads, so then the two are made apart."""
    both: object = store.snapshots
    return both if both is store.events and isinstance(both, SnapshotAndEvents) else None


class ProjectionStore(Protocol):
    """Read models: each projection's checkpoint, documents and parked events."""

    async def projection_position(self, name: str) -> int:
        """The log position projection ``name`` has applied up to (0: none)."""

    async def start_projection(self, name: str, position: int) -> int | None:
        """Fix projection ``name``'s checkpoint at ``position`` unless it has
        one (insert if absent, atomically: of two replicas that start it at
        once, the first one's position stands); the checkpoint it had, or
        None when it had none and now stands at ``position``. A reaction's
        ``start_from`` fixes where it starts with this, before its server
        takes commands."""

    async def projection_version(self, name: str) -> int | None:
        """The version of projection ``name``'s declaration its documents
        were built by (``plugin.projection(..., version=N)``), kept with its
        checkpoint; None when it has no checkpoint. One stored before
        versions were (or by an older server) is 1, the default."""

    async def start_projection_version(self, name: str, version: int) -> int:
        """The version stored with projection ``name``'s checkpoint; a name
        without a checkpoint gets one at 0 with ``version`` (insert if
        absent, atomically: of two runners, the first one's stands), which
        is then returned. A projection's first run records its version so."""

    async def load_document(self, projection: str, key: str) -> StoredDocument | None:
        """Projection ``projection``'s document under ``key``, or None."""

    async def load_documents(self, projection: str, keys: Sequence[str]) -> list[StoredDocument]:
        """Those of ``keys`` that hold a document of ``projection``, in any
        order, read in one statement (a batch of handlers that needs
        hundreds of documents costs one read, not hundreds)."""

    async def commit_projection(
        self,
        name: str,
        *,
        expected_position: int,
        new_position: int,
        writes: Sequence[DocumentWrite],
        fencing: Fencing | None = None,
        parked: Sequence[ParkedEvent] = (),
    ) -> None:
        """Apply ``writes``, record ``parked`` (events the batch skipped) and
        move the projection's checkpoint from ``expected_position`` to
        ``new_position``, in one transaction.
        ``ConcurrencyConflict`` (and nothing written) if the checkpoint is no
        longer at ``expected_position``: someone else applied those events;
        or if ``fencing`` is given and its lease is no longer held by its
        member at its epoch (``LeaseStore``): the runner lost the projection
        to another replica. A store whose process is the one owner of every
        lease (memory) has nothing to check the token against.
        A document is kept with its ``subjects`` (those of its last write);
        ``SubjectsForgotten`` (and nothing written) if a write puts a
        document naming an aggregate that was forgotten, even one forgotten
        while this commit runs (a forget and a commit are ordered)."""

    async def list_documents(self, projection: str, listing: DocumentRange) -> list[StoredDocument]:
        """Up to ``listing.limit`` of the projection's documents whose keys
        start with ``listing.prefix``, after ``listing.after``, in key order
        (code point order; descending if asked), read from one snapshot.
        Served by an index range on the key, never by a scan of the
        projection's documents."""

    async def count_documents(self, projection: str, prefix: str, *, limit: int) -> int:
        """How many of the projection's documents have keys starting with
        ``prefix``, counted up to ``limit`` (more: ``limit``), read from one
        snapshot. Served by a range of the key's index, its entries alone
        (no document is read), and never more than ``limit`` of them: the
        cost grows with the answer, at most ``limit``, whatever the
        projection holds."""

    async def reset_projection(self, name: str, version: int | None = None) -> None:
        """Delete the projection's documents and parked events and move its
        checkpoint back to 0, in one transaction: it is applied again from
        the start of the log. A commit from the checkpoint before (a runner
        that was applying a batch) then conflicts and writes nothing.
        ``version``: the declaration's version the rebuilt documents are
        of, stored with the checkpoint in the same transaction (None: the
        stored one stays)."""

    async def stored_projections(self) -> list[tuple[str, int]]:
        """Every name that holds a checkpoint, documents or parked events,
        with its checkpoint (0 if it has none), by name: what a plugin
        declares and what no plugin declares any more alike. Documents are
        found by a walk of their index's distinct names, not by a scan."""

    async def delete_projection(self, name: str, *, limit: int) -> int:
        """Delete the projection's checkpoint and up to ``limit`` of its
        documents and of its parked events, in one transaction; how many
        documents and parked events went (0: nothing was left). Called
        again until 0, a projection of millions of documents never holds
        a lock for long. The checkpoint goes in the first call, so that a
        runner still applying a batch of it (from its old checkpoint)
        conflicts and writes nothing."""

    async def parked_events(
        self, projection: str, *, after: tuple[int, str] | None = None, limit: int = 100
    ) -> list[ParkedEvent]:
        """Up to ``limit`` of the projection's parked events after ``after``
        (a position and an event id), in log order (position, then id)."""

    async def count_parked_events(self, projection: str) -> int:
        """How many events the projection has parked."""

    async def count_parked_commands(self, reaction: str) -> int:
        """How many commands ``reaction`` has parked: its documents of type
        ``PARKED_COMMAND_TYPE`` (a forgotten one is deleted, so not
        counted), counted in the store over an index of documents of that
        type alone, not read: a status call costs the same with 10,000
        parked as with none."""

    async def due_documents(self, projection: str, *, until_us: int, limit: int) -> list[StoredDocument]:
        """Up to ``limit`` of the projection's documents written with a due
        time (``DocumentWrite.due_us``) at or before ``until_us``, soonest
        first (then by stored key), read over an index of the documents that
        have one: a reaction's deadlines. A write without a due time clears
        it; forgetting a subject deletes the document as any other."""

    async def due_summary(self, projection: str) -> tuple[int, int | None]:
        """How many of the projection's documents have a due time, and the
        soonest of those times (None: none has one), counted over the same
        index, none read."""


class AuditRecorder(Protocol):
    """The audit log beyond what command records carry."""

    async def record_audit_entry(self, entry: AuditEntry) -> None:
        """Durably record an audit entry that no ``CommandRecord`` carries: a
        command refused before a handler decided (authentication, policy,
        malformed input, overload), or an administrator's action (forgetting
        an aggregate, rewrapping keys), accepted or refused. Commands that
        reached a handler are audited through their ``CommandRecord``."""

    async def read_audit(self, query: AuditQuery) -> list[AuditEntry]:
        """Audit entries matching ``query``, newest first: the command records
        (accepted and refused) and the other recorded entries together."""


class KeyStore(Protocol):
    """Per-aggregate data keys for encryption at rest (see service/security/encryption.py)."""

    async def create_data_key(self, key: DataKey) -> DataKey:
        """Store ``key`` unless the aggregate has a key (or a tombstone)
        already; return the one stored. Concurrent callers all get the winner."""

    async def load_data_key(self, aggregate_id: str) -> DataKey | None:
        """The aggregate's key (``wrapped`` None if forgotten), or None."""

    async def forget_data_key(self, aggregate_id: str) -> bool:
        """``forget_aggregate_data(aggregate_id).erased``."""

    async def forget_aggregate_data(self, aggregate_id: str) -> Forgetting:
        """Erase the aggregate's key, leaving a tombstone, delete its
        snapshots, the projections' documents that name it as a subject and
        the events projections and subscription groups parked of it, erase the fingerprints and
        refusal texts of its command records (``encryption.erased_record``)
        and the messages of its audit entries, sealed or in the clear, and
        release every claim it holds, in one transaction.
        Says whether it erased a live key (not if it had none to erase) and
        counts the documents deleted. An aggregate already forgotten (a
        tombstone) still has all of these removed, so forgetting
        again finishes what an older version left behind; one that never had
        a key is left alone."""

    async def forget_aggregates_data(
        self, aggregate_ids: Sequence[str], *, audit: AuditEntry | None = None
    ) -> list[Forgetting]:
        """``forget_aggregate_data`` of each of ``aggregate_ids``, in that
        order, all in one transaction: a crash leaves all of them forgotten
        or none (a tenant's aggregates are forgotten in such batches).
        ``audit``: the batch's audit entry, recorded in the same transaction
        when it erases any key (none when every one was forgotten already),
        so a batch is forgotten with its entry or not at all (the audit
        table is in the store's own database)."""

    async def live_keys(self, prefix: str, *, after: str = "", limit: int) -> list[str]:
        """Up to ``limit`` ids of aggregates with a live (not forgotten) key
        that start with ``prefix`` and are greater than ``after``, in code
        point order: what forgetting by prefix has still to do."""

    async def count_live_keys(self, prefix: str) -> int:
        """How many aggregates whose id starts with ``prefix`` have a live key."""

    async def data_keys_to_rewrap(self, active_master_key_id: str, limit: int, *, after: str = "") -> list[DataKey]:
        """Up to ``limit`` live keys wrapped by another master key than the
        active one, of aggregate ids greater than ``after``, in id order:
        with tenants' master keys a key may be rightly wrapped by another
        key than the shared active one, so rewrapping pages past them."""

    async def rewrap_data_keys(self, rewraps: Sequence[tuple[DataKey, DataKey]]) -> int:
        """Replace each ``(old, new)``'s ``old`` by ``new`` where the stored
        key is still ``old``, all in one transaction; return how many were
        replaced. The replaced wrapped keys are left nowhere the adapter can
        clear them from (SQLite: its WAL is emptied after the commit, as
        after a forget): a copy of the store taken after a rewrap must not
        hold a tenant's data keys wrapped by the shared master key."""


class Transfer(Protocol):
    """What a store holds, exactly as stored, read out in pages and written
    in again: export and import, moving a store to another. Payloads,
    snapshot states and claimed values are as the adapter keeps them (sealed
    and hidden with encryption at rest: this role is never wrapped, so an
    export carries ciphertext and the data keys that open it, wrapped by the
    master keys). Events are read out through ``LogReader.read_log`` and
    ``EventRecorder.read_aggregate`` of the same adapter.

    Every write is one transaction and idempotent: a record the store holds
    already is left as it is, so an import interrupted anywhere can be run
    again from the start and only writes what is missing."""

    async def data_keys_page(self, after: str, limit: int) -> list[DataKey]:
        """Up to ``limit`` data keys (tombstones of forgotten aggregates
        included) whose aggregate id sorts after ``after``, in id order."""

    async def snapshots_page(
        self, after: tuple[str, int], limit: int, *, aggregate_id: str | None = None
    ) -> list[Snapshot]:
        """Up to ``limit`` snapshots after ``after`` in (aggregate id,
        version) order (``("", 0)``: from the first); only ``aggregate_id``'s
        when it is set."""

    async def claims_page(
        self, after: tuple[str, str], limit: int, *, aggregate_id: str | None = None
    ) -> list[HeldClaim]:
        """Up to ``limit`` claims after ``after`` in (scope, value) order;
        only those ``aggregate_id`` holds when it is set."""

    async def commands_page(self, after: str, limit: int) -> list[CommandRecord]:
        """Up to ``limit`` command records whose id sorts after ``after``, in id order."""

    async def import_events(self, events: Sequence[RecordedEvent], *, replacing: Sequence[str] = ()) -> int:
        """Write ``events`` as they were recorded elsewhere, in one
        transaction, after removing the aggregates of ``replacing`` in it
        (as ``remove_aggregate``: an import overwriting them, whose batch is
        never seen removed without its replacement, nor written without the
        removal): each keeps its event id, aggregate, version, timestamp
        and envelope, and takes a new position at the end of the log, in the
        order given (so the log's order is kept; positions themselves are
        this store's). An event whose id the store holds at the same
        aggregate and version is skipped (written before). Returns how many
        were written.

        ``ImportConflict``, and nothing written, when an event's id is held
        by another event (EVENT_ID_TAKEN), its aggregate has another event at
        its version (AGGREGATE_NOT_EMPTY), or its version is not the one
        after its aggregate's last (VERSION_GAP), except for a deleted
        aggregate's tombstone, which stands alone at the version after the
        events it replaced: only on an aggregate with no events
        (AGGREGATE_NOT_EMPTY otherwise). A refused batch removed nothing."""

    async def import_snapshots(self, snapshots: Sequence[Snapshot]) -> int:
        """Write the snapshots the store does not hold (by aggregate and
        version), in one transaction, without pruning; how many were written.
        A snapshot of a forgotten aggregate (its data key a tombstone) is
        neither checked nor written: forgetting deleted its snapshots, and a
        forget that commits while the batch is written either sees it (and
        deletes it) or is seen (and it is not written)."""

    async def import_claims(self, claims: Sequence[HeldClaim], *, released: Sequence[HeldClaim] = ()) -> int:
        """Give up the ``released`` claims (each only where its aggregate
        still holds it) and take ``claims``, in one transaction; one the same
        aggregate holds already is left as it is. ``ImportConflict``
        (CLAIM_HELD), and nothing written (nothing released either), when
        another aggregate holds one of the values. How many were taken. A
        claim of a forgotten aggregate is neither taken nor checked
        (forgetting released its values, which another aggregate may hold
        since), with a concurrent forget as for snapshots. An import makes
        an aggregate's claims what its state declares so: the values its
        history gave up released as the new ones are taken, never a moment
        with both or neither (``claims_page(..., aggregate_id=)`` lists
        what it holds)."""

    async def forgotten_aggregates(self, aggregate_ids: Sequence[str]) -> set[str]:
        """Those of ``aggregate_ids`` whose data key is a tombstone: the
        aggregates that were forgotten (an import leaves out what
        forgetting removed)."""

    async def import_commands(self, commands: Sequence[CommandRecord]) -> int:
        """Write the command records whose ids the store does not hold, in
        one transaction; how many were written."""

    async def import_data_keys(self, keys: Sequence[DataKey]) -> int:
        """Write the data keys of aggregates that have none, in one
        transaction. A forgotten aggregate stays forgotten: a tombstone
        (``wrapped`` None) is never replaced, and an imported tombstone
        forgets the aggregate's live key (and, as ``forget_data_key``, drops
        its snapshots and claims). ``ImportConflict`` (DATA_KEY_CONFLICT),
        and nothing written, when the store holds another live key for an
        aggregate. How many rows were written or turned into tombstones."""

    async def remove_aggregate(self, aggregate_id: str) -> int:
        """Remove the aggregate's events, snapshots and claims in one
        transaction, leaving no trace in the log (an import replacing it);
        command records and its data key stay. How many events went."""

    async def delete_aggregate(
        self, aggregate_id: str, tombstone: NewEvent, *, expected_version: int | None = None
    ) -> RecordedEvent | None:
        """In one transaction: remove the aggregate's events, snapshots and
        claims, and append ``tombstone`` as the version after its last, at
        the end of the log; the tombstone as recorded. An append racing the
        deletion is either before it (and deleted with the rest) or refused
        after it. An aggregate deleted before is left as it is and its
        tombstone returned; one with no events is None.
        ``ConcurrencyConflict``, and nothing done, when ``expected_version``
        is set and the aggregate is at another."""

    async def aggregates_page(self, after: str, limit: int) -> list[AggregateLastEvent]:
        """Up to ``limit`` aggregates whose id sorts after ``after``, in id
        order, each as its last event shows it."""


class Retention(Protocol):
    """Records kept for a while only: command records make retries
    idempotent (and audit the commands), and are needed only as long as a
    client may retry; the audit's entries of refused commands are needed as
    long as someone may look. Each call prunes one small batch, oldest
    first, in one transaction that takes no lock an append waits for."""

    async def prune_commands(self, recorded_before_us: int, limit: int) -> int:
        """Delete up to ``limit`` command records decided before
        ``recorded_before_us`` (microseconds since the epoch), oldest first;
        how many went. A pruned command id is unknown from then on: a retry
        of it is a new command."""

    async def prune_refusals(self, recorded_before_us: int, limit: int) -> int:
        """Delete up to ``limit`` of the audit's own entries of refused
        commands (``record_audit_entry`` with outcome refused) and of dry
        runs, which wrote nothing, recorded before ``recorded_before_us``,
        oldest first; how many went. Administrators' actions that were done
        are kept."""


class LeaseStore(Protocol):
    """Leases that live replicas share out (``service/cluster/leases.py``
    decides who takes what; this role only records it, atomically).

    A member is live in a group until ``ttl`` seconds after its last
    ``renew_leases``; a lease is held until ``ttl`` seconds after its
    holder's last renewal. Times are the database's, so replicas' clocks do
    not matter. Each change of a lease's holder (taken, given up, taken
    over) adds one to its epoch. The SQLite store keeps them in its file,
    shared by the server processes on it (one machine: times are its clock).
    The memory store serves one process, which is therefore the one member
    and holds every lease (at epoch 1)."""

    async def renew_leases(self, group: str, member: LeaseMember, names: Sequence[str], ttl: float) -> LeaseView:
        """In one transaction: record ``member`` as live in ``group`` for
        ``ttl`` seconds (with its address), make sure a lease exists for each
        of ``names`` (free if new), extend every lease of the group that
        ``member`` holds by ``ttl`` from now; then return the group: its live
        members and all its leases, an expired lease shown without owner."""

    async def change_leases(
        self, group: str, member_id: str, *, release: Sequence[str], acquire: Sequence[str], ttl: float
    ) -> list[Lease]:
        """In one transaction: give up the leases ``release`` that
        ``member_id`` holds, and take each lease of ``acquire`` that is free
        or expired, for ``ttl`` seconds. Return the leases taken (a lease
        another member took first is not among them), with their new epochs."""

    async def leave_group(self, group: str, member_id: str) -> None:
        """``member_id`` leaves ``group`` and gives up every lease it holds
        there, in one transaction."""


class GroupStore(Protocol):
    """Subscription groups (``service/store/grouping.py`` says what they
    are; ``service/groups.py`` delivers their events).

    ``consumer_leases`` is the ``LeaseStore`` by which a group's consumers
    share its segments (lease group ``grouping.consumer_group(name)``, one
    lease per segment, named by its number): the store's own leases on
    PostgreSQL and SQLite, where consumers of one group may be connected to
    different replicas (processes on one file); the process's own on
    memory, whose one process serves every consumer
    (``local_leases.LocalLeases``, shared among them for real, unlike the
    replicas' ``SoleOwnerLeases``)."""

    @property
    def consumer_leases(self) -> LeaseStore: ...

    async def create_group(self, spec: GroupSpec) -> None:
        """Create the group and its ``spec.segments`` checkpoints (each at
        ``spec.start_position``, nothing acknowledged), in one transaction,
        with an incarnation of its own (``spec.incarnated()``: ``load_group``
        returns it; ``spec.incarnation`` is not kept). ``ResourceExists``
        (GROUP_EXISTS), and nothing written, if a group of that name exists."""

    async def update_group(self, spec: GroupSpec) -> bool:
        """Set the group's settings that may change while it is consumed
        (``UPDATABLE_SETTINGS``: attempts, backoffs, ack timeout) to
        ``spec``'s, for the group of ``spec.name`` and ``spec.incarnation``;
        False, and nothing written, if there is none (gone, or deleted and
        created again). Its filter, start, segments, checkpoints and parked
        events stay as they are."""
        ...

    async def delete_group(self, name: str) -> bool:
        """Delete the group, its checkpoints, its parked events and its
        consumers' leases, in one transaction. False if there was none."""

    async def load_group(self, name: str) -> GroupState | None:
        """The group (settings, checkpoints, parked count, live consumers
        with their segments) as one read sees it, or None."""

    async def list_groups(self) -> list[GroupState]:
        """Every group, by name in code point order (byte order in UTF-8,
        whatever the database's collation), as ``load_group`` reads each."""

    async def report_consumer(self, name: str, member_id: str, report: ConsumerReport) -> None:
        """Keep ``report`` as what consumer ``member_id`` of group ``name``
        says of itself now (its last report replaced), its ages counted from
        now by the store's clock (``answered_ago`` before it, ``heard_ago``
        0), for ``load_group`` to show with the consumer while it is a live
        member, with its ages as of the read. Reports older than an hour
        are forgotten; a group's are deleted with it. A report of a group
        that does not exist is kept (and forgotten) all the same: a
        consumer's session notices its group is gone by ``load_group``."""
        ...

    async def renew_consumer(
        self, name: str, member: LeaseMember, names: Sequence[str], ttl: float, report: ConsumerReport
    ) -> LeaseView:
        """A consumer session's heartbeat: ``consumer_leases.renew_leases``
        of the group's lease group (``grouping.consumer_group(name)``) for
        ``member`` and ``report_consumer`` of ``report``, in one transaction
        (one write to the store): the report costs the heartbeat nothing of
        its own, and it is written exactly when the member is renewed, so a
        consumer heard from is a consumer alive, and one whose heartbeats
        fail is silent and lapsing at once. The view as ``renew_leases``
        returns it."""
        ...

    async def commit_segment(
        self,
        name: str,
        segment: int,
        *,
        expected_position: int,
        new_position: int,
        acknowledged: int,
        skipped: int = 0,
        parked: Sequence[GroupParkedEvent] = (),
        fencing: Fencing | None = None,
        settled_ahead: Sequence[SettledEvent] | None = None,
    ) -> None:
        """In one transaction: park ``parked`` (as ``park`` does), move the
        segment's checkpoint from ``expected_position`` to ``new_position``
        and add ``acknowledged`` and ``skipped`` to its counts. ``ConcurrencyConflict``, and
        nothing written, if the checkpoint is no longer at
        ``expected_position``, the group is gone, or ``fencing`` is given
        and its lease is no longer held by its member at its epoch, or
        ``new_position`` is past the log's end (a session that read a log
        since gone back must not make its positions the group's).
        The segment's settled events kept above its checkpoint
        (``settled_ahead``): those at or below ``new_position`` are
        forgotten (the checkpoint passed them, its counts took them); when
        ``settled_ahead`` is given (the holder gives the segment up), they
        are all replaced by it."""

    async def settled_ahead(self, name: str, segment: int) -> list[SettledEvent]:
        """The settled events kept above the segment's checkpoint (its last
        holder's, ``commit_segment``), by position: what its next holder
        does not deliver again. Empty if the group is gone."""

    async def park(self, name: str, events: Sequence[GroupParkedEvent]) -> None:
        """Keep ``events`` among the group's parked events (an event parked
        again replaces its earlier entry, ``replaying`` false). Nothing if
        the group is gone."""

    async def unpark(self, name: str, event_ids: Sequence[str]) -> None:
        """Remove these parked events, their replay acknowledged, and count
        each one removed as acknowledged in its segment's checkpoint, in one
        transaction: parking passed it unacknowledged, so it is counted
        once, and an id no longer parked (its ack came twice) not again."""

    async def repark(self, name: str, events: Sequence[GroupParkedEvent]) -> None:
        """Replayed events that failed again: set the attempts and reason of
        those of ``events`` still parked, no longer replaying. One gone
        meanwhile (dismissed, or its aggregate deleted or forgotten) stays
        gone."""
        ...

    async def dismiss_parked(self, name: str, event_ids: Sequence[str], *, skipped: bool = False) -> list[str]:
        """Delete these parked events, all or none, in one transaction,
        without counting them as acknowledged: each one deleted counts as
        dismissed in its segment's checkpoint (as skipped with ``skipped``:
        a consumer skipped their replays), once. The ids among them that are
        not parked in the group (every one, if there is no such group), and
        nothing deleted, if any is not; ``[]`` once all are deleted."""
        ...

    async def list_parked(
        self, name: str, *, after_position: int = 0, after: tuple[int, str] | None = None, limit: int = 100
    ) -> list[GroupParkedEvent]:
        """Up to ``limit`` parked events of the group, by position (event id
        within one): those after ``after`` (a position and an event id, where
        the last page ended), or without it those with positions greater
        than ``after_position`` (which passes over the rest of a split
        event's pieces, which share its position)."""

    async def find_parked(self, name: str, event_ids: Sequence[str]) -> list[GroupParkedEvent]:
        """The group's parked events among ``event_ids``, by position (event
        id within one): which of them a replay would find."""

    async def replay_parked(self, name: str, event_ids: Sequence[str]) -> int:
        """Mark these parked events (none given: all the group's) to be
        delivered again; return how many are marked now."""

    async def parked_to_replay(self, name: str, segments: Sequence[int], limit: int) -> list[GroupParkedEvent]:
        """Up to ``limit`` parked events marked for replay in these
        segments, by position."""


class StoreAdapter(
    Lifecycle,
    EventRecorder,
    LogReader,
    ClaimRegistry,
    SnapshotStore,
    ProjectionStore,
    AuditRecorder,
    KeyStore,
    Transfer,
    Retention,
    LeaseStore,
    GroupStore,
    Protocol,
):
    """A store that plays every role itself (each of Chronicle's adapters)."""


@dataclass(frozen=True, slots=True)
class Store:
    """The roles of one store, as the composition root hands them out. A
    wrapper returns a copy with the roles it changes replaced
    (``dataclasses.replace``); the others stay the adapter's own."""

    lifecycle: Lifecycle
    events: EventRecorder
    log: LogReader
    claims: ClaimRegistry
    snapshots: SnapshotStore
    projections: ProjectionStore
    audit: AuditRecorder
    keys: KeyStore
    transfer: Transfer
    retention: Retention
    leases: LeaseStore
    groups: GroupStore

    @classmethod
    def of(cls, adapter: StoreAdapter) -> Store:
        return cls(*[adapter] * len(fields(cls)))

    def replacing(
        self,
        *,
        events: EventRecorder | None = None,
        log: LogReader | None = None,
        claims: ClaimRegistry | None = None,
        snapshots: SnapshotStore | None = None,
        projections: ProjectionStore | None = None,
        audit: AuditRecorder | None = None,
    ) -> Store:
        """This store with some roles played by others (a wrapper's)."""
        return replace(
            self,
            events=events or self.events,
            log=log or self.log,
            claims=claims or self.claims,
            snapshots=snapshots or self.snapshots,
            projections=projections or self.projections,
            audit=audit or self.audit,
        )
