"""What the two SQL adapters (SQLite, PostgreSQL) share: the order of the
columns they read and write, turning rows into records and records into
parameters, the WHERE conditions of filtered reads, putting a page of the
log or of the audit together, and finding the migration scripts. Each
adapter's SQL selects the columns in the order given here; the dialects
differ only in how a parameter is written (``Dialect``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from service.errors import ConfigurationError
from service.store.base import AggregateQuery, AuditQuery
from service.store.grouping import GroupParkedEvent, GroupSpec, filter_from_json
from service.store.records import (
    ACCEPTED,
    REFUSED,
    AggregateSummary,
    AuditEntry,
    CommandRecord,
    DataKey,
    HeldClaim,
    LogFilter,
    LogPage,
    OtherSubjects,
    ParkedEvent,
    RecordedEvent,
    Snapshot,
    StoredDocument,
)
from service.store.serialization import dump_rejection, load_metadata, load_rejection

# A database row: its values' types are the adapter's to know.
Row = Sequence[Any]

# An event as every read returns it: RecordedEvent's fields, in order, with
# the time as microseconds since the epoch. ``EVENT_COLUMNS`` is what
# SQLite's table holds; PostgreSQL's adapter converts in SQL (see its sql.py).
EVENT_FIELDS = (
    "event_id",
    "aggregate_id",
    "aggregate_type",
    "version",
    "position",
    "event_type",
    "schema_version",
    "payload",
    "recorded_at_us",
    "command_id",
    "user_id",
    "origin",
    "correlation_id",
    "causation_id",
    "metadata",
)
COMMAND_FIELDS = (
    "command_id",
    "aggregate_id",
    "command_type",
    "fingerprint",
    "first_version",
    "last_version",
    "rejection",
    "principal",
    "user_id",
    "origin",
    "recorded_at_us",
    "issued_at_us",
)
# The columns the audit's own table shares with the command records.
AUDIT_FIELDS = ("recorded_at_us", "command_id", "command_type", "aggregate_id", "principal", "user_id", "origin")
SNAPSHOT_FIELDS = ("aggregate_id", "aggregate_type", "version", "state_type", "schema_version", "state")


def event_from_row(row: Row) -> RecordedEvent:
    """A row of ``EVENT_FIELDS``: positional, as a 10,000-event load builds
    10,000 of these. Metadata may come as JSON text, a dict or NULL."""
    metadata = row[14]
    return RecordedEvent(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        bytes(row[7]),
        row[8],
        row[9],
        row[10],
        row[11],
        row[12],
        row[13],
        load_metadata(metadata) if metadata else {},
    )


def command_from_row(row: Row) -> CommandRecord:
    """A row of ``COMMAND_FIELDS``; the rejection as JSON text or a dict."""
    return CommandRecord(
        command_id=str(row[0]),
        aggregate_id=str(row[1]),
        command_type=str(row[2]),
        fingerprint=bytes(row[3]),
        first_version=int(row[4]),
        last_version=int(row[5]),
        rejection=load_rejection(row[6]),
        principal=str(row[7]),
        user_id=str(row[8]),
        origin=str(row[9]),
        recorded_at_us=int(row[10]),
        issued_at_us=int(row[11] or 0),
    )


def audit_entry_from_row(row: Row) -> AuditEntry:
    """A row of the audit table: ``AUDIT_FIELDS``, then reason, message,
    outcome, dry_run, peer, occurrences."""
    return AuditEntry(
        recorded_at_us=int(row[0]),
        command_id=str(row[1]),
        command_type=str(row[2]),
        aggregate_id=str(row[3]),
        principal=str(row[4]),
        user_id=str(row[5]),
        origin=str(row[6]),
        reason=str(row[7]),
        message=str(row[8]),
        outcome=str(row[9]),
        dry_run=bool(row[10]),
        peer=str(row[11]),
        occurrences=int(row[12]),
    )


def snapshot_from_row(row: Row) -> Snapshot:
    return Snapshot(
        str(row[0]),
        str(row[1]),
        int(row[2]),
        str(row[3]),
        int(row[4]),
        bytes(row[5]),
    )


def document_from_row(row: Row) -> StoredDocument:
    return StoredDocument(str(row[0]), str(row[1]), bytes(row[2]))


def parked_event_row(event: ParkedEvent) -> tuple[str, int, str, str, str, str, int, int]:
    """A parked event in the columns' order (``PARKED_EVENT_COLUMNS``)."""
    return (
        event.projection,
        event.position,
        event.event_id,
        event.event_type,
        event.aggregate_id,
        event.error,
        event.attempts,
        event.parked_at_us,
    )


def parked_event_from_row(row: Row) -> ParkedEvent:
    return ParkedEvent(
        str(row[0]), int(row[1]), str(row[2]), str(row[3]), str(row[4]), str(row[5]), int(row[6]), int(row[7])
    )


def claim_from_row(row: Row) -> HeldClaim:
    return HeldClaim(str(row[0]), str(row[1]), str(row[2]))


def data_key_from_row(row: Row) -> DataKey:
    """A row of (aggregate_id, master_key_id, wrapped_key)."""
    wrapped = row[2]
    return DataKey(str(row[0]), None if row[1] is None else str(row[1]), None if wrapped is None else bytes(wrapped))


def other_subjects(rows: Iterable[Row]) -> dict[str, OtherSubjects]:
    """Rows of (reaction, subject, how many subjects in all), by reaction
    and subject: each reaction's ``OtherSubjects``."""
    shown: dict[str, list[str]] = {}
    totals: dict[str, int] = {}
    for name, subject, total in rows:
        shown.setdefault(str(name), []).append(str(subject))
        totals[str(name)] = int(total)
    return {name: OtherSubjects(tuple(subjects), totals[name]) for name, subjects in shown.items()}


def snapshot_params(snapshot: Snapshot) -> tuple[object, ...]:
    """The values of ``SNAPSHOT_FIELDS``, in order, to write ``snapshot``."""
    return (
        snapshot.aggregate_id,
        snapshot.aggregate_type,
        snapshot.version,
        snapshot.state_type,
        snapshot.schema_version,
        snapshot.state,
    )


def command_params(command: CommandRecord) -> tuple[object, ...]:
    """The values of ``COMMAND_FIELDS``, in order, to write ``command`` (the
    rejection as JSON text)."""
    return (
        command.command_id,
        command.aggregate_id,
        command.command_type,
        command.fingerprint,
        command.first_version,
        command.last_version,
        dump_rejection(command.rejection),
        command.principal,
        command.user_id,
        command.origin,
        command.recorded_at_us,
        command.issued_at_us or None,
    )


def audit_entry_params(entry: AuditEntry) -> tuple[object, ...]:
    """The values of the audit table's row (as ``audit_entry_from_row``
    reads it), in order, to write ``entry``."""
    return (
        entry.recorded_at_us,
        entry.command_id,
        entry.command_type,
        entry.aggregate_id,
        entry.principal,
        entry.user_id,
        entry.origin,
        entry.reason,
        entry.message,
        entry.outcome,
        entry.dry_run,
        entry.peer,
        entry.occurrences,
    )


def log_page(
    events: tuple[RecordedEvent, ...],
    *,
    head: int,
    after_position: int,
    full: bool,
    head_id: str | None = None,
    after_id: str | None = None,
) -> LogPage:
    """A page of the log, ``head`` being the log's end as of the same read:
    a ``full`` page (it reached its limit of events or bytes) was examined up
    to its last event (more may follow), a shorter one up to the end.
    ``head_id``/``after_id``: the ids of the events stored at ``head`` and at
    ``after_position`` as of the same read (None: none stored there)."""
    after = (after_position, after_id or "")
    if full and events:
        return LogPage(events, events[-1].position, more=True, head=head, head_id=head_id or "", after=after)
    return LogPage(events, max(head, after_position), head=head, head_id=head_id or "", after=after)


# "No limit" for a page's size: larger than any log page can be.
UNLIMITED_BYTES = 2**62


def newest_audit_entries(commands: Iterable[Row], others: Iterable[Row], limit: int) -> list[AuditEntry]:
    """One page of the audit, newest first, from a page of command records
    and a page of the audit's own entries (each already newest first)."""
    entries = [command_from_row(row).audit_entry() for row in commands]
    entries += [audit_entry_from_row(row) for row in others]
    entries.sort(key=lambda e: e.recorded_at_us, reverse=True)
    return entries[:limit]


@dataclass(frozen=True, slots=True)
class Dialect:
    """How a SQL adapter writes parameters, lists and times."""

    placeholder: Callable[[int], str]  # the n-th parameter (1-based): "$n" or "?"
    arrays: bool  # a list is one array parameter (PostgreSQL), or one parameter per item (SQLite)
    # A parameter of microseconds since the epoch, as the adapter's time columns hold time.
    micros: str


POSTGRES = Dialect(lambda n: f"${n}", arrays=True, micros="'epoch'::timestamptz + {} * interval '1 microsecond'")
SQLITE = Dialect(lambda n: "?", arrays=False, micros="{}")


@dataclass(slots=True)
class Conditions:
    """WHERE conditions and their parameters, built in order."""

    dialect: Dialect
    clauses: list[str] = field(default_factory=list)
    params: list[object] = field(default_factory=list)

    def add(self, template: str, value: object) -> None:
        """``template`` with ``{}`` where the parameter goes."""
        self.params.append(value)
        self.clauses.append(template.format(self.dialect.placeholder(len(self.params))))

    def member(self, column: str, values: Iterable[str], *, indexed: bool = True) -> None:
        """``column`` is one of ``values``. One value is written as ``=``, so
        an index on the column keeps returning rows in its order. Not
        ``indexed``: several values are written so that SQLite uses no index
        for them (``+column``, which changes nothing else)."""
        chosen = sorted(values)
        if len(chosen) == 1:
            self.add(f"{column} = {{}}", chosen[0])
        elif self.dialect.arrays:
            self.add(f"{column} = ANY({{}}::text[])", chosen)
        else:
            marks = ", ".join(self.next_placeholder(value) for value in chosen)
            self.clauses.append(f"{'' if indexed else '+'}{column} IN ({marks})")

    def next_placeholder(self, value: object) -> str:
        """A parameter outside the WHERE (a LIMIT, say)."""
        self.params.append(value)
        return self.dialect.placeholder(len(self.params))

    @property
    def where(self) -> str:
        return " AND ".join(self.clauses) or "true"


def log_conditions(dialect: Dialect, after_position: int, log_filter: LogFilter) -> Conditions:
    """A page of the log must come in position order without reading past
    the page. An index on (type, position) gives that order for one type;
    for several, SQLite read every later match from the index and sorted
    them all to return one page, so that each page of a catch-up (a
    projection rebuilt, a subscriber filtered to a few event types) read the
    rest of the log. Such a list is kept off the indexes there: the rows
    come from the primary key in position order, filtered, and the read
    stops at the page's end. (PostgreSQL: LOG_PAGE_SETTINGS turns sorting
    off, to the same effect.)"""
    conditions = Conditions(dialect)
    conditions.add("position > {}", after_position)
    if log_filter.aggregate_types:
        conditions.member("aggregate_type", log_filter.aggregate_types, indexed=False)
    if log_filter.event_types:
        conditions.member("event_type", log_filter.event_types, indexed=False)
    if log_filter.aggregate_id is not None:
        conditions.add("aggregate_id = {}", log_filter.aggregate_id)
    if log_filter.origin is not None:
        conditions.add("origin = {}", log_filter.origin)
    add_prefix_condition(conditions, log_filter.aggregate_id_prefix)
    return conditions


def add_prefix_condition(conditions: Conditions, prefix: str | None) -> None:
    """The aggregate id begins with ``prefix``: compared as a substring, not
    with LIKE, whose ``%`` and ``_`` a prefix would have to escape (SQLite's
    and PostgreSQL's ``substr`` both count characters from 1)."""
    if prefix is not None:
        conditions.add(f"substr(aggregate_id, 1, {len(prefix):d}) = {{}}", prefix)


def aggregate_conditions(dialect: Dialect, aggregate_id: str, query: AggregateQuery) -> Conditions:
    conditions = Conditions(dialect)
    conditions.add("aggregate_id = {}", aggregate_id)
    conditions.add("version >= {}", max(query.from_version, 1))
    if query.to_version is not None:
        conditions.add("version <= {}", query.to_version)
    if query.origin is not None:
        conditions.add("origin = {}", query.origin)
    if query.event_types:
        conditions.member("event_type", query.event_types)
    return conditions


# A command record's outcome is whether it carries a rejection.
_COMMAND_OUTCOMES = {None: None, ACCEPTED: "rejection IS NULL", REFUSED: "rejection IS NOT NULL"}


def audited_command_conditions(dialect: Dialect, query: AuditQuery, *, time_column: str) -> Conditions | None:
    """The command records ``query`` asks for; None when its outcome is one
    only the audit's own entries have (an administrator's action, say)."""
    if query.outcome not in _COMMAND_OUTCOMES:
        return None
    conditions = audit_conditions(dialect, query, time_column=time_column)
    outcome = _COMMAND_OUTCOMES[query.outcome]
    if outcome is not None:
        conditions.clauses.append(outcome)
    return conditions


def audit_entry_conditions(dialect: Dialect, query: AuditQuery, *, time_column: str) -> Conditions:
    """The audit's own entries (its table) ``query`` asks for."""
    conditions = audit_conditions(dialect, query, time_column=time_column)
    if query.outcome is not None:
        conditions.add("outcome = {}", query.outcome)
    return conditions


def audit_conditions(dialect: Dialect, query: AuditQuery, *, time_column: str) -> Conditions:
    """The conditions both audit tables share (they have these columns)."""
    conditions = Conditions(dialect)
    for column, value in (
        ("aggregate_id", query.aggregate_id),
        ("principal", query.principal),
        ("command_id", query.command_id),
        ("command_type", query.command_type),
    ):
        if value is not None:
            conditions.add(f"{column} = {{}}", value)
    add_prefix_condition(conditions, query.aggregate_id_prefix)
    if query.since_us is not None:
        conditions.add(f"{time_column} >= {dialect.micros}", query.since_us)
    if query.until_us is not None:
        conditions.add(f"{time_column} < {dialect.micros}", query.until_us)
    return conditions


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str
    # The oldest schema version whose code still runs correctly on the
    # schema this migration leaves (its compatibility floor): the code of
    # an older version refuses the database (schema_use.py). A migration
    # whose script has a line ``-- additive`` (new tables, new columns with
    # a default or NULL, new indexes: nothing older code reads or writes
    # changes meaning) keeps the floor of the one before; any other raises
    # it to its own version.
    compatible_from: int


_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_ADDITIVE = re.compile(r"^-- additive\s*$", re.MULTILINE)


def known_migrations(package: str) -> list[Migration]:
    """The scripts ``migrations/NNNN_name.sql`` of an adapter's ``package``,
    in order: script N brings the schema from version N - 1 to N."""
    scripts = []
    for entry in resources.files(package).joinpath("migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            scripts.append((int(match.group(1)), match.group(2), entry.read_text()))
    scripts.sort()
    if [version for version, _, _ in scripts] != list(range(1, len(scripts) + 1)):
        raise ConfigurationError(f"the migrations of {package} must be numbered 0001, 0002, … without gaps")
    found: list[Migration] = []
    for version, name, script in scripts:
        additive = found and _ADDITIVE.search(script)
        found.append(Migration(version, name, script, found[-1].compatible_from if additive else version))
    return found


# -- subscription groups (grouping.py) ----------------------------------------

GROUP_FIELDS = (
    "name",
    "filter",
    "start_position",
    "segments",
    "max_attempts",
    "retry_backoff_ms",
    "max_retry_backoff_ms",
    "ack_timeout_ms",
    "incarnation",
    "max_unanswered_timeouts",
)
PARKED_FIELDS = ("event_id", "position", "segment", "aggregate_id", "attempts", "reason", "replaying")
# Read after PARKED_FIELDS: the parked event's type and when it was parked
# (microseconds; PostgreSQL's migration 27 and SQLite's 23: NULL and 0 on
# rows from before them). Each store's SQL names how it keeps the time.


def group_params(spec: GroupSpec) -> tuple[object, ...]:
    return (
        spec.name,
        spec.filter_json(),
        spec.start_position,
        spec.segments,
        spec.max_attempts,
        spec.retry_backoff_ms,
        spec.max_retry_backoff_ms,
        spec.ack_timeout_ms,
        spec.incarnation,
        spec.max_unanswered_timeouts,
    )


def group_spec_from_row(row: Row) -> GroupSpec:
    filter_text = row[1] if isinstance(row[1], str) else json.dumps(row[1])
    return GroupSpec(
        name=str(row[0]),
        log_filter=filter_from_json(filter_text),
        start_position=int(row[2]),
        segments=int(row[3]),
        max_attempts=int(row[4]),
        retry_backoff_ms=int(row[5]),
        max_retry_backoff_ms=int(row[6]),
        ack_timeout_ms=int(row[7]),
        incarnation=str(row[8] or ""),
        # NULL for a group created before the setting existed: the default.
        **({} if row[9] is None else {"max_unanswered_timeouts": int(row[9])}),
    )


def parked_page(
    name: str, after_position: int, after: tuple[int, str] | None, limit: int
) -> tuple[str, int, str | None, int]:
    """LIST_GROUP_PARKED's parameters: after ``after`` (a position and an
    event id) when given, else after ``after_position`` (no event id)."""
    if after is not None:
        return (name, after[0], after[1], limit)
    return (name, after_position, None, limit)


def parked_from_row(row: Row) -> GroupParkedEvent:
    return GroupParkedEvent(
        event_id=str(row[0]),
        position=int(row[1]),
        segment=int(row[2]),
        aggregate_id=str(row[3]),
        attempts=int(row[4]),
        reason=str(row[5]),
        replaying=row[6] in (True, 1, "t", "true", "1"),
        event_type=str(row[7] or ""),
        parked_at_us=int(row[8] or 0),
    )


def summary_from_row(row: Row) -> AggregateSummary:
    """A listed aggregate: id, type, version, deleted, keyed, forgotten."""
    return AggregateSummary(row[0], row[1], int(row[2]), *(bool(int(flag)) for flag in row[3:6]))
