"""Databases as an earlier Chronicle left them: at schema version N, with
every kind of row that version could hold.

The schema comes from the code's own migrations, applied up to N by the
code's own runners (PostgreSQL: ``migrate(conn, target=N)``; SQLite:
``migrate(conn, target)`` for each version up to N), so a migration added
later is picked up without a change here. The rows (``old_rows.rows_at``)
are written in SQL shaped like what the code of version N wrote: the
columns that version's tables had, its encodings (times, JSON, bytes), its
way of handing out positions. At the latest version the same rows written
through the current store must leave the same database behind
(``test_migrations_over_data.py``), which keeps this file's newest SQL
honest; the older shapes are history and do not change.

``empty_places`` names what a database holds no data in (a table without a
row, a column never set, or never set to anything but its default): run on
a freshly filled database, it is how a migration that adds a table or a
column the filler does not write yet makes a test fail.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import psycopg
from psycopg import sql

from service.store.postgres import PostgresStore
from service.store.postgres import migrations as postgres_migrations
from service.store.sql_common import parked_event_row
from service.store.sqlite import migrations as sqlite_migrations
from service.store.sqlite import sql as sqlite_sql
from service.store.sqlite.writer import writing
from tests.support.contents import contents
from tests.support.old_rows import GROUP_FILTER, LEASE_GROUP, LEASE_SECONDS, OldRows, rows_at
from tests.support.postgres import Cluster

POSTGRES_VERSIONS = [m.version for m in postgres_migrations.known_migrations()]
SQLITE_VERSIONS = [m.version for m in sqlite_migrations.MIGRATIONS]

# Columns the database fills in itself (the time a row was written): two
# databases written alike differ there and nowhere else.
DATABASE_TIMES = frozenset(
    {
        "applied_at",
        "taken_at",
        "claimed_at",
        "created_at",
        "created_at_us",
        "forgotten_at",
        "forgotten_at_us",
        "updated_at",
        "joined_at",
        "expires_at",  # a lease's or a member's: now() plus the lease time
        "expires_at_us",  # the same on SQLite
        "parked_at",
        "answered_at",  # a group consumer's report's: now() less how long ago it answered
        "answered_at_us",
        "reported_at",  # and now()
        "reported_at_us",
        "connected_at",  # and now() less how long ago it joined
        "connected_at_us",
        "incarnation",  # not a time: a subscription group's, drawn afresh by the store at each creation
    }
)
# Columns whose default is the only value they can hold.
ALWAYS_DEFAULT = frozenset({("log_head", "id")})  # the one row of PostgreSQL's log head

_AT = "'epoch'::timestamptz + %s * interval '1 microsecond'"


def _rejection(record_rejection: object) -> str | None:
    """A rejection as every version stored it: JSON, keys in this order."""
    if record_rejection is None:
        return None
    kind, reason, message, metadata = (getattr(record_rejection, f) for f in ("kind", "reason", "message", "metadata"))
    data: dict[str, object] = {"kind": kind, "reason": reason, "message": message, "metadata": dict(metadata)}
    violations = getattr(record_rejection, "violations", ())
    if violations:  # written only when there are some (since PostgreSQL 14 / SQLite 11)
        data["violations"] = [list(v) for v in violations]
    return json.dumps(data, separators=(",", ":"))


def _metadata(metadata: Mapping[str, str]) -> str:
    return json.dumps(dict(metadata), separators=(",", ":"), sort_keys=True)


# -- PostgreSQL -------------------------------------------------------------------


def write_postgres(conn: psycopg.Connection[object], rows: OldRows) -> None:
    """``rows`` as the code of ``rows.version`` wrote them, in one transaction."""
    for event in rows.events:
        e = event.stored
        # The JSON copy of payloads came with schema version 15.
        json_column, json_value = (", payload_json", ", %s::jsonb") if rows.holds("payload_json") else ("", "")
        conn.execute(
            "INSERT INTO chronicle.events (position, event_id, aggregate_id, aggregate_type, version, event_type,"
            " schema_version, payload, metadata, command_id, user_id, origin, correlation_id, causation_id,"
            f" recorded_at{json_column}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s,"
            f" {_AT}{json_value})",
            (
                e.position,
                e.event_id,
                e.aggregate_id,
                e.aggregate_type,
                e.version,
                e.event_type,
                e.schema_version,
                e.payload,
                _metadata(e.metadata),
                e.command_id,
                e.user_id,
                e.origin,
                e.correlation_id,
                e.causation_id,
                e.timestamp_us,
                *([None if event.json is None else json.dumps(event.json)] if json_column else []),
            ),
        )
    # Positions came from the log head, under its row lock.
    conn.execute("UPDATE chronicle.log_head SET last_position = %s", (rows.last_position,))
    for c in [*rows.commands, *(s.stored for s in rows.sealed_commands)]:
        columns = "command_id, aggregate_id, command_type, fingerprint, first_version, last_version, rejection"
        values: tuple[object, ...] = (
            c.command_id,
            c.aggregate_id,
            c.command_type,
            c.fingerprint,
            c.first_version,
            c.last_version,
            _rejection(c.rejection),
        )
        if rows.holds("audit"):
            columns += ", principal, user_id, origin"
            values += (c.principal, c.user_id, c.origin)
        times, time_values = f"{_AT}", [c.recorded_at_us]
        if rows.holds("issued_at"):
            columns_at = ", recorded_at, issued_at"
            times += f", {_AT}"
            time_values.append(c.issued_at_us)
        else:
            columns_at = ", recorded_at"
        conn.execute(
            f"INSERT INTO chronicle.commands ({columns}{columns_at}) VALUES ({_marks(columns)}, {times})",
            (*values, *time_values),
        )
    for snapshot in rows.snapshots:
        s = snapshot.stored
        conn.execute(
            "INSERT INTO chronicle.snapshots (aggregate_id, aggregate_type, version, state_type, schema_version, state)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (s.aggregate_id, s.aggregate_type, s.version, s.state_type, s.schema_version, s.state),
        )
    for claim in rows.claims:
        conn.execute(
            "INSERT INTO chronicle.claims (scope, value, aggregate_id) VALUES (%s, %s, %s)",
            (claim.stored.scope, claim.stored.value, claim.stored.aggregate_id),
        )
    for a in rows.audit_entries:
        columns = "command_id, command_type, aggregate_id, principal, user_id, origin, reason, message"
        values = (a.command_id, a.command_type, a.aggregate_id, a.principal, a.user_id, a.origin, a.reason, a.message)
        if rows.holds("audit_outcome"):
            columns += ", outcome"
            values += (a.outcome,)
        if rows.holds("forgetting_and_audit"):
            columns += ", dry_run, peer, occurrences"
            values += (a.dry_run, a.peer, a.occurrences)
        conn.execute(
            f"INSERT INTO chronicle.refusals ({columns}, recorded_at) VALUES ({_marks(columns)}, {_AT})",
            (*values, a.recorded_at_us),
        )
    for key in rows.data_keys:
        if key.wrapped is None:  # a forgotten aggregate's tombstone
            conn.execute(
                "INSERT INTO chronicle.data_keys (aggregate_id, master_key_id, wrapped_key, forgotten_at)"
                " VALUES (%s, NULL, NULL, now())",
                (key.aggregate_id,),
            )
        else:
            conn.execute(
                "INSERT INTO chronicle.data_keys (aggregate_id, master_key_id, wrapped_key) VALUES (%s, %s, %s)",
                (key.aggregate_id, key.master_key_id, key.wrapped),
            )
    for name, position in rows.checkpoints.items():
        if rows.holds("projection_version"):
            conn.execute(
                "INSERT INTO chronicle.projection_checkpoints (name, position, version) VALUES (%s, %s, %s)",
                (name, position, rows.projection_versions.get(name, 1)),
            )
        else:
            conn.execute(
                "INSERT INTO chronicle.projection_checkpoints (name, position) VALUES (%s, %s)", (name, position)
            )
    for document in rows.documents:
        d = document.stored
        if rows.holds("forgetting_and_audit"):  # the aggregates it is derived from, in its row
            conn.execute(
                "INSERT INTO chronicle.projection_documents (projection, key, type_name, data, subjects)"
                " VALUES (%s, %s, %s, %s, %s)",
                (document.projection, d.key, d.type_name, d.data, list(document.subjects)),
            )
            continue
        conn.execute(
            "INSERT INTO chronicle.projection_documents (projection, key, type_name, data) VALUES (%s, %s, %s, %s)",
            (document.projection, d.key, d.type_name, d.data),
        )
    for document in rows.documents:
        if document.due_us is not None:  # a reaction's deadline
            conn.execute(
                "UPDATE chronicle.projection_documents SET due_us = %s WHERE projection = %s AND key = %s",
                (document.due_us, document.projection, document.stored.key),
            )
    for parked in rows.parked:
        conn.execute(
            "INSERT INTO chronicle.projection_parked_events (projection, position, event_id, event_type,"
            " aggregate_id, error, attempts, parked_at_us) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            parked_event_row(parked),
        )
    for member in rows.lease_members:
        if rows.holds("member_version"):
            conn.execute(
                "INSERT INTO chronicle.lease_members (lease_group, member_id, address, expires_at, console, version,"
                " schema_version) VALUES (%s, %s, %s, now() + %s * interval '1 second', %s, %s, %s)",
                (
                    LEASE_GROUP,
                    member.member_id,
                    member.address,
                    LEASE_SECONDS,
                    member.console,
                    member.version,
                    member.schema_version,
                ),
            )
            continue
        if rows.holds("member_console"):
            conn.execute(
                "INSERT INTO chronicle.lease_members (lease_group, member_id, address, expires_at, console)"
                " VALUES (%s, %s, %s, now() + %s * interval '1 second', %s)",
                (LEASE_GROUP, member.member_id, member.address, LEASE_SECONDS, member.console),
            )
            continue
        conn.execute(
            "INSERT INTO chronicle.lease_members (lease_group, member_id, address, expires_at)"
            " VALUES (%s, %s, %s, now() + %s * interval '1 second')",
            (LEASE_GROUP, member.member_id, member.address, LEASE_SECONDS),
        )
    for lease in rows.leases:
        # A lease given up (or never taken) expired at '-infinity'; a held one
        # when its holder stops renewing it.
        conn.execute(
            "INSERT INTO chronicle.leases (lease_group, name, owner, epoch, expires_at) VALUES (%s, %s, %s, %s,"
            " CASE WHEN %s THEN now() + %s * interval '1 second' ELSE '-infinity' END)",
            (LEASE_GROUP, lease.name, lease.owner, lease.epoch, lease.owner is not None, LEASE_SECONDS),
        )
    for group in rows.groups:
        spec = group.spec
        conn.execute(
            "INSERT INTO chronicle.subscription_groups (name, filter, start_position, segments, max_attempts,"
            " retry_backoff_ms, max_retry_backoff_ms, ack_timeout_ms) VALUES (%s, %s::jsonb, %s, %s, %s, %s, %s, %s)",
            (
                spec.name,
                GROUP_FILTER,
                spec.start_position,
                spec.segments,
                spec.max_attempts,
                spec.retry_backoff_ms,
                spec.max_retry_backoff_ms,
                spec.ack_timeout_ms,
            ),
        )
        if rows.holds("incarnation"):
            conn.execute(
                "UPDATE chronicle.subscription_groups SET incarnation = %s WHERE name = %s",
                (spec.incarnation, spec.name),
            )
        if rows.holds("unanswered"):
            conn.execute(
                "UPDATE chronicle.subscription_groups SET max_unanswered_timeouts = %s WHERE name = %s",
                (spec.max_unanswered_timeouts, spec.name),
            )
        for checkpoint in group.checkpoints:
            conn.execute(
                "INSERT INTO chronicle.group_segments (group_name, segment, position, acknowledged)"
                " VALUES (%s, %s, %s, %s)",
                (spec.name, checkpoint.segment, checkpoint.position, checkpoint.acknowledged),
            )
            if rows.holds("group_counts"):
                conn.execute(
                    "UPDATE chronicle.group_segments SET skipped = %s, dismissed = %s"
                    " WHERE group_name = %s AND segment = %s",
                    (checkpoint.skipped, checkpoint.dismissed, spec.name, checkpoint.segment),
                )
    for member_id, report in rows.consumer_reports.items():
        conn.execute(
            "INSERT INTO chronicle.group_consumer_reports (group_name, member_id, replica_id, replica_address,"
            " in_flight, answered_at, reported_at)"
            " VALUES (%s, %s, %s, %s, %s, now() - %s * interval '1 second', now())",
            (
                rows.groups[0].spec.name,
                member_id,
                report.replica_id,
                report.replica_address,
                report.in_flight,
                report.answered_ago,
            ),
        )
        if rows.holds("consumer_connected"):
            conn.execute(
                "UPDATE chronicle.group_consumer_reports SET connected_at = now() - %s * interval '1 second'"
                " WHERE member_id = %s",
                (report.connected_ago, member_id),
            )
    for feature in rows.features:
        conn.execute("INSERT INTO chronicle.cluster_features (name) VALUES (%s)", (feature,))
    for settled in rows.settled_ahead:
        conn.execute(
            "INSERT INTO chronicle.group_settled_ahead (group_name, segment, event_id, position, outcome)"
            " VALUES (%s, 1, %s, %s, %s)",
            (rows.groups[0].spec.name, settled.event_id, settled.position, settled.outcome),
        )
    for entry in rows.group_parked:
        # parked_at: the parking server's now() (a fixed one here) before
        # migration 27, its clock's time, given, from it on.
        conn.execute(
            "INSERT INTO chronicle.group_parked (group_name, event_id, position, segment, aggregate_id, attempts,"
            " reason, replaying, parked_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s,"
            " timestamptz 'epoch' + %s * interval '1 microsecond')",
            (
                rows.groups[0].spec.name,
                entry.event_id,
                entry.position,
                entry.segment,
                entry.aggregate_id,
                entry.attempts,
                entry.reason,
                entry.replaying,
                entry.parked_at_us,
            ),
        )
        if rows.holds("parked_type"):
            conn.execute(
                "UPDATE chronicle.group_parked SET event_type = %s WHERE event_id = %s",
                (entry.event_type, entry.event_id),
            )


def _marks(columns: str) -> str:
    return ", ".join("%s::jsonb" if c.strip() == "rejection" else "%s" for c in columns.split(","))


async def build_postgres(url: str, version: int, *, filled: bool) -> None:
    """The empty database at ``url`` brought to schema ``version`` by the
    code's migrations, then (``filled``) given every kind of row it can hold."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        reached = await postgres_migrations.migrate(conn, target=version)
    assert reached == version, f"migrated to {reached}, not {version}"
    if filled:
        with psycopg.connect(url) as conn:
            write_postgres(conn, rows_at("postgres", version))


# The key of the template copy_current copies (no schema version is 0).
CURRENT = (0, False, True)


class PostgresVersions:
    """Databases at each schema version on the suite's cluster: each built
    once per session (empty, or filled; migrated by the current store, or
    not), then copied for each test that asks (``CREATE DATABASE …
    TEMPLATE``: a file copy, no SQL replayed)."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._tag = uuid.uuid4().hex[:8]
        self._templates: dict[tuple[int, bool, bool], str] = {}
        self._fresh_schema: Counter[str] | None = None

    async def _template(self, version: int, filled: bool, migrated: bool = False) -> str:
        name = self._templates.get((version, filled, migrated))
        if name is None:
            state = f"{'filled' if filled else 'empty'}{'_migrated' if migrated else ''}"
            name = f"chronicle_v{version}_{state}_{self._tag}"
            if migrated:
                self._create(name, await self._template(version, filled))
                store = PostgresStore(self._cluster.url_for(name), pool_size=1)
                await store.open()  # the current store migrates it
                await store.close()
            else:
                self._create(name)
                await build_postgres(self._cluster.url_for(name), version, filled=filled)
            self._templates[(version, filled, migrated)] = name
        return name

    def _create(self, name: str, template: str | None = None) -> None:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        with psycopg.connect(self._cluster.admin_url, autocommit=True) as conn:
            conn.execute(query)

    async def copy(self, version: int, *, filled: bool, migrated: bool = False) -> str:
        """A new database at schema ``version`` (``migrated``: then migrated
        by the current store, once for every copy); the caller drops it."""
        template = await self._template(version, filled, migrated)
        name = f"chronicle_test_{uuid.uuid4().hex[:12]}"
        self._create(name, template)
        return self._cluster.url_for(name)

    async def copy_current(self) -> str:
        """A new database as the current store leaves an empty one after
        opening it (its migrations applied, no rows): built once, copied
        for each test; the caller drops it."""
        name = self._templates.get(CURRENT)
        if name is None:
            name = f"chronicle_current_{self._tag}"
            self._create(name)
            store = PostgresStore(self._cluster.url_for(name), pool_size=1)
            await store.open()
            await store.close()
            self._templates[CURRENT] = name
        copied = f"chronicle_test_{uuid.uuid4().hex[:12]}"
        self._create(copied, name)
        return self._cluster.url_for(copied)

    async def fresh_schema(self) -> Counter[str]:
        """The schema the current store creates in an empty database, as
        ``contents`` lists it."""
        if self._fresh_schema is None:
            url = self._cluster.create_database()
            try:
                store = PostgresStore(url, pool_size=1)
                await store.open()
                await store.close()
                self._fresh_schema = (await contents(store)).tables["schema"]
            finally:
                self._cluster.drop_database(url)
        return self._fresh_schema

    def drop_all(self) -> None:
        for name in self._templates.values():
            self._cluster.drop_database(self._cluster.url_for(name))
        self._templates.clear()


DatabaseAt = Callable[..., Awaitable[str]]


def empty_places_postgres(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT relname FROM pg_class WHERE relnamespace = 'chronicle'::regnamespace AND relkind IN ('r', 'p')"
                " ORDER BY relname"
            )
        ]
        found = []
        for table in tables:
            relation = sql.SQL("chronicle.{}").format(sql.Identifier(table))
            if not _holds(conn, sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(relation)):
                found.append(f"table {table} holds no row")
                continue
            columns = conn.execute(
                "SELECT column_name, column_default FROM information_schema.columns"
                " WHERE table_schema = 'chronicle' AND table_name = %s ORDER BY ordinal_position",
                (table,),
            ).fetchall()
            for column, default in columns:
                found += _column_places(conn, table, relation, column, default)
    return found


def _column_places(
    conn: psycopg.Connection[object], table: str, relation: sql.Composed, column: str, default: str | None
) -> list[str]:
    name = sql.Identifier(column)
    if not _holds(conn, sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {} IS NOT NULL)").format(relation, name)):
        return [f"column {table}.{column} is NULL in every row"]
    # A constant default (not now(), not a sequence): some row must hold
    # another value, or the filler never wrote the column.
    if default is None or "(" in default or (table, column) in ALWAYS_DEFAULT:
        return []
    differs = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {} IS DISTINCT FROM ({}))").format(
        relation,
        name,
        sql.SQL(default),
    )
    if not _holds(conn, differs):
        return [f"column {table}.{column} holds its default {default} in every row"]
    return []


def _holds(conn: psycopg.Connection[object], query: sql.Composed) -> bool:
    row = conn.execute(query).fetchone()
    return row is not None and bool(row[0])  # type: ignore[index]


def comparable_rows_postgres(url: str) -> dict[str, list[str]]:
    """Each table's rows as text, without the columns the database fills in itself."""
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT relname FROM pg_class WHERE relnamespace = 'chronicle'::regnamespace AND relkind IN ('r', 'p')"
            )
        ]
        return {
            table: sorted(
                text
                for (text,) in conn.execute(
                    sql.SQL("SELECT (to_jsonb(t) - %s::text[])::text FROM chronicle.{} AS t").format(
                        sql.Identifier(table)
                    ),
                    (sorted(DATABASE_TIMES),),
                )
            )
            for table in tables
        }


# -- SQLite -----------------------------------------------------------------------------


def write_sqlite(conn: sqlite3.Connection, rows: OldRows) -> None:
    """``rows`` as the code of ``rows.version`` wrote them (the caller holds a transaction)."""
    for event in rows.events:
        e = event.stored
        # The position is the table's AUTOINCREMENT key, handed out in order.
        (position,) = conn.execute(
            "INSERT INTO events (event_id, aggregate_id, aggregate_type, version, event_type, schema_version,"
            " payload, metadata, command_id, user_id, origin, correlation_id, causation_id, recorded_at_us)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING position",
            (
                e.event_id,
                e.aggregate_id,
                e.aggregate_type,
                e.version,
                e.event_type,
                e.schema_version,
                e.payload,
                _metadata(e.metadata),
                e.command_id,
                e.user_id,
                e.origin,
                e.correlation_id,
                e.causation_id,
                e.timestamp_us,
            ),
        ).fetchone()
        assert position == e.position, f"SQLite gave position {position} to the event the rows place at {e.position}"
    for c in [*rows.commands, *(s.stored for s in rows.sealed_commands)]:
        values: tuple[object, ...] = (
            c.command_id,
            c.aggregate_id,
            c.command_type,
            c.fingerprint,
            c.first_version,
            c.last_version,
            _rejection(c.rejection),
        )
        columns = "command_id, aggregate_id, command_type, fingerprint, first_version, last_version, rejection"
        if rows.holds("audit"):
            columns += ", principal, user_id, origin, recorded_at_us"
            values += (c.principal, c.user_id, c.origin, c.recorded_at_us)
        if rows.holds("issued_at"):
            columns += ", issued_at_us"
            values += (c.issued_at_us,)
        conn.execute(f"INSERT INTO commands ({columns}) VALUES ({', '.join('?' * len(values))})", values)
    for snapshot in rows.snapshots:
        s = snapshot.stored
        conn.execute(
            "INSERT INTO snapshots (aggregate_id, aggregate_type, version, state_type, schema_version, state)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (s.aggregate_id, s.aggregate_type, s.version, s.state_type, s.schema_version, s.state),
        )
    for claim in rows.claims:
        conn.execute(
            "INSERT INTO claims (scope, value, aggregate_id) VALUES (?, ?, ?)",
            (claim.stored.scope, claim.stored.value, claim.stored.aggregate_id),
        )
    for a in rows.audit_entries:
        columns = "recorded_at_us, command_id, command_type, aggregate_id, principal, user_id, origin, reason, message"
        values = (
            a.recorded_at_us,
            a.command_id,
            a.command_type,
            a.aggregate_id,
            a.principal,
            a.user_id,
            a.origin,
            a.reason,
            a.message,
        )
        if rows.holds("audit_outcome"):
            columns += ", outcome"
            values += (a.outcome,)
        if rows.holds("forgetting_and_audit"):
            columns += ", dry_run, peer, occurrences"
            values += (int(a.dry_run), a.peer, a.occurrences)
        conn.execute(f"INSERT INTO refusals ({columns}) VALUES ({', '.join('?' * len(values))})", values)
    for key in rows.data_keys:
        written_at = 1_767_225_600_000_000
        conn.execute(
            "INSERT INTO data_keys (aggregate_id, master_key_id, wrapped_key, created_at_us, forgotten_at_us)"
            " VALUES (?, ?, ?, ?, ?)",
            (key.aggregate_id, key.master_key_id, key.wrapped, written_at, written_at if key.wrapped is None else None),
        )
    for name, position in rows.checkpoints.items():
        if rows.holds("projection_version"):
            conn.execute(
                "INSERT INTO projection_checkpoints (name, position, version) VALUES (?, ?, ?)",
                (name, position, rows.projection_versions.get(name, 1)),
            )
        else:
            conn.execute("INSERT INTO projection_checkpoints (name, position) VALUES (?, ?)", (name, position))
    for document in rows.documents:
        d = document.stored
        conn.execute(
            "INSERT INTO projection_documents (projection, key, type_name, data) VALUES (?, ?, ?, ?)",
            (document.projection, d.key, d.type_name, d.data),
        )
        for subject in document.subjects:  # the aggregates it is derived from, a row each
            conn.execute(
                "INSERT INTO projection_subjects (projection, key, subject) VALUES (?, ?, ?)",
                (document.projection, d.key, subject),
            )
        if document.due_us is not None:  # a reaction's deadline
            conn.execute(
                "UPDATE projection_documents SET due_us = ? WHERE projection = ? AND key = ?",
                (document.due_us, document.projection, d.key),
            )
    for parked in rows.parked:
        conn.execute(
            "INSERT INTO projection_parked_events (projection, position, event_id, event_type, aggregate_id,"
            " error, attempts, parked_at_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            parked_event_row(parked),
        )
    now_us = time.time_ns() // 1000
    for member in rows.lease_members:
        expires_at_us = now_us + int(LEASE_SECONDS * 1_000_000)
        if rows.holds("member_version"):
            conn.execute(
                "INSERT INTO lease_members (lease_group, member_id, address, expires_at_us, console, version,"
                " schema_version) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    LEASE_GROUP,
                    member.member_id,
                    member.address,
                    expires_at_us,
                    member.console,
                    member.version,
                    member.schema_version,
                ),
            )
            continue
        if rows.holds("member_console"):
            conn.execute(
                "INSERT INTO lease_members (lease_group, member_id, address, expires_at_us, console)"
                " VALUES (?, ?, ?, ?, ?)",
                (LEASE_GROUP, member.member_id, member.address, expires_at_us, member.console),
            )
            continue
        conn.execute(
            "INSERT INTO lease_members (lease_group, member_id, address, expires_at_us) VALUES (?, ?, ?, ?)",
            (LEASE_GROUP, member.member_id, member.address, expires_at_us),
        )
    for lease in rows.leases:
        # A lease given up (or never taken) expired at 0; a held one when
        # its holder stops renewing it.
        expires_at_us = now_us + int(LEASE_SECONDS * 1_000_000) if lease.owner is not None else 0
        conn.execute(
            "INSERT INTO leases (lease_group, name, owner, epoch, expires_at_us) VALUES (?, ?, ?, ?, ?)",
            (LEASE_GROUP, lease.name, lease.owner, lease.epoch, expires_at_us),
        )
    for group in rows.groups:
        spec = group.spec
        conn.execute(
            "INSERT INTO subscription_groups (name, filter, start_position, segments, max_attempts, retry_backoff_ms,"
            " max_retry_backoff_ms, ack_timeout_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                spec.name,
                GROUP_FILTER,
                spec.start_position,
                spec.segments,
                spec.max_attempts,
                spec.retry_backoff_ms,
                spec.max_retry_backoff_ms,
                spec.ack_timeout_ms,
            ),
        )
        if rows.holds("incarnation"):
            conn.execute("UPDATE subscription_groups SET incarnation = ? WHERE name = ?", (spec.incarnation, spec.name))
        if rows.holds("unanswered"):
            conn.execute(
                "UPDATE subscription_groups SET max_unanswered_timeouts = ? WHERE name = ?",
                (spec.max_unanswered_timeouts, spec.name),
            )
        for checkpoint in group.checkpoints:
            conn.execute(
                "INSERT INTO group_segments (group_name, segment, position, acknowledged) VALUES (?, ?, ?, ?)",
                (spec.name, checkpoint.segment, checkpoint.position, checkpoint.acknowledged),
            )
            if rows.holds("group_counts"):
                conn.execute(
                    "UPDATE group_segments SET skipped = ?, dismissed = ? WHERE group_name = ? AND segment = ?",
                    (checkpoint.skipped, checkpoint.dismissed, spec.name, checkpoint.segment),
                )
    for member_id, report in rows.consumer_reports.items():
        answered_ago_us = round((report.answered_ago or 0.0) * 1_000_000)
        conn.execute(
            "INSERT INTO group_consumer_reports (group_name, member_id, replica_id, replica_address, in_flight,"
            " answered_at_us, reported_at_us) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                rows.groups[0].spec.name,
                member_id,
                report.replica_id,
                report.replica_address,
                report.in_flight,
                now_us - answered_ago_us,
                now_us,
            ),
        )
        if rows.holds("consumer_connected") and report.connected_ago is not None:
            conn.execute(
                "UPDATE group_consumer_reports SET connected_at_us = ? WHERE member_id = ?",
                (now_us - round(report.connected_ago * 1_000_000), member_id),
            )
    for feature in rows.features:
        conn.execute("INSERT INTO cluster_features (name) VALUES (?)", (feature,))
    for settled in rows.settled_ahead:
        conn.execute(
            "INSERT INTO group_settled_ahead (group_name, segment, event_id, position, outcome) VALUES (?, 1, ?, ?, ?)",
            (rows.groups[0].spec.name, settled.event_id, settled.position, settled.outcome),
        )
    for entry in rows.group_parked:
        conn.execute(
            "INSERT INTO group_parked (group_name, event_id, position, segment, aggregate_id, attempts, reason,"
            " replaying) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rows.groups[0].spec.name,
                entry.event_id,
                entry.position,
                entry.segment,
                entry.aggregate_id,
                entry.attempts,
                entry.reason,
                int(entry.replaying),
            ),
        )
        if rows.holds("parked_type"):
            conn.execute(
                "UPDATE group_parked SET event_type = ?, parked_at_us = ? WHERE event_id = ?",
                (entry.event_type, entry.parked_at_us, entry.event_id),
            )


def build_sqlite(path: Path, version: int, *, filled: bool) -> None:
    """A new file at ``path`` at schema ``version`` (the code's migrations
    and connection settings), then (``filled``) with every kind of row it can hold."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in sqlite_sql.CONNECTION_SETUP:
            conn.execute(statement)
        for target in range(1, version + 1):
            sqlite_migrations.migrate(conn, target)
        assert sqlite_migrations.schema_version(conn) == version
        if filled:
            with writing(conn):
                write_sqlite(conn, rows_at("sqlite", version))
    finally:
        conn.close()


def _sqlite_tables(conn: sqlite3.Connection, *, internal: bool = False) -> list[str]:
    pattern = "" if internal else " AND name NOT LIKE 'sqlite_%'"
    return [
        name for (name,) in conn.execute(f"SELECT name FROM sqlite_master WHERE type = 'table'{pattern} ORDER BY name")
    ]


def empty_places_sqlite(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        found = []
        for table in _sqlite_tables(conn):
            if not conn.execute(f'SELECT EXISTS (SELECT 1 FROM "{table}")').fetchone()[0]:
                found.append(f"table {table} holds no row")
                continue
            for _, column, _, _, default, _ in conn.execute(f'PRAGMA table_info("{table}")').fetchall():
                if not conn.execute(f'SELECT EXISTS (SELECT 1 FROM "{table}" WHERE "{column}" IS NOT NULL)').fetchone()[
                    0
                ]:
                    found.append(f"column {table}.{column} is NULL in every row")
                elif default is not None and (table, column) not in ALWAYS_DEFAULT:
                    differs = f'SELECT EXISTS (SELECT 1 FROM "{table}" WHERE "{column}" IS NOT ({default}))'
                    if not conn.execute(differs).fetchone()[0]:
                        found.append(f"column {table}.{column} holds its default {default} in every row")
        return found
    finally:
        conn.close()


def comparable_rows_sqlite(path: Path) -> dict[str, list[str]]:
    """Each table's rows as text (the positions' sequence too), without the
    columns the store fills in with the time of writing."""
    conn = sqlite3.connect(path)
    try:
        result = {}
        for table in _sqlite_tables(conn, internal=True):
            if table == "sqlite_stat1":
                continue
            columns = [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")') if row[1] not in DATABASE_TIMES]
            listed = ", ".join(f'"{c}"' for c in columns)
            result[table] = sorted(repr(row) for row in conn.execute(f'SELECT {listed} FROM "{table}"'))
        return result
    finally:
        conn.close()
