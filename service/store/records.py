"""Values that cross the store boundary. All frozen: a store never shares
mutable state with its callers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from service.values import value


@value(frozen=True, slots=True)
class NewEvent:
    """An event to append. The store assigns its version and position."""

    event_id: str
    aggregate_type: str
    event_type: str
    schema_version: int
    payload: bytes
    timestamp_us: int
    command_id: str = ""
    user_id: str = ""
    origin: str = ""
    correlation_id: str = ""
    causation_id: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


# What one event counts for when a reader pages by size (``LogReader.read_log``'s
# ``max_bytes``): its payload and its metadata as stored, plus this much for the
# rest of its envelope (ids and names, each a few hundred bytes at most).
EVENT_ENVELOPE_BYTES = 256
# The largest event a command may produce, unless the server says otherwise
# (--max-event-bytes); an import holds its events to the same limit.
DEFAULT_MAX_EVENT_BYTES = 1024 * 1024


@value(frozen=True, slots=True)
class RecordedEvent:
    """An event as committed: ``version`` is its place in the aggregate
    (1-based, gapless), ``position`` its place in the global log.
    ``redacted``: the aggregate was forgotten (its encryption key erased), so
    ``payload`` is empty and can never be read again."""

    event_id: str
    aggregate_id: str
    aggregate_type: str
    version: int
    position: int
    event_type: str
    schema_version: int
    payload: bytes
    timestamp_us: int
    command_id: str
    user_id: str
    origin: str
    correlation_id: str
    causation_id: str
    metadata: Mapping[str, str]
    redacted: bool = False

    def stored_size(self) -> int:
        """This event's size for paging by size (see ``EVENT_ENVELOPE_BYTES``)."""
        size = EVENT_ENVELOPE_BYTES + len(self.payload)
        if self.metadata:
            size += sum(len(key) + len(text) + 6 for key, text in self.metadata.items())
        return size

    @classmethod
    def committed(cls, new: NewEvent, *, aggregate_id: str, version: int, position: int) -> RecordedEvent:
        return cls(
            event_id=new.event_id,
            aggregate_id=aggregate_id,
            aggregate_type=new.aggregate_type,
            version=version,
            position=position,
            event_type=new.event_type,
            schema_version=new.schema_version,
            payload=new.payload,
            timestamp_us=new.timestamp_us,
            command_id=new.command_id,
            user_id=new.user_id,
            origin=new.origin,
            correlation_id=new.correlation_id,
            causation_id=new.causation_id,
            metadata=new.metadata,
        )


# A deleted aggregate's events are replaced by one event of this type (its
# payload a chronicle.v1.AggregateDeleted), at the version after its last and
# a new position: the tombstone that readers and subscribers see, and that
# refuses new commands.
TOMBSTONE_EVENT_TYPE = "chronicle.v1.AggregateDeleted"


def is_tombstone(event: RecordedEvent | NewEvent) -> bool:
    return event.event_type == TOMBSTONE_EVENT_TYPE


@value(frozen=True, slots=True)
class Rejection:
    """A recorded refusal: enough to raise the same error again."""

    kind: str
    reason: str
    message: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    # The fields at fault, as (field, description) pairs, when a handler named several.
    violations: tuple[tuple[str, str], ...] = ()


@value(frozen=True, slots=True)
class CommandRecord:
    """What a command id produced, kept so a retry gets the same answer.

    ``fingerprint`` identifies the command's content (aggregate, type and
    payload) so a reused id with other content can be told apart from a
    retry. A command that appended events covers versions ``first_version``
    to ``last_version``; one that appended nothing has ``first_version ==
    last_version + 1``; a refused one carries its ``rejection``.
    """

    command_id: str
    aggregate_id: str
    command_type: str
    fingerprint: bytes
    first_version: int
    last_version: int
    rejection: Rejection | None = None
    # For the audit log: who sent it, on whose behalf, from where, and when
    # it was decided (microseconds since the epoch).
    principal: str = ""
    user_id: str = ""
    origin: str = ""
    recorded_at_us: int = 0
    # When the command was made: its client's timestamp, else when the server
    # received it (microseconds since the epoch; 0: not known, as for records
    # written before it was kept).
    issued_at_us: int = 0

    @property
    def event_count(self) -> int:
        return self.last_version - self.first_version + 1

    def audit_entry(self) -> AuditEntry:
        refused = self.rejection is not None
        return AuditEntry(
            recorded_at_us=self.recorded_at_us,
            command_id=self.command_id,
            command_type=self.command_type,
            aggregate_id=self.aggregate_id,
            principal=self.principal,
            user_id=self.user_id,
            origin=self.origin,
            outcome=REFUSED if refused else ACCEPTED,
            reason=self.rejection.reason if self.rejection is not None else "",
            message=self.rejection.message if self.rejection is not None else "",
            issued_at_us=self.issued_at_us,
        )


ACCEPTED = "accepted"
REFUSED = "refused"


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """One command that reached the service, and what became of it.

    Accepted commands and refusals decided by a handler come from the command
    records (written in the append's transaction); refusals before the
    handler ran (authentication, policy, malformed input, overload) are
    recorded on their own. Fields the service could not learn (a malformed
    command's type, say) are empty.
    """

    recorded_at_us: int
    command_id: str
    command_type: str
    aggregate_id: str
    principal: str
    user_id: str
    origin: str
    outcome: str  # ACCEPTED or REFUSED
    reason: str = ""
    message: str = ""
    # A dry run's outcome (nothing was written); the caller's network
    # address as gRPC saw it (entries of the audit's own table); how many
    # refusals this entry stands for (more than 1: a flood, sampled).
    dry_run: bool = False
    peer: str = ""
    occurrences: int = 1
    # When the command was made (its record's ``issued_at_us``; 0: not known).
    issued_at_us: int = 0


@dataclass(frozen=True, slots=True)
class ClaimChange:
    """Take (or, with ``release``, give up) a uniqueness claim: ``value`` is
    held by at most one aggregate within ``scope`` (e.g. an e-mail address
    in ``users.email``). Written in the transaction of an append, for the
    aggregate appended to; only the holder can release a value."""

    scope: str
    value: str
    release: bool = False


# With encryption at rest, claim values are stored as keyed hashes that
# start with this control character. Values plugins claim are printable
# text, so a stored value that does not start with it is one in the clear
# (written before encryption was turned on).
HIDDEN_CLAIM_MARK = "\x1f"


@dataclass(frozen=True, slots=True)
class HeldClaim:
    """A claim as stored: ``aggregate_id`` holds ``value`` in ``scope``."""

    scope: str
    value: str
    aggregate_id: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An aggregate's state at ``version``, as serialized bytes.

    ``schema_version`` is the plugin's state schema version when the
    snapshot was taken; a snapshot whose type or schema version differs from
    the plugin's current one is ignored and the state rebuilt from events.

    ``through_event_id``, when saving: the id of the event at ``version``
    that the state was built through. A store then keeps the snapshot only
    if that event is still the aggregate's event at ``version``: a save that
    runs in the background after the append it follows must not land on a
    history an import replaced meanwhile (its events have other ids, and
    the state would be wrong for them). Not stored; None on what is loaded.
    """

    aggregate_id: str
    aggregate_type: str
    version: int
    state_type: str
    schema_version: int
    state: bytes
    through_event_id: str | None = None


# The other subjects a forget names per reaction, at most (the rest counted).
MAX_OTHER_SUBJECTS = 20


@dataclass(frozen=True, slots=True)
class OtherSubjects:
    """The aggregates other than the forgotten one that the documents a
    forget deleted named as their subjects (a reaction's process states, a
    read model's documents shared with other aggregates; not parked
    commands), per projection or reaction: the first
    ``MAX_OTHER_SUBJECTS`` by id (``shown``), and how many in all
    (``total``). Aggregate ids, stored in the clear like every envelope."""

    shown: tuple[str, ...]
    total: int


@dataclass(frozen=True, slots=True)
class Forgetting:
    """What forgetting an aggregate did: whether it erased a live key, and
    how many projections' and reactions' documents naming the aggregate went
    with it, by (projection or reaction name, document type): a reaction's
    ``chronicle.v1.ProcessState`` documents are processes deleted in flight.
    Types and names are stored in the clear; the documents' keys, under
    encryption at rest, are not (keyed hashes), so they are not reported."""

    erased: bool
    documents: Mapping[tuple[str, str], int] = field(default_factory=dict)
    # By reaction: the other aggregates its deleted process states named
    # (what an operator finishes or compensates by hand), bounded.
    other_subjects: Mapping[str, OtherSubjects] = field(default_factory=dict)
    # When its key was erased (microseconds since the epoch): by this
    # forget, or by the first one; None when it has no tombstone (no key).
    forgotten_at_us: int | None = None


@dataclass(frozen=True, slots=True)
class DataKey:
    """An aggregate's data key as stored: wrapped (encrypted) by the master
    key ``master_key_id``. ``wrapped`` is None once the aggregate was
    forgotten: the row stays as a tombstone so no new key is ever made."""

    aggregate_id: str
    master_key_id: str | None
    wrapped: bytes | None

    @property
    def forgotten(self) -> bool:
        return self.wrapped is None


@dataclass(frozen=True, slots=True)
class AggregateHead:
    """Where an aggregate stands: its type and latest version, and whether
    that version is the tombstone of its deletion."""

    aggregate_type: str
    version: int
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class AggregateSummary:
    """One aggregate of a listing: its id, type and latest version; whether
    it was deleted (its last event is its tombstone), whether it has a data
    key (encryption at rest: one that never had one was written wholly in
    the clear, and forgetting cannot shred it) and whether that key was
    erased (forgotten)."""

    aggregate_id: str
    aggregate_type: str
    version: int
    deleted: bool = False
    keyed: bool = False
    forgotten: bool = False


@dataclass(frozen=True, slots=True)
class AggregateLastEvent:
    """An aggregate as its last event shows it (for choosing what to archive)."""

    aggregate_id: str
    aggregate_type: str
    version: int
    last_event_type: str
    last_timestamp_us: int


@dataclass(frozen=True, slots=True)
class LogFilter:
    """Which events of the global log a reader wants. Fields combine with
    AND; entries of one set with OR; empty means any."""

    aggregate_types: frozenset[str] = frozenset()
    event_types: frozenset[str] = frozenset()
    aggregate_id: str | None = None
    origin: str | None = None
    # Only aggregates whose id begins so: a tenant's (``acme:``), for a
    # tenant-scoped reader. A condition on the rows a position range
    # already reads, so the read stays in position order and its
    # ``scanned_to`` still passes over the others' events.
    aggregate_id_prefix: str | None = None

    def matches(self, event: RecordedEvent) -> bool:
        return (
            (not self.aggregate_types or event.aggregate_type in self.aggregate_types)
            and (not self.event_types or event.event_type in self.event_types)
            and (self.aggregate_id is None or event.aggregate_id == self.aggregate_id)
            and (self.origin is None or event.origin == self.origin)
            and (self.aggregate_id_prefix is None or event.aggregate_id.startswith(self.aggregate_id_prefix))
        )


@dataclass(frozen=True, slots=True)
class LogPage:
    """Events of the global log after some position, and how far the log
    was examined to find them: a reader may resume after ``scanned_to``
    even when no event matched, without missing one."""

    events: tuple[RecordedEvent, ...]
    scanned_to: int
    # The page reached its limit (of events or of bytes): more may follow
    # at once. False: the log was examined to its end.
    more: bool = False
    # The log's end as of the same read (None: the store did not say). A
    # reader that already went past it knows the log went back under it (a
    # restore, a failover that lost commits): ``scanned_to`` never shows it.
    head: int | None = None
    # From the same read, the ids of the events stored at ``head`` and at the
    # read's ``after_position`` ("": none stored there; None: the store did
    # not say). A log that went back and was written past a reader's
    # position before its next read shows an end above it again: only the
    # event at that position, another than the one it read there, tells.
    # (Positions are never handed out twice otherwise: an event removed, by
    # an import replacing its aggregate, leaves its position empty.)
    head_id: str | None = None
    after: tuple[int, str] | None = None


@value(frozen=True, slots=True)
class StoredDocument:
    """A projection's document: a Protobuf message (its full type name and
    bytes) under a key."""

    key: str
    type_name: str
    data: bytes


# The type of a command a reaction parked, one document each among its
# documents (processing/reaction_documents.py): the stores count those of a
# reaction (``ProjectionStore.count_parked_commands``) over an index of
# documents of this type alone.
PARKED_COMMAND_TYPE = "chronicle.v1.ParkedCommand"
# The type of a reaction's process state (one document per state key).
PROCESS_STATE_TYPE = "chronicle.v1.ProcessState"


@value(frozen=True, slots=True)
class DocumentWrite:
    """A change to a projection's document: ``data`` None deletes it.
    ``subjects``: the aggregates the document is derived from; forgetting
    any of them deletes it (a put replaces the document's subjects)."""

    key: str
    type_name: str = ""
    data: bytes | None = None
    subjects: tuple[str, ...] = ()
    # When the document is due (microseconds since the Unix epoch; None: it
    # is not): a reaction's deadline, found by ``ProjectionStore.due_documents``
    # over an index of the documents that have one.
    due_us: int | None = None


@dataclass(frozen=True, slots=True)
class ParkedEvent:
    """An event a projection skipped because its handler kept failing on
    it (its plugin declared ``on_failure="park"``): recorded in the commit
    that moves the checkpoint past it."""

    projection: str
    position: int
    event_id: str
    event_type: str
    aggregate_id: str
    error: str
    attempts: int
    parked_at_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DocumentRange:
    """Which of a projection's documents to list: keys starting with
    ``prefix``, after ``after`` (exclusive, in the listing's order; None: from
    the first), ascending by Unicode code point unless ``descending``."""

    prefix: str = ""
    after: str | None = None
    descending: bool = False
    limit: int = 100

    def bounds(self) -> tuple[str, bool, str | None]:
        """``(lower, lower_inclusive, upper)``: the listing is the keys with
        ``lower <= key`` (``<`` when not inclusive) and ``key < upper``
        (no upper bound when None), so that an index on the key serves it."""
        upper = prefix_end(self.prefix)
        if self.after is None:
            return self.prefix, True, upper
        if self.descending:
            return self.prefix, True, self.after
        return self.after, False, upper

    def matches(self, key: str) -> bool:
        lower, inclusive, upper = self.bounds()
        return (key >= lower if inclusive else key > lower) and (upper is None or key < upper)


def prefix_end(prefix: str) -> str | None:
    """The least string after every string that starts with ``prefix``, in
    code point order (None: there is none, as for the empty prefix): the
    prefix with its last character that can grow grown by one. Code point
    order is byte order in UTF-8, which SQLite's BINARY and PostgreSQL's
    "C" collation compare by."""
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            following = last + 1
            if 0xD800 <= following <= 0xDFFF:  # surrogates are no characters: skip them
                following = 0xE000
            return "".join(chars) + chr(following)
    return None
