"""What the two SQL adapters (SQLite, PostgreSQL) share: the order of the
columns they read, turning rows into records, and the WHERE conditions of
filtered reads. Each adapter's SQL selects the columns in the order given
here; the dialects differ only in how a parameter is written (``Dialect``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.store.base import AggregateQuery, AuditQuery
from service.store.records import (
    AuditEntry,
    CommandRecord,
    DataKey,
    HeldClaim,
    LogFilter,
    RecordedEvent,
    Snapshot,
    StoredDocument,
)
from service.store.serialization import load_metadata, load_rejection

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
    )


def audit_entry_from_row(row: Row) -> AuditEntry:
    """A row of the audit table: ``AUDIT_FIELDS``, then reason, message, outcome."""
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


def claim_from_row(row: Row) -> HeldClaim:
    return HeldClaim(str(row[0]), str(row[1]), str(row[2]))


def data_key_from_row(row: Row) -> DataKey:
    """A row of (aggregate_id, master_key_id, wrapped_key)."""
    wrapped = row[2]
    return DataKey(str(row[0]), None if row[1] is None else str(row[1]), None if wrapped is None else bytes(wrapped))


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

    def member(self, column: str, values: Iterable[str]) -> None:
        """``column`` is one of ``values``. One value is written as ``=``, so
        an index on the column keeps returning rows in its order."""
        chosen = sorted(values)
        if len(chosen) == 1:
            self.add(f"{column} = {{}}", chosen[0])
        elif self.dialect.arrays:
            self.add(f"{column} = ANY({{}}::text[])", chosen)
        else:
            marks = ", ".join(self.next_placeholder(value) for value in chosen)
            self.clauses.append(f"{column} IN ({marks})")

    def next_placeholder(self, value: object) -> str:
        """A parameter outside the WHERE (a LIMIT, say)."""
        self.params.append(value)
        return self.dialect.placeholder(len(self.params))

    @property
    def where(self) -> str:
        return " AND ".join(self.clauses) or "true"


def log_conditions(dialect: Dialect, after_position: int, log_filter: LogFilter) -> Conditions:
    conditions = Conditions(dialect)
    conditions.add("position > {}", after_position)
    if log_filter.aggregate_types:
        conditions.member("aggregate_type", log_filter.aggregate_types)
    if log_filter.event_types:
        conditions.member("event_type", log_filter.event_types)
    if log_filter.aggregate_id is not None:
        conditions.add("aggregate_id = {}", log_filter.aggregate_id)
    if log_filter.origin is not None:
        conditions.add("origin = {}", log_filter.origin)
    return conditions


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


def audit_conditions(dialect: Dialect, query: AuditQuery, *, time_column: str) -> Conditions:
    """The conditions both audit tables share (they have these columns)."""
    conditions = Conditions(dialect)
    for column, value in (
        ("aggregate_id", query.aggregate_id),
        ("principal", query.principal),
        ("command_id", query.command_id),
    ):
        if value is not None:
            conditions.add(f"{column} = {{}}", value)
    if query.since_us is not None:
        conditions.add(f"{time_column} >= {dialect.micros}", query.since_us)
    if query.until_us is not None:
        conditions.add(f"{time_column} < {dialect.micros}", query.until_us)
    return conditions
