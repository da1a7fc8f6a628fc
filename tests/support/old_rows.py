"""Every kind of row a Chronicle database holds, as an earlier Chronicle left
it at each schema version, and whether the current store still reads it.

``rows_at(dialect, version)`` is what a database at that schema version
holds (``schema_versions.py`` writes it with that version's SQL): the rows
of every kind the schema could hold then, in the shapes the code of that
version wrote. ``unreadable(store, rows)`` then asks the current store,
through its public roles only, whether each kind still reads back as it was
written, and still behaves (a recorded refusal replays, a claim still
refuses another holder, sealed payloads open with the same master keys, new
appends go after the old positions); it returns one line per kind that
does not.

Kinds by the schema version that first holds them (the same numbers on both
stores so far; ``SINCE`` is per store so that a migration one store needs
and the other does not can shift them):

    1  events in the clear (one with metadata), command records (events
       appended, nothing changed, refused with a rejection), one snapshot
       per aggregate
    2  uniqueness claims (in the clear), a snapshot history per aggregate
    3  command records' audit columns, audit entries (refusals before a
       handler), data keys (live, wrapped by a retired master key, a
       forgotten aggregate's tombstone), sealed events and snapshots
    5  projection checkpoints and documents (in the clear, and sealed under
       a projection's key with hidden document keys)
    6  audit entries' outcome (an administrator's accepted action)
    7  claims stored as keyed hashes (encryption at rest)
    10 (SQLite 14) lease groups' members and leases: a live member, a
       lease it holds, one taken and given up, free ones
    11 (SQLite 8) events a projection parked, two at one position (an
       upcast event's parts); PostgreSQL's document keys in the "C"
       collation (listed by prefix)
    12 (SQLite 9) "forgetting_and_audit": read-model documents with
       subjects (forgetting one deletes them), audit entries' dry_run,
       peer and occurrences, and command records whose fingerprint and
       refusal are sealed under their aggregate's key
    13 (SQLite 10) subscription groups: a group with a filter, its segments'
       checkpoints (moved, with acknowledged counts, and at the start), its
       parked events (one to replay)
    14 (SQLite 11) command records' issued_at (when the command was made),
       and a refusal naming several fields (its violations in the
       rejection's JSON; sealed with its message under encryption at rest)
    16 (SQLite 12) a subscription group's incarnation (before: none, read
       as "")
    18 (SQLite 15) a lease member's console URL (before: none, read as "")
    19 (SQLite 16) a subscription group's consumer's last report (its
       replica, its events in flight, when it last answered)
    20 (SQLite 17) a subscription group's skipped and dismissed counts
       (before: none, read as 0)
    21 (SQLite 18) a subscription group's max_unanswered_timeouts (before:
       none, read as the default)
    22 (SQLite 19) when a group's consumer joined, with its report (before:
       none, read as not known)
    23 (SQLite 20) "document_due": a document's due time (a reaction's
       deadline; before: none)
    24 (SQLite 21) a lease member's version and schema version (before:
       none, read as "" and 0)
    26 (SQLite 22) a group segment's events settled above its checkpoint,
       kept when a segment is given up (before: none)
    27 (SQLite 23) a group's parked event's type (before: none, read as
       ""), and on SQLite when it was parked (before: none, read as 0);
       PostgreSQL kept that from its migration 13 (set by the server's
       now() before 27)
    28 (SQLite 24) the version of a projection's declaration its documents
       were built by, with its checkpoint (before: none, read as 1)
    29 (SQLite 25) a feature the servers turned on for good
       (service/store/features.py: tenants' keys of read models' documents);
       before: none, so on only once no server older than it is live
    (PostgreSQL's 25 and 30 hold no new kind: indexes only, of aggregate
    ids and of tenants' claims' scopes in code point order)

The sealed formats (payloads, wrapped keys, keyed hashes) are written here
with ``cryptography``'s primitives, not with ``service.store.encryption``: they
are what databases hold, so a change to the code that stopped reading them
must fail these tests rather than move the rows along with it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, is_dataclass, replace
from dataclasses import fields as dataclass_fields

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from service.errors import AggregateForgotten, CommandAlreadyRecorded, NotUnique, rebuild_rejection
from service.store.base import AuditQuery, ProjectionStore, SnapshotStore, Store, StoreAdapter
from service.store.encrypted import encrypted
from service.store.encryption import Keyring, MasterKeys
from service.store.features import TENANT_DOCUMENT_KEYS, ClusterFeatures
from service.store.grouping import (
    DEFAULT_UNANSWERED_TIMEOUTS,
    ConsumerReport,
    GroupParkedEvent,
    GroupSpec,
    GroupState,
    SegmentCheckpoint,
    SettledEvent,
    consumer_group,
)
from service.store.leasing import Lease, LeaseMember
from service.store.records import (
    ACCEPTED,
    REFUSED,
    AggregateHead,
    AuditEntry,
    ClaimChange,
    CommandRecord,
    DataKey,
    DocumentRange,
    DocumentWrite,
    HeldClaim,
    LogFilter,
    NewEvent,
    ParkedEvent,
    RecordedEvent,
    Rejection,
    Snapshot,
    StoredDocument,
)

# The schema version that first holds each kind of row, per store.
_FIRST = {
    "claims": 2,
    "snapshot_history": 2,
    "audit": 3,
    "encryption": 3,
    "projections": 5,
    "audit_outcome": 6,
    "hidden_claims": 7,
    "leases": 10,
    "parked_events": 11,
    "groups": 13,
    "issued_at": 14,
}
SINCE: dict[str, dict[str, int]] = {
    "postgres": {**_FIRST, "forgetting_and_audit": 12},
    # SQLite's migrations 8 and later are PostgreSQL's 11 and later; it
    # keeps leases from its migration 14 (before, each process held every
    # lease itself and wrote none).
    "sqlite": {
        **_FIRST,
        "leases": 14,
        "parked_events": 8,
        "forgetting_and_audit": 9,
        "groups": 10,
        "issued_at": 11,
    },
}
# A subscription group's incarnation: PostgreSQL's migration 16, SQLite's 12.
SINCE["postgres"]["incarnation"] = 16
SINCE["sqlite"]["incarnation"] = 12
# A lease member's console URL: PostgreSQL's migration 18, SQLite's 15.
SINCE["postgres"]["member_console"] = 18
SINCE["sqlite"]["member_console"] = 15
# A group consumer's last report: PostgreSQL's migration 19, SQLite's 16.
SINCE["postgres"]["consumer_reports"] = 19
SINCE["sqlite"]["consumer_reports"] = 16
# A group's skipped and dismissed counts: PostgreSQL's migration 20, SQLite's 17.
SINCE["postgres"]["group_counts"] = 20
SINCE["sqlite"]["group_counts"] = 17
# A group's max_unanswered_timeouts: PostgreSQL's migration 21, SQLite's 18.
SINCE["postgres"]["unanswered"] = 21
SINCE["sqlite"]["unanswered"] = 18
# When a group consumer joined, kept with its report: PostgreSQL's migration 22, SQLite's 19.
SINCE["postgres"]["consumer_connected"] = 22
SINCE["sqlite"]["consumer_connected"] = 19
# A document's due time (a reaction's deadline): PostgreSQL's migration 23, SQLite's 20.
SINCE["postgres"]["document_due"] = 23
SINCE["sqlite"]["document_due"] = 20
# A lease member's Chronicle version and schema version: PostgreSQL's migration 24, SQLite's 21.
SINCE["postgres"]["member_version"] = 24
SINCE["sqlite"]["member_version"] = 21
# A group segment's events settled above its checkpoint: PostgreSQL's migration 26, SQLite's 22.
SINCE["postgres"]["settled_ahead"] = 26
SINCE["sqlite"]["settled_ahead"] = 22
# A group's parked event's type: PostgreSQL's migration 27, SQLite's 23;
# when it was parked: PostgreSQL's 13 (its parked_at), SQLite's 23.
SINCE["postgres"]["cluster_features"] = 29
SINCE["sqlite"]["cluster_features"] = 25
SINCE["postgres"]["parked_type"] = 27
SINCE["sqlite"]["parked_type"] = 23
SINCE["postgres"]["parked_time"] = 13
SINCE["sqlite"]["parked_time"] = 23
# When the group's parked events were parked (microseconds since the epoch).
GROUP_PARKED_AT_US = 1_767_225_600_123_456
# A projection's version with its checkpoint: PostgreSQL's migration 28, SQLite's 24.
SINCE["postgres"]["projection_version"] = 28
SINCE["sqlite"]["projection_version"] = 24
# PostgreSQL's JSON copy of payloads (--postgres-json-events, migration 15); SQLite has none.
SINCE["postgres"]["payload_json"] = 15
SINCE["sqlite"]["payload_json"] = 1 << 30

# Master keys: "current" wraps new data keys; "retired" wrapped some in the
# past and is still configured, so they open until rewrapped.
CURRENT_MASTER_KEY = hashlib.sha256(b"chronicle test master key: current").digest()
RETIRED_MASTER_KEY = hashlib.sha256(b"chronicle test master key: retired").digest()
MASTER_KEYS = MasterKeys({"current": CURRENT_MASTER_KEY, "retired": RETIRED_MASTER_KEY}, "current")

T0 = 1_767_225_600_000_000  # 2026-01-01, microseconds since the epoch
EMAIL = "users.email"
HIDDEN_CLAIM_MARK = "\x1f"
PROJECTION_KEY_PREFIX = "\x1fprojection:"
CLAIMS_KEY_PREFIX = "\x1fclaims:"
LEASE_GROUP = "partitions/4"
LEASE_NAMES = ("0", "1", "2", "3")
# Long enough that the member is still live when a test reads the rows back
# from a database filled earlier in the run.
LEASE_SECONDS = 86_400.0
GROUP_SPEC = GroupSpec(
    name="billing",
    log_filter=LogFilter(aggregate_types=frozenset({"Account"}), event_types=frozenset({"bank.v1.MoneyDeposited"})),
    start_position=0,
    segments=4,
    max_attempts=3,
    retry_backoff_ms=250,
    max_retry_backoff_ms=4000,
    ack_timeout_ms=1500,
)
GROUP_INCARNATION = "5b0c1c1de5f04b9cbf4d2e0a3f6c9d21"
GROUP_REPORT = ConsumerReport(replica_id="member-old", replica_address="10.0.0.1:50051", in_flight=7, answered_ago=2.5)
# A parked event that write_through dismisses, to leave a dismissed count.
DISMISSED_TEMPLATE = GroupParkedEvent(
    event_id="", position=1, segment=0, aggregate_id="acc-1", attempts=3, reason="given up", replaying=False
)
# The filter as the stores keep it (GroupSpec.filter_json).
GROUP_FILTER = '{"aggregate_types":["Account"],"event_types":["bank.v1.MoneyDeposited"],"origin":null}'


# -- the sealed formats, as databases hold them ----------------------------------


def _data_key(name: str) -> bytes:
    return hashlib.sha256(b"chronicle test data key: " + name.encode()).digest()


def _seal(key: bytes, plaintext: bytes, context: bytes) -> bytes:
    """``0x00 'C' '1' || nonce || AES-256-GCM(plaintext, associated data = context)``,
    with a nonce derived from the context so that the rows are the same each run."""
    nonce = hashlib.sha256(b"nonce\0" + context).digest()[:12]
    return b"\x00C1" + nonce + AESGCM(key).encrypt(nonce, plaintext, context)


def _event_context(aggregate_id: str, event_id: str) -> bytes:
    return b"event\0" + aggregate_id.encode() + b"\0" + event_id.encode()


def _snapshot_context(aggregate_id: str, version: int) -> bytes:
    return b"snapshot\0" + aggregate_id.encode() + b"\0" + str(version).encode()


def _document_context(projection: str, key: str) -> bytes:
    return b"document\0" + projection.encode() + b"\0" + key.encode()


def _fingerprint_context(aggregate_id: str, command_id: str) -> bytes:
    return b"fingerprint\0" + aggregate_id.encode() + b"\0" + command_id.encode()


def _refusal_context(aggregate_id: str, command_id: str) -> bytes:
    return b"refusal\0" + aggregate_id.encode() + b"\0" + command_id.encode()


def _sealed_text(key: bytes, text: str, context: bytes) -> str:
    """A sealed text in a text column: a mark, then the sealed bytes in base64."""
    return "\x1fsealed:" + base64.b64encode(_seal(key, text.encode(), context)).decode()


def _keyed_hash(key: bytes, purpose: bytes, namespace: str, value: str) -> str:
    secret = AESGCM(key).encrypt(b"\0" * 12, purpose, namespace.encode())
    return hmac.new(secret, value.encode(), hashlib.sha256).hexdigest()


def _wrapped(key_id: str, master_key_id: str = "current") -> DataKey:
    return DataKey(key_id, master_key_id, aes_key_wrap(MASTER_KEYS.keys[master_key_id], _data_key(key_id)))


# -- what a database at a version holds ------------------------------------------


@dataclass(frozen=True)
class OldEvent:
    """An event as stored (``stored.payload`` sealed or clear) and the
    payload the store gives back (``redacted``: its aggregate was forgotten)."""

    stored: RecordedEvent
    payload: bytes
    redacted: bool = False
    json: object = None  # PostgreSQL's JSON copy of the payload (payload_json), if kept

    @property
    def read_back(self) -> RecordedEvent:
        return replace(self.stored, payload=b"" if self.redacted else self.payload, redacted=self.redacted)


@dataclass(frozen=True)
class OldSnapshot:
    stored: Snapshot
    state: bytes

    @property
    def read_back(self) -> Snapshot:
        return replace(self.stored, state=self.state)


@dataclass(frozen=True)
class OldDocument:
    """A projection's document as stored (its key hidden and data sealed
    under the projection's key, or both in the clear) and as read back."""

    projection: str
    stored: StoredDocument
    key: str
    data: bytes
    sealed: bool
    subjects: tuple[str, ...] = ()
    due_us: int | None = None  # a reaction's deadline (since "document_due")


@dataclass(frozen=True)
class SealedCommand:
    """A command record as stored with encryption at rest (its fingerprint
    and refusal sealed under its aggregate's key) and as read back."""

    stored: CommandRecord
    read_back: CommandRecord


@dataclass(frozen=True)
class OldClaim:
    stored: HeldClaim
    value: str  # the value claimed (``stored.value`` is its keyed hash when hidden)
    hidden: bool


@dataclass
class OldRows:
    """The rows a database at ``version`` of ``dialect``'s schema holds, as
    the current store must read them back once it has migrated it."""

    dialect: str
    version: int
    events: list[OldEvent] = field(default_factory=list)
    # As read back: the audit columns are empty (and, on SQLite, the time 0)
    # when written before the schema had them.
    commands: list[CommandRecord] = field(default_factory=list)
    snapshots: list[OldSnapshot] = field(default_factory=list)
    claims: list[OldClaim] = field(default_factory=list)
    audit_entries: list[AuditEntry] = field(default_factory=list)  # the audit log's own table
    data_keys: list[DataKey] = field(default_factory=list)
    forgotten: set[str] = field(default_factory=set)
    checkpoints: dict[str, int] = field(default_factory=dict)
    # The declaration's version a projection's documents were built by, where not 1.
    projection_versions: dict[str, int] = field(default_factory=dict)
    documents: list[OldDocument] = field(default_factory=list)
    sealed_commands: list[SealedCommand] = field(default_factory=list)
    parked: list[ParkedEvent] = field(default_factory=list)  # of the projection "balances"
    lease_members: list[LeaseMember] = field(default_factory=list)  # of LEASE_GROUP, live
    leases: list[Lease] = field(default_factory=list)  # of LEASE_GROUP, by name
    groups: list[GroupState] = field(default_factory=list)  # by name (consumers: none)
    group_parked: list[GroupParkedEvent] = field(default_factory=list)  # of GROUP_SPEC, by position
    # Of GROUP_SPEC's segment 1 (its checkpoint at 2), by position.
    settled_ahead: list[SettledEvent] = field(default_factory=list)
    # Of GROUP_SPEC, by member id (its consumer is no live member: joins when read back).
    consumer_reports: dict[str, ConsumerReport] = field(default_factory=dict)
    features: list[str] = field(default_factory=list)  # turned on (cluster_features)

    def holds(self, kind: str) -> bool:
        return self.version >= SINCE[self.dialect][kind]

    @property
    def last_position(self) -> int:
        return self.events[-1].stored.position

    def events_of(self, aggregate_id: str) -> list[OldEvent]:
        return [e for e in self.events if e.stored.aggregate_id == aggregate_id]

    def aggregates(self) -> list[str]:
        return list(dict.fromkeys(e.stored.aggregate_id for e in self.events))

    # -- building --

    def add_event(
        self,
        aggregate_id: str,
        event_type: str,
        payload: bytes,
        *,
        command_id: str,
        sealed_by: str | None = None,
        metadata: dict[str, str] | None = None,
        json: object = None,
    ) -> None:
        position = len(self.events) + 1
        version = len(self.events_of(aggregate_id)) + 1
        event_id = f"00000000-0000-4000-8000-{position:012d}"
        stored = payload
        if sealed_by is not None:
            stored = _seal(_data_key(sealed_by), payload, _event_context(aggregate_id, event_id))
        event = RecordedEvent(
            event_id=event_id,
            aggregate_id=aggregate_id,
            aggregate_type=aggregate_id.split("-")[0].title(),
            version=version,
            position=position,
            event_type=event_type,
            schema_version=1,
            payload=stored,
            timestamp_us=T0 + position * 1_000,
            command_id=command_id,
            user_id="ann",
            origin="web",
            correlation_id=f"corr-{command_id}",
            causation_id=command_id,
            metadata=metadata or {},
        )
        kept = json if self.holds("payload_json") else None
        self.events.append(OldEvent(event, payload, redacted=aggregate_id in self.forgotten, json=kept))

    def json_of(self, event_type: str, payload: bytes) -> object:
        """The JSON copy of the event with this stored payload, as the store
        is told to keep it (``PostgresStore(json_of=…)``)."""
        return next(
            (e.json for e in self.events if e.stored.event_type == event_type and e.stored.payload == payload), None
        )

    def add_command(
        self, command_id: str, aggregate_id: str, first: int, last: int, *, rejection: Rejection | None = None
    ) -> None:
        audited = self.holds("audit")
        # PostgreSQL's commands had their recorded_at from the first schema;
        # SQLite's came with the audit columns.
        timed = audited or self.dialect == "postgres"
        self.commands.append(
            CommandRecord(
                command_id=command_id,
                aggregate_id=aggregate_id,
                command_type="bank.v1.Do",
                fingerprint=hashlib.sha256(command_id.encode()).digest(),
                first_version=first,
                last_version=last,
                rejection=rejection,
                principal="alice" if audited else "",
                user_id="ann" if audited else "",
                origin="web" if audited else "",
                recorded_at_us=T0 + 100_000 + len(self.commands) * 1_000 if timed else 0,
                issued_at_us=T0 + 90_000 + len(self.commands) * 1_000 if self.holds("issued_at") else 0,
            )
        )

    def add_snapshot(self, aggregate_id: str, version: int, state: bytes, *, sealed_by: str | None = None) -> None:
        stored = (
            state if sealed_by is None else _seal(_data_key(sealed_by), state, _snapshot_context(aggregate_id, version))
        )
        snapshot = Snapshot(aggregate_id, aggregate_id.split("-")[0].title(), version, "bank.v1.State", 1, stored)
        self.snapshots.append(OldSnapshot(snapshot, state))

    def add_document(
        self,
        projection: str,
        key: str,
        data: bytes,
        *,
        sealed: bool,
        subjects: tuple[str, ...] = (),
        due_us: int | None = None,
    ) -> None:
        if sealed:
            projection_key = _data_key(PROJECTION_KEY_PREFIX + projection)
            stored_key = "k:" + _keyed_hash(projection_key, b"chronicle document keys", projection, key)
            stored = _seal(projection_key, data, _document_context(projection, key))
        else:
            stored_key, stored = key, data
        self.documents.append(
            OldDocument(
                projection, StoredDocument(stored_key, "bank.v1.Summary", stored), key, data, sealed, subjects, due_us
            )
        )

    def add_sealed_command(self, command_id: str, aggregate_id: str, version: int, rejection: Rejection) -> None:
        """A refusal recorded at ``version`` by a server with encryption at rest."""
        key = _data_key(aggregate_id)
        read_back = CommandRecord(
            command_id=command_id,
            aggregate_id=aggregate_id,
            command_type="bank.v1.Do",
            fingerprint=hashlib.sha256(command_id.encode()).digest(),
            first_version=version + 1,
            last_version=version,
            rejection=rejection,
            principal="alice",
            user_id="ann",
            origin="web",
            recorded_at_us=T0 + 400_000 + len(self.sealed_commands) * 1_000,
            issued_at_us=T0 + 390_000 + len(self.sealed_commands) * 1_000 if self.holds("issued_at") else 0,
        )
        fields: dict[str, object] = {"message": rejection.message, "metadata": dict(rejection.metadata)}
        if rejection.violations:  # sealed with the message (since PostgreSQL 14 / SQLite 11)
            fields["violations"] = [list(v) for v in rejection.violations]
        detail = json.dumps(fields, separators=(",", ":"))
        stored = replace(
            read_back,
            fingerprint=_seal(key, read_back.fingerprint, _fingerprint_context(aggregate_id, command_id)),
            rejection=Rejection(
                rejection.kind,
                rejection.reason,
                _sealed_text(key, detail, _refusal_context(aggregate_id, command_id)),
            ),
        )
        self.sealed_commands.append(SealedCommand(stored, read_back))


def rows_at(dialect: str, version: int) -> OldRows:
    """What a database at schema ``version`` holds: one or more rows of every
    kind that schema could hold, in the shapes its code wrote."""
    rows = OldRows(dialect, version)
    refusal = Rejection("ValidationError", "INSUFFICIENT_FUNDS", "the balance is 5", {"balance": "5"})

    rows.add_event(
        "account-plain",
        "bank.v1.Opened",
        b"\x0a\x03ann",
        command_id="c-open",
        metadata={"tenant": "t-1"},
        json={"owner": "ann"},
    )
    rows.add_event("account-plain", "bank.v1.Deposited", b"\x08\x0a", command_id="c-deposit", json={"amount": "10"})
    rows.add_event("account-plain", "bank.v1.Deposited", b"\x08\x14", command_id="c-deposit", json={"amount": "20"})
    rows.add_command("c-open", "account-plain", 1, 1)
    rows.add_command("c-deposit", "account-plain", 2, 3)
    rows.add_command("c-nothing", "account-plain", 4, 3)
    rows.add_command("c-refused", "account-plain", 4, 3, rejection=refusal)
    if rows.holds("snapshot_history"):
        rows.add_snapshot("account-plain", 2, b"\x08\x0a")
    rows.add_snapshot("account-plain", 3, b"\x08\x1e")

    if rows.holds("claims"):
        rows.add_event("user-ann", "users.v1.Registered", b"\x0a\x0fann@example.com", command_id="c-register-ann")
        rows.add_command("c-register-ann", "user-ann", 1, 1)
        rows.claims.append(OldClaim(HeldClaim(EMAIL, "ann@example.com", "user-ann"), "ann@example.com", hidden=False))

    if rows.holds("encryption"):
        rows.data_keys += [_wrapped("account-sealed"), _wrapped("account-rotating", "retired")]
        rows.data_keys.append(DataKey("account-forgotten", None, None))
        rows.forgotten.add("account-forgotten")
        rows.add_event(
            "account-sealed", "bank.v1.Opened", b"\x0a\x03bob", command_id="c-sealed", sealed_by="account-sealed"
        )
        rows.add_event(
            "account-sealed", "bank.v1.Deposited", b"\x08\x07", command_id="c-sealed", sealed_by="account-sealed"
        )
        rows.add_command("c-sealed", "account-sealed", 1, 2)
        rows.add_snapshot("account-sealed", 2, b"\x08\x07", sealed_by="account-sealed")
        rows.add_event(
            "account-rotating", "bank.v1.Opened", b"\x0a\x03cat", command_id="c-rotating", sealed_by="account-rotating"
        )
        rows.add_command("c-rotating", "account-rotating", 1, 1)
        rows.add_event(
            "account-forgotten",
            "bank.v1.Opened",
            b"\x0a\x03dan",
            command_id="c-forgotten",
            sealed_by="account-forgotten",
        )
        rows.add_command("c-forgotten", "account-forgotten", 1, 1)
        rows.audit_entries.append(
            AuditEntry(
                recorded_at_us=T0 + 500_000,
                command_id="c-denied",
                command_type="bank.v1.Withdraw",
                aggregate_id="account-plain",
                principal="mallory",
                user_id="",
                origin="web",
                outcome=REFUSED,
                reason="PERMISSION_DENIED",
                message="mallory may not withdraw",
            )
        )

    if rows.holds("projections"):
        rows.checkpoints["balances"] = 3
        rows.add_document("balances", "account-plain", b"\x08\x1e", sealed=False)
        rows.checkpoints["owners"] = rows.last_position
        rows.data_keys.append(_wrapped(PROJECTION_KEY_PREFIX + "owners"))
        rows.add_document("owners", "owner:bob", b"\x0a\x0eaccount-sealed", sealed=True)
        if rows.holds("projection_version"):
            rows.projection_versions["owners"] = 2

    if rows.holds("cluster_features"):
        rows.features.append(TENANT_DOCUMENT_KEYS)

    if rows.holds("parked_events"):
        rows.parked += [
            ParkedEvent("balances", 2, "event-2", "bank.v1.Deposited", "account-plain", "PROJECTION_FAILED: no", 3, T0),
            ParkedEvent("balances", 3, "event-3a", "bank.v1.Deposited", "account-plain", "ValueError: x", 1, T0 + 1),
            ParkedEvent("balances", 3, "event-3b", "bank.v1.Deposited", "account-plain", "ValueError: y", 1, T0 + 2),
        ]

    if rows.holds("audit_outcome"):
        rows.audit_entries.append(
            AuditEntry(
                recorded_at_us=T0 + 600_000,
                command_id="",
                command_type="ForgetAggregate",
                aggregate_id="account-forgotten",
                principal="admin",
                user_id="",
                origin="cli",
                outcome=ACCEPTED,
            )
        )

    if rows.holds("document_due"):
        rows.add_document(
            "balances",
            "deadline:t-1:late",
            b"\x08\x07",
            sealed=False,
            subjects=("account-subject",),
            due_us=T0 + 60_000_000,
        )

    if rows.holds("forgetting_and_audit"):
        rows.add_sealed_command("c-sealed-refused", "account-sealed", 2, refusal)
        rows.data_keys.append(_wrapped("account-subject"))
        rows.add_document("owners", "owner:eve", b"\x0a\x0faccount-subject", sealed=True, subjects=("account-subject",))
        rows.add_document("balances", "eve", b"\x08\x2a", sealed=False, subjects=("account-plain", "account-subject"))
        rows.audit_entries.append(
            AuditEntry(
                recorded_at_us=T0 + 700_000,
                command_id="c-dry",
                command_type="bank.v1.Withdraw",
                aggregate_id="account-plain",
                principal="",
                user_id="",
                origin="web",
                outcome=REFUSED,
                reason="NO_CREDENTIALS",
                message="credentials are required",
                dry_run=True,
                peer="ipv4:10.0.0.7:51544",
                occurrences=3,
            )
        )

    if rows.holds("hidden_claims"):
        claims_key_id = CLAIMS_KEY_PREFIX + EMAIL
        rows.data_keys += [_wrapped(claims_key_id), _wrapped("user-bob")]
        hidden = HIDDEN_CLAIM_MARK + _keyed_hash(_data_key(claims_key_id), b"chronicle claim values", EMAIL, "bob@")
        rows.add_event(
            "user-bob", "users.v1.Registered", b"\x0a\x04bob@", command_id="c-register-bob", sealed_by="user-bob"
        )
        rows.add_command("c-register-bob", "user-bob", 1, 1)
        rows.claims.append(OldClaim(HeldClaim(EMAIL, hidden, "user-bob"), "bob@", hidden=True))

    if rows.holds("issued_at"):
        fields = Rejection(
            "InvalidArgumentError",
            "INVALID_TRANSFER",
            "the transfer is not well formed",
            violations=(("amount", "must be positive"), ("target_account_id", "is required")),
        )
        rows.add_command("c-refused-fields", "account-plain", 4, 3, rejection=fields)
        rows.add_sealed_command("c-sealed-fields", "account-sealed", 2, fields)

    if rows.holds("leases"):
        console = "https://10.0.0.1:8443" if rows.holds("member_console") else ""
        versioned = rows.holds("member_version")
        rows.lease_members.append(
            LeaseMember(
                "member-old",
                "10.0.0.1:50051",
                console,
                version="0.2.0 (commit 0123456789ab)" if versioned else "",
                schema_version=rows.version if versioned else 0,
            )
        )
        rows.leases += [
            Lease("0", "member-old", 1),  # held
            Lease("1", None, 2),  # taken, then given up
            Lease("2", None, 0),  # never taken
            Lease("3", None, 0),
        ]

    if rows.holds("groups"):
        rows.groups.append(
            GroupState(
                spec=replace(
                    GROUP_SPEC,
                    incarnation=GROUP_INCARNATION if rows.holds("incarnation") else "",
                    max_unanswered_timeouts=7 if rows.holds("unanswered") else DEFAULT_UNANSWERED_TIMEOUTS,
                ),
                checkpoints=(
                    SegmentCheckpoint(0, 3, 2, *((1, 1) if rows.holds("group_counts") else ())),
                    SegmentCheckpoint(1, 2, 1),
                    SegmentCheckpoint(2, 0, 0),
                    SegmentCheckpoint(3, 0, 0),
                ),
                parked=2,
            )
        )
        parked_type = "bank.v1.MoneyDeposited" if rows.holds("parked_type") else ""
        parked_at_us = GROUP_PARKED_AT_US if rows.holds("parked_time") else 0
        rows.group_parked += [
            GroupParkedEvent(
                event_id="p-1",
                position=2,
                segment=1,
                aggregate_id="acc-1",
                attempts=3,
                reason="boom",
                replaying=False,
                event_type=parked_type,
                parked_at_us=parked_at_us,
            ),
            GroupParkedEvent(
                event_id="p-2",
                position=3,
                segment=0,
                aggregate_id="acc-2",
                attempts=3,
                reason="bad",
                replaying=True,
                event_type=parked_type,
                parked_at_us=parked_at_us,
            ),
        ]
    if rows.holds("settled_ahead"):
        rows.settled_ahead += [SettledEvent("s-1", 4, "acked"), SettledEvent("s-2", 5, "skipped")]
    if rows.holds("consumer_reports"):
        connected = 60.0 if rows.holds("consumer_connected") else None
        rows.consumer_reports["worker-old#1"] = replace(GROUP_REPORT, connected_ago=connected)
    return rows


# -- writing the same rows through the current store -------------------------------


async def write_through(store: StoreAdapter, rows: OldRows) -> None:
    """Write ``rows`` (of the latest version) with the current store's own
    methods, the payloads, keys and claims already in their stored form: what
    ``schema_versions.py`` writes in SQL at the latest version must be what
    this leaves in the database (``test_migrations_over_data.py`` compares)."""
    for key in rows.data_keys:
        await store.create_data_key(_wrapped(key.aggregate_id) if key.wrapped is None else key)
        if key.wrapped is None:
            await store.forget_data_key(key.aggregate_id)
    for command in rows.commands:
        events = [e.stored for e in rows.events if e.stored.command_id == command.command_id]
        claims = [
            ClaimChange(c.stored.scope, c.stored.value)
            for c in rows.claims
            if c.stored.aggregate_id == command.aggregate_id
        ]
        new = [
            NewEvent(
                event_id=e.event_id,
                aggregate_type=e.aggregate_type,
                event_type=e.event_type,
                schema_version=e.schema_version,
                payload=e.payload,
                timestamp_us=e.timestamp_us,
                command_id=e.command_id,
                user_id=e.user_id,
                origin=e.origin,
                correlation_id=e.correlation_id,
                causation_id=e.causation_id,
                metadata=e.metadata,
            )
            for e in events
        ]
        await store.append(command.aggregate_id, new, command.first_version - 1, commands=[command], claims=claims)
    for sealed in rows.sealed_commands:
        stored = sealed.stored
        await store.append(stored.aggregate_id, [], stored.last_version, commands=[stored])
    for snapshot in rows.snapshots:
        await store.save_snapshot(snapshot.stored)
    for entry in rows.audit_entries:
        await store.record_audit_entry(entry)
    for name, position in rows.checkpoints.items():
        writes = [
            DocumentWrite(d.stored.key, d.stored.type_name, d.stored.data, d.subjects, d.due_us)
            for d in rows.documents
            if d.projection == name
        ]
        parked = [p for p in rows.parked if p.projection == name]
        if name in rows.projection_versions:  # its first run recorded it
            await store.start_projection_version(name, rows.projection_versions[name])
        await store.commit_projection(name, expected_position=0, new_position=position, writes=writes, parked=parked)
    for member in rows.lease_members:
        await store.renew_leases(LEASE_GROUP, member, LEASE_NAMES, LEASE_SECONDS)
        held = [lease.name for lease in rows.leases if lease.epoch > 0]
        await store.change_leases(LEASE_GROUP, member.member_id, release=(), acquire=held, ttl=LEASE_SECONDS)
        given_up = [lease.name for lease in rows.leases if lease.owner is None and lease.epoch > 0]
        await store.change_leases(LEASE_GROUP, member.member_id, release=given_up, acquire=(), ttl=LEASE_SECONDS)
    for group in rows.groups:
        await store.create_group(group.spec)
        for checkpoint in group.checkpoints:
            if checkpoint.position != group.spec.start_position:
                await store.commit_segment(
                    group.spec.name,
                    checkpoint.segment,
                    expected_position=group.spec.start_position,
                    new_position=checkpoint.position,
                    acknowledged=checkpoint.acknowledged,
                    skipped=checkpoint.skipped,
                    parked=[p for p in rows.group_parked if p.segment == checkpoint.segment],
                    settled_ahead=rows.settled_ahead if checkpoint.segment == 1 and rows.settled_ahead else None,
                )
            # A dismissed count is what dismissing parked events leaves.
            dismissed = [
                replace(DISMISSED_TEMPLATE, event_id=f"dismissed-{checkpoint.segment}-{n}", segment=checkpoint.segment)
                for n in range(checkpoint.dismissed)
            ]
            await store.park(group.spec.name, dismissed)
            await store.dismiss_parked(group.spec.name, [p.event_id for p in dismissed])
        await store.replay_parked(group.spec.name, [p.event_id for p in rows.group_parked if p.replaying])
        for member_id, report in rows.consumer_reports.items():
            await store.report_consumer(group.spec.name, member_id, report)
    for feature in rows.features:
        assert isinstance(store, ClusterFeatures)
        assert await store.enable_feature(feature)


# -- reading them back through the current store ------------------------------------


class Mismatch(Exception):
    """A kind of row that no longer reads back as it was written."""


def _newest_schema(dialect: str) -> int:
    """The newest schema version the current code of ``dialect``'s store knows."""
    from service.store.sql_common import known_migrations

    return known_migrations(f"service.store.{dialect}")[-1].version


def same(what: str, got: object, expected: object) -> None:
    if got != expected:
        raise Mismatch(f"{what}: {_difference(got, expected)}")


def _difference(got: object, expected: object) -> str:
    """Where ``got`` and ``expected`` differ: the first differing item of two
    lists, the differing fields of two records, or both whole."""
    if isinstance(got, list) and isinstance(expected, list):
        for index, (one, other) in enumerate(zip(got, expected, strict=False)):
            if one != other:
                return f"item {index}: {_difference(one, other)}"
        return f"{len(got)} items, expected {len(expected)}: {got[len(expected) :] or expected[len(got) :]!r}"
    if is_dataclass(got) and type(got) is type(expected):
        fields_ = [f.name for f in dataclass_fields(got) if getattr(got, f.name) != getattr(expected, f.name)]
        named = ", ".join(f"{n}={getattr(got, n)!r} (expected {getattr(expected, n)!r})" for n in fields_)
        return f"{type(got).__name__} with {named}"
    return f"got {got!r}, expected {expected!r}"


async def unreadable(store: StoreAdapter, rows: OldRows) -> dict[str, str]:
    """Each kind of ``rows`` that the current ``store`` (opened on the
    migrated database) does not give back as written, or that no longer
    behaves as it did, with what went wrong; empty when every kind survived.
    Reads first, then writes that depend on the old rows (the last checks
    change the database)."""
    roles = encrypted(Store.of(store), Keyring(store, MASTER_KEYS))
    failures: dict[str, str] = {}

    async def check(kind: str, body: Callable[[], Awaitable[None]]) -> None:
        try:
            await body()
        except Exception as error:
            detail = str(error) if isinstance(error, Mismatch) else traceback.format_exc(limit=-3)
            failures[kind] = detail

    async def events() -> None:
        for aggregate_id in rows.aggregates():
            expected = [e.read_back for e in rows.events_of(aggregate_id)]
            same(f"events of {aggregate_id}", await roles.events.read_aggregate(aggregate_id), expected)
            head = await roles.events.head(aggregate_id)
            same(f"head of {aggregate_id}", head, AggregateHead(expected[-1].aggregate_type, expected[-1].version))
        second = rows.events[1].stored
        same(
            "version as of the second event's time",
            await roles.events.version_at(second.aggregate_id, second.timestamp_us),
            2,
        )

    async def log() -> None:
        page = await roles.log.read_log(0, LogFilter(), 1_000)
        same("the log", list(page.events), [e.read_back for e in rows.events])
        same("the log's head", (page.scanned_to, await roles.log.log_head()), (rows.last_position, rows.last_position))
        sealed_only = await roles.log.read_log(0, LogFilter(aggregate_types=frozenset({"User"})), 1_000)
        same(
            "the log by aggregate type",
            [e.aggregate_id for e in sealed_only.events],
            [a for a in rows.aggregates() if a.startswith("user-")],
        )

    async def command_records() -> None:
        for command in rows.commands:
            same(f"command record {command.command_id}", await roles.events.find_command(command.command_id), command)
        for sealed in rows.sealed_commands:
            command_id = sealed.stored.command_id
            same(f"sealed command record {command_id}", await roles.events.find_command(command_id), sealed.read_back)
            same(f"sealed command record {command_id} as stored", await store.find_command(command_id), sealed.stored)

    async def snapshots() -> None:
        by_aggregate: dict[str, list[OldSnapshot]] = {}
        for snapshot in rows.snapshots:
            by_aggregate.setdefault(snapshot.stored.aggregate_id, []).append(snapshot)
        for aggregate_id, kept in by_aggregate.items():
            same(
                f"latest snapshot of {aggregate_id}",
                await roles.snapshots.load_snapshot(aggregate_id),
                kept[-1].read_back,
            )
            for snapshot in kept:
                loaded = await roles.snapshots.load_snapshot(aggregate_id, at_most=snapshot.stored.version)
                same(f"snapshot of {aggregate_id} at {snapshot.stored.version}", loaded, snapshot.read_back)
            same(
                f"snapshot of {aggregate_id} below the oldest",
                await roles.snapshots.load_snapshot(aggregate_id, at_most=kept[0].stored.version - 1),
                None,
            )

    async def claims_in_clear() -> None:
        # Read under the adapter: the encrypted roles hide clear claims first.
        for claim in rows.claims:
            same(
                f"holder of {claim.stored.value!r} as stored",
                await store.claim_owner(EMAIL, claim.stored.value),
                claim.stored.aggregate_id,
            )
        clear = [c.stored for c in rows.claims if not c.hidden]
        same("claims in the clear", await store.claims_in_clear(100), clear)

    async def data_keys() -> None:
        for key in rows.data_keys:
            same(f"data key of {key.aggregate_id!r}", await store.load_data_key(key.aggregate_id), key)
        retired = [k for k in rows.data_keys if k.master_key_id == "retired"]
        same("keys to rewrap", await store.data_keys_to_rewrap("current", 100), retired)

    async def projections() -> None:
        for name, position in rows.checkpoints.items():
            same(f"checkpoint of {name}", await roles.projections.projection_position(name), position)
            same(
                f"version of {name}",
                await roles.projections.projection_version(name),
                rows.projection_versions.get(name, 1),
            )
        for document in rows.documents:
            raw = await store.load_document(document.projection, document.stored.key)
            same(f"stored document {document.key} of {document.projection}", raw, document.stored)
            readable: ProjectionStore = roles.projections if document.sealed else store
            loaded = await readable.load_document(document.projection, document.key)
            same(
                f"document {document.key} of {document.projection}",
                loaded,
                StoredDocument(document.key, document.stored.type_name, document.data),
            )
        for name in rows.checkpoints:
            due = [
                d.stored
                for d in sorted(rows.documents, key=lambda d: d.due_us or 0)
                if d.projection == name and d.due_us
            ]
            same(f"documents of {name} due", await store.due_documents(name, until_us=2**62, limit=100), due)
        for document in rows.documents:
            if not document.sealed:  # sealed ones' keys are hashes: they are not listed
                listed = await store.list_documents(document.projection, DocumentRange(prefix=document.key[:3]))
                same(f"documents of {document.projection} listed by prefix", listed, [document.stored])
        for name in rows.checkpoints:
            parked = [p for p in rows.parked if p.projection == name]
            same(f"parked events of {name}", await store.parked_events(name), parked)
            same(f"parked events of {name} counted", await store.count_parked_events(name), len(parked))

    async def audit() -> None:
        entries = await roles.audit.read_audit(AuditQuery(limit=1_000))
        expected = [c.audit_entry() for c in rows.commands] + rows.audit_entries
        expected += [s.read_back.audit_entry() for s in rows.sealed_commands]
        same("audit entries", sorted(entries, key=repr), sorted(expected, key=repr))
        times = [e.recorded_at_us for e in entries]
        same("audit entries newest first", times, sorted(times, reverse=True))
        refused = await roles.audit.read_audit(AuditQuery(outcome=REFUSED, limit=1_000))
        same(
            "refused audit entries",
            sorted(refused, key=repr),
            sorted((e for e in expected if e.outcome == REFUSED), key=repr),
        )

    async def claims_hold() -> None:
        for index, claim in enumerate(rows.claims):
            same(
                f"holder of {claim.value!r}",
                await roles.claims.claim_owner(EMAIL, claim.value),
                claim.stored.aggregate_id,
            )
            late = NewEvent(f"00000000-0000-4000-9000-{index:012d}", "User", "users.v1.Registered", 1, b"", T0)
            try:
                await roles.events.append("user-late", [late], 0, claims=[ClaimChange(EMAIL, claim.value)])
            except NotUnique:
                continue
            raise Mismatch(f"claim on {claim.value!r} did not refuse another holder")

    async def refusals_replay() -> None:
        # The executor replays a command id it finds recorded: the store must
        # still say so, with the record (and the refusal) as written.
        for command in rows.commands:
            try:
                await store.append(command.aggregate_id, [], command.last_version, commands=[command])
            except CommandAlreadyRecorded as already:
                same(f"recorded {command.command_id}", already.record, command)
                if command.rejection is not None:
                    r = command.rejection
                    replayed = rebuild_rejection(r.kind, r.message, r.reason, r.metadata, r.violations)
                    same(
                        f"the refusal of {command.command_id}, replayed",
                        (
                            type(replayed).__name__,
                            replayed.reason,
                            replayed.message,
                            replayed.metadata,
                            [(v.field, v.description) for v in getattr(replayed, "violations", ())],
                        ),
                        (r.kind, r.reason, r.message, dict(r.metadata), [tuple(v) for v in r.violations]),
                    )
                continue
            raise Mismatch(f"command id {command.command_id} was not recognised as recorded")

    async def appends_go_on() -> None:
        for aggregate_id in rows.aggregates():
            if aggregate_id in rows.forgotten:
                continue
            last = rows.events_of(aggregate_id)[-1].stored
            event = NewEvent(
                f"00000000-0000-4000-a000-{last.position:012d}",
                last.aggregate_type,
                "bank.v1.Later",
                1,
                b"\x08\x01",
                T0 + 10_000_000,
            )
            (written,) = await roles.events.append(aggregate_id, [event], last.version)
            same(
                f"a new event of {aggregate_id}",
                (written.version, written.position > rows.last_position),
                (last.version + 1, True),
            )
            same(
                f"the new event of {aggregate_id}, read back",
                (await roles.events.read_aggregate(aggregate_id))[-1],
                written,
            )
        for aggregate_id in rows.forgotten:
            try:
                await roles.events.append(
                    aggregate_id,
                    [NewEvent("00000000-0000-4000-b000-000000000001", "Account", "bank.v1.Later", 1, b"", T0)],
                    1,
                )
            except AggregateForgotten:
                continue
            raise Mismatch(f"{aggregate_id} took an event after it was forgotten")

    async def rewrap() -> None:
        retired = [k for k in rows.data_keys if k.master_key_id == "retired"]
        same("keys rewrapped", await Keyring(store, MASTER_KEYS).rewrap(), len(retired))
        only_current = encrypted(
            Store.of(store), Keyring(store, MasterKeys({"current": CURRENT_MASTER_KEY}, "current"))
        )
        for key in retired:
            events = await only_current.events.read_aggregate(key.aggregate_id)
            same(
                f"events of {key.aggregate_id} after the rewrap",
                events,
                [e.read_back for e in rows.events_of(key.aggregate_id)],
            )

    async def history_goes_on() -> None:
        latest = rows.snapshots[-1]
        newer = replace(latest.read_back, version=latest.stored.version + 100)
        sealed = latest.stored.state != latest.state
        saving: SnapshotStore = roles.snapshots if sealed else store
        await saving.save_snapshot(newer)
        same("a new snapshot", await roles.snapshots.load_snapshot(newer.aggregate_id), newer)
        same(
            "the old one beside it",
            await roles.snapshots.load_snapshot(newer.aggregate_id, at_most=latest.stored.version),
            latest.read_back,
        )
        for name, position in rows.checkpoints.items():
            await roles.projections.commit_projection(
                name, expected_position=position, new_position=position + 1, writes=[]
            )
        entry = AuditEntry(
            recorded_at_us=T0 + 900_000,
            command_id="c-new",
            command_type="bank.v1.Do",
            aggregate_id="account-plain",
            principal="alice",
            user_id="",
            origin="web",
            outcome=REFUSED,
            reason="LATER",
        )
        await roles.audit.record_audit_entry(entry)
        same("a new audit entry", (await roles.audit.read_audit(AuditQuery(command_id="c-new")))[:1], [entry])

    async def forgetting_deletes_documents() -> None:
        subjects = {s for d in rows.documents for s in d.subjects}
        for subject in sorted(subjects):
            if await store.load_data_key(subject) is not None:
                await Keyring(store, MASTER_KEYS).forget(subject)
        for document in rows.documents:
            raw = await store.load_document(document.projection, document.stored.key)
            named = bool(set(document.subjects) & {k.aggregate_id for k in rows.data_keys})
            same(
                f"document {document.key} of {document.projection} after its subject was forgotten", raw is None, named
            )

    async def features() -> None:
        # On as turned on; off (and not turned on now) while the old
        # member, whose code knows a schema from before features, is live.
        assert isinstance(store, ClusterFeatures)
        on = bool(rows.features) or not rows.holds("leases")
        same("tenant_document_keys on", await store.enable_feature(TENANT_DOCUMENT_KEYS), on)

    async def leases() -> None:
        # A replica of the new version joins the group the old one left.
        newcomer = LeaseMember("member-new", "10.0.0.2:50051", "https://10.0.0.2:8443")
        view = await store.renew_leases(LEASE_GROUP, newcomer, LEASE_NAMES, 5.0)
        same("lease members", list(view.members), sorted([*rows.lease_members, newcomer], key=lambda m: m.member_id))
        # What each runs (left out of LeaseMember's equality): the old one's
        # as written, the newcomer's version as given and its store's newest
        # schema version, which the store writes at each heartbeat.
        newest = _newest_schema(rows.dialect)
        ran = sorted((m.member_id, m.version, m.schema_version) for m in view.members)
        wrote = [(m.member_id, m.version, m.schema_version) for m in rows.lease_members]
        same("lease members' versions", ran, sorted([*wrote, ("member-new", "", newest)]))
        same("leases", list(view.leases), rows.leases)
        free = [lease for lease in rows.leases if lease.owner is None]
        taken = await store.change_leases(
            LEASE_GROUP, newcomer.member_id, release=(), acquire=[lease.name for lease in free], ttl=5.0
        )
        same(
            "leases taken after the old ones",
            sorted(taken, key=lambda lease: lease.name),
            [Lease(lease.name, newcomer.member_id, lease.epoch + 1) for lease in free],
        )

    async def groups() -> None:
        # A consumer of the new version goes on from the old checkpoints.
        same("groups", await store.list_groups(), rows.groups)
        (group,) = rows.groups
        name = group.spec.name
        same("parked events", await store.list_parked(name), rows.group_parked)
        same("events settled above a checkpoint", await store.settled_ahead(name, 1), rows.settled_ahead)
        same(
            "parked events to replay",
            await store.parked_to_replay(name, list(range(group.spec.segments)), 10),
            [p for p in rows.group_parked if p.replaying],
        )
        moved = group.checkpoint(0)
        # Skips counted from none (PostgreSQL's migration 18, SQLite's 15).
        await store.commit_segment(
            name, 0, expected_position=moved.position, new_position=moved.position + 5, acknowledged=4, skipped=2
        )
        loaded = await store.load_group(name)
        same(
            "a checkpoint moved after the old one",
            loaded.checkpoint(0) if loaded is not None else None,
            replace(moved, position=moved.position + 5, acknowledged=moved.acknowledged + 4, skipped=moved.skipped + 2),
        )

    async def consumer_reports() -> None:
        # The old consumer's session comes back (a live member again): its report shows with it.
        name = rows.groups[0].spec.name
        for member_id in rows.consumer_reports:
            await store.renew_leases(consumer_group(name), LeaseMember(member_id, ""), ["0"], 5.0)
        loaded = await store.load_group(name)
        shown = {c.consumer: c.report for c in loaded.consumers} if loaded is not None else {}
        for member_id, written in rows.consumer_reports.items():
            report = shown.get(member_id)
            same(
                f"report of {member_id}",
                report and (report.replica_id, report.replica_address, report.in_flight),
                (written.replica_id, written.replica_address, written.in_flight),
            )
            answered = report.answered_ago if report is not None else None
            same(f"last answer of {member_id} at least as long ago", answered is not None and answered >= 2.49, True)
            connected = report.connected_ago if report is not None else None
            if written.connected_ago is None:
                same(f"{member_id} joined when not known", connected, None)
            else:
                same(f"{member_id} joined at least as long ago", connected is not None and connected >= 59.9, True)

    for kind, body in (
        ("events", events),
        ("log", log),
        ("command records", command_records),
        ("snapshots", snapshots),
        ("claims as stored", claims_in_clear),
        ("data keys", data_keys),
        ("projections", projections),
        ("audit", audit),
        ("claims", claims_hold),
        ("refusals replay", refusals_replay),
        ("rewrapping", rewrap),
        ("appends after the old events", appends_go_on),
        ("snapshots, checkpoints and audit after the old ones", history_goes_on),
        *((("leases", leases),) if rows.holds("leases") else ()),
        *((("features", features),) if isinstance(store, ClusterFeatures) else ()),
        ("documents of a forgotten subject", forgetting_deletes_documents),
        *((("groups", groups),) if rows.holds("groups") else ()),
        *((("consumer reports", consumer_reports),) if rows.holds("consumer_reports") else ()),
    ):
        await check(kind, body)
    return failures
