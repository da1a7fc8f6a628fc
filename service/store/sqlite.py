"""The embedded default store: one SQLite file, no server to install.

SQLite serializes writers, so positions are assigned and committed in the
same order and a reader by position can never skip an event. All work runs
on one dedicated thread with one connection; the event loop never blocks on
the file. Durability: WAL journal with ``synchronous=FULL``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import TypeVar

from service.errors import CommandAlreadyRecorded, ConcurrencyConflict, NotUnique, StoreUnavailable
from service.store.base import DEFAULT_KEEP_SNAPSHOTS, AggregateQuery, AuditQuery, check_keep_snapshots
from service.store.leasing import Fencing
from service.store.notifier import CommitNotifier
from service.store.records import (
    ACCEPTED,
    HIDDEN_CLAIM_MARK,
    REFUSED,
    AggregateHead,
    AuditEntry,
    ClaimChange,
    CommandRecord,
    DataKey,
    DocumentWrite,
    HeldClaim,
    LogFilter,
    LogPage,
    NewEvent,
    RecordedEvent,
    Snapshot,
    StoredDocument,
)
from service.store.serialization import dump_metadata, dump_rejection, load_metadata, load_rejection
from service.store.sole_owner import SoleOwnerLeases

T = TypeVar("T")
# Migration i brings the schema from version i to i + 1 (PRAGMA user_version).
MIGRATIONS = (
    "sqlite_schema.sql",
    "sqlite_migrate_2.sql",
    "sqlite_migrate_3.sql",
    "sqlite_migrate_4.sql",
    "sqlite_migrate_5.sql",
    "sqlite_migrate_6.sql",
    "sqlite_migrate_7.sql",
)
SCHEMA_VERSION = len(MIGRATIONS)

_EVENT_COLUMNS = (
    "event_id, aggregate_id, aggregate_type, version, position, event_type, schema_version, payload,"
    " recorded_at_us, command_id, user_id, origin, correlation_id, causation_id, metadata"
)
_COMMAND_COLUMNS = (
    "command_id, aggregate_id, command_type, fingerprint, first_version, last_version, rejection,"
    " principal, user_id, origin, recorded_at_us"
)
_AUDIT_COLUMNS = "recorded_at_us, command_id, command_type, aggregate_id, principal, user_id, origin"
_SNAPSHOT_COLUMNS = "aggregate_id, aggregate_type, version, state_type, schema_version, state"
# Below the newest ``keep`` (the OFFSET is keep - 1); with fewer, the
# subquery is NULL and nothing goes.
_PRUNE_SNAPSHOTS = (
    "DELETE FROM snapshots WHERE aggregate_id = ? AND version <"
    " (SELECT version FROM snapshots WHERE aggregate_id = ? ORDER BY version DESC LIMIT 1 OFFSET ?)"
)


def _event(row: sqlite3.Row) -> RecordedEvent:
    return RecordedEvent(
        event_id=row[0],
        aggregate_id=row[1],
        aggregate_type=row[2],
        version=row[3],
        position=row[4],
        event_type=row[5],
        schema_version=row[6],
        payload=bytes(row[7]),
        timestamp_us=row[8],
        command_id=row[9],
        user_id=row[10],
        origin=row[11],
        correlation_id=row[12],
        causation_id=row[13],
        metadata=load_metadata(row[14]),
    )


def _migrate(conn: sqlite3.Connection, target: int) -> None:
    """Bring the schema to version ``target``, once, even when several
    processes open a new file at the same moment: the version is read again
    under the write lock, and the script and the new version commit together."""
    script = resources.files("service.store").joinpath(MIGRATIONS[target - 1]).read_text()
    conn.execute("BEGIN IMMEDIATE")
    try:
        (current,) = conn.execute("PRAGMA user_version").fetchone()
        if current < target:
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {int(target)}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    """The statements of a migration script (``executescript`` would commit
    the surrounding transaction)."""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    return statements


def _command(row: sqlite3.Row) -> CommandRecord:
    return CommandRecord(
        command_id=row[0],
        aggregate_id=row[1],
        command_type=row[2],
        fingerprint=bytes(row[3]),
        first_version=row[4],
        last_version=row[5],
        rejection=load_rejection(row[6]),
        principal=row[7],
        user_id=row[8],
        origin=row[9],
        recorded_at_us=row[10],
    )


class SqliteStore(SoleOwnerLeases):
    def __init__(self, path: str | Path, *, keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS) -> None:
        self._path = str(path)
        self._keep_snapshots = check_keep_snapshots(keep_snapshots)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chronicle-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._commits = CommitNotifier()

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.OperationalError as error:
            # Locked or unreadable file, full disk: the store cannot serve now.
            raise StoreUnavailable(f"SQLite: {error}") from error

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable("the SQLite store is not open")
        return self._conn

    # -- lifecycle -------------------------------------------------------

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        if self._conn is not None:
            return
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")
            (version,) = conn.execute("PRAGMA user_version").fetchone()
        except sqlite3.Error as error:
            raise StoreUnavailable(f"cannot open SQLite database {self._path}: {error}") from error
        if version > SCHEMA_VERSION:
            conn.close()
            raise StoreUnavailable(
                f"{self._path} has schema version {version}; this Chronicle knows up to {SCHEMA_VERSION}"
            )
        try:
            for target in range(version + 1, SCHEMA_VERSION + 1):
                _migrate(conn, target)
        except sqlite3.Error as error:
            conn.close()
            raise StoreUnavailable(f"cannot migrate {self._path} to schema {SCHEMA_VERSION}: {error}") from error
        self._conn = conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._db.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    async def ping(self) -> None:
        await self._run(lambda: self._db.execute("SELECT 1").fetchone())

    # -- writes ----------------------------------------------------------

    async def append(
        self,
        aggregate_id: str,
        events: Sequence[NewEvent],
        expected_version: int,
        *,
        commands: Sequence[CommandRecord] = (),
        claims: Sequence[ClaimChange] = (),
    ) -> list[RecordedEvent]:
        recorded = await self._run(self._append, aggregate_id, events, expected_version, commands, claims)
        if recorded:
            self._commits.notify(recorded[-1].position)
        return recorded

    def _append(
        self,
        aggregate_id: str,
        events: Sequence[NewEvent],
        expected_version: int,
        commands: Sequence[CommandRecord],
        claims: Sequence[ClaimChange],
    ) -> list[RecordedEvent]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for command in commands:
                self._refuse_recorded(command.command_id)
            recorded = self._insert_events(aggregate_id, events, expected_version)
            for command in commands:
                self._insert_command(command)
            for claim in claims:
                self._change_claim(aggregate_id, claim)
            db.execute("COMMIT")
            return recorded
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _insert_events(self, aggregate_id: str, events: Sequence[NewEvent], expected: int) -> list[RecordedEvent]:
        db = self._db
        (current,) = db.execute(
            "SELECT COALESCE(MAX(version), 0) FROM events WHERE aggregate_id = ?", (aggregate_id,)
        ).fetchone()
        if current != expected:
            raise ConcurrencyConflict(aggregate_id, expected, current=current)
        recorded = []
        for version, new in enumerate(events, start=expected + 1):
            try:
                (position,) = db.execute(
                    "INSERT INTO events (event_id, aggregate_id, aggregate_type, version, event_type,"
                    " schema_version, payload, metadata, command_id, user_id, origin, correlation_id,"
                    " causation_id, recorded_at_us) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) RETURNING position",
                    (
                        new.event_id,
                        aggregate_id,
                        new.aggregate_type,
                        version,
                        new.event_type,
                        new.schema_version,
                        new.payload,
                        dump_metadata(new.metadata),
                        new.command_id,
                        new.user_id,
                        new.origin,
                        new.correlation_id,
                        new.causation_id,
                        new.timestamp_us,
                    ),
                ).fetchone()
            except sqlite3.IntegrityError as error:
                # Unreachable while writers hold BEGIN IMMEDIATE, kept so that
                # the unique (aggregate_id, version) is what finally decides.
                if "events.aggregate_id, events.version" in str(error):
                    raise ConcurrencyConflict(aggregate_id, expected) from error
                raise
            recorded.append(RecordedEvent.committed(new, aggregate_id=aggregate_id, version=version, position=position))
        return recorded

    def _refuse_recorded(self, command_id: str) -> None:
        row = self._db.execute(
            f"SELECT {_COMMAND_COLUMNS} FROM commands WHERE command_id = ?", (command_id,)
        ).fetchone()
        if row is not None:
            raise CommandAlreadyRecorded(_command(row))

    def _insert_command(self, command: CommandRecord) -> None:
        self._db.execute(
            f"INSERT INTO commands ({_COMMAND_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
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
            ),
        )

    def _change_claim(self, aggregate_id: str, claim: ClaimChange) -> None:
        db = self._db
        if claim.release:
            db.execute(
                "DELETE FROM claims WHERE scope = ? AND value = ? AND aggregate_id = ?",
                (claim.scope, claim.value, aggregate_id),
            )
            return
        # The primary key (scope, value) decides; holding it already is fine.
        db.execute(
            "INSERT INTO claims (scope, value, aggregate_id) VALUES (?,?,?) ON CONFLICT (scope, value) DO NOTHING",
            (claim.scope, claim.value, aggregate_id),
        )
        (holder,) = db.execute(
            "SELECT aggregate_id FROM claims WHERE scope = ? AND value = ?", (claim.scope, claim.value)
        ).fetchone()
        if holder != aggregate_id:
            raise NotUnique(claim.scope, claim.value)

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        await self._run(self._save_snapshot, snapshot)

    def _save_snapshot(self, snapshot: Snapshot) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                f"INSERT INTO snapshots ({_SNAPSHOT_COLUMNS}) VALUES (?,?,?,?,?,?)"
                " ON CONFLICT (aggregate_id, version) DO UPDATE SET aggregate_type = excluded.aggregate_type,"
                " state_type = excluded.state_type, schema_version = excluded.schema_version, state = excluded.state",
                (
                    snapshot.aggregate_id,
                    snapshot.aggregate_type,
                    snapshot.version,
                    snapshot.state_type,
                    snapshot.schema_version,
                    snapshot.state,
                ),
            )
            db.execute(_PRUNE_SNAPSHOTS, (snapshot.aggregate_id, snapshot.aggregate_id, self._keep_snapshots - 1))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- reads -----------------------------------------------------------

    async def find_command(self, command_id: str) -> CommandRecord | None:
        row = await self._run(
            lambda: self._db.execute(
                f"SELECT {_COMMAND_COLUMNS} FROM commands WHERE command_id = ?", (command_id,)
            ).fetchone()
        )
        return None if row is None else _command(row)

    async def head(self, aggregate_id: str) -> AggregateHead | None:
        row = await self._run(
            lambda: self._db.execute(
                "SELECT aggregate_type, version FROM events WHERE aggregate_id = ? ORDER BY version DESC LIMIT 1",
                (aggregate_id,),
            ).fetchone()
        )
        return None if row is None else AggregateHead(row[0], row[1])

    async def read_log(self, after_position: int, log_filter: LogFilter, limit: int) -> LogPage:
        where = ["position > ?"]
        params: list[object] = [after_position]
        for column, values in (("aggregate_type", log_filter.aggregate_types), ("event_type", log_filter.event_types)):
            if values:
                where.append(f"{column} IN ({','.join('?' * len(values))})")
                params.extend(sorted(values))
        for column, value in (("aggregate_id", log_filter.aggregate_id), ("origin", log_filter.origin)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = f"SELECT {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY position LIMIT ?"
        params.append(limit)

        def read() -> tuple[list[sqlite3.Row], int]:
            # One read transaction: the page and the log's end from the same
            # snapshot (another process may be writing the file). SQLite has
            # one writer at a time, so positions commit in order: never a gap
            # that fills in later.
            self._db.execute("BEGIN")
            try:
                rows = self._db.execute(sql, params).fetchall()
                (head,) = self._db.execute("SELECT COALESCE(MAX(position), 0) FROM events").fetchone()
            finally:
                self._db.execute("COMMIT")
            return rows, head

        rows, head = await self._run(read)
        events = tuple(_event(row) for row in rows)
        scanned_to = events[-1].position if len(events) == limit else max(head, after_position)
        return LogPage(events, scanned_to)

    async def projection_position(self, name: str) -> int:
        row = await self._run(
            lambda: self._db.execute("SELECT position FROM projection_checkpoints WHERE name = ?", (name,)).fetchone()
        )
        return int(row[0]) if row else 0

    async def load_document(self, projection: str, key: str) -> StoredDocument | None:
        row = await self._run(
            lambda: self._db.execute(
                "SELECT key, type_name, data FROM projection_documents WHERE projection = ? AND key = ?",
                (projection, key),
            ).fetchone()
        )
        return None if row is None else StoredDocument(row[0], row[1], bytes(row[2]))

    async def commit_projection(
        self,
        name: str,
        *,
        expected_position: int,
        new_position: int,
        writes: Sequence[DocumentWrite],
        fencing: Fencing | None = None,
    ) -> None:
        def commit() -> None:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT position FROM projection_checkpoints WHERE name = ?", (name,)).fetchone()
                current = int(row[0]) if row else 0
                if current != expected_position:
                    raise ConcurrencyConflict(f"projection:{name}", expected_position, current=current)
                for write in writes:
                    if write.data is None:
                        db.execute(
                            "DELETE FROM projection_documents WHERE projection = ? AND key = ?", (name, write.key)
                        )
                    else:
                        db.execute(
                            "INSERT INTO projection_documents (projection, key, type_name, data) VALUES (?,?,?,?)"
                            " ON CONFLICT (projection, key) DO UPDATE SET type_name = excluded.type_name,"
                            " data = excluded.data",
                            (name, write.key, write.type_name, write.data),
                        )
                db.execute(
                    "INSERT INTO projection_checkpoints (name, position) VALUES (?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                    (name, new_position),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

        await self._run(commit)

    async def log_head(self) -> int:
        (head,) = await self._run(lambda: self._db.execute("SELECT COALESCE(MAX(position), 0) FROM events").fetchone())
        return int(head)

    async def wait_for_commit(self, after_position: int, max_wait: float) -> None:
        # Appends through this store wake readers at once; appends by another
        # process on the same file are found when max_wait expires.
        await self._commits.wait_beyond(after_position, max_wait)

    async def read_aggregate(self, aggregate_id: str, query: AggregateQuery = AggregateQuery()) -> list[RecordedEvent]:
        where = ["aggregate_id = ?", "version >= ?"]
        params: list[object] = [aggregate_id, max(query.from_version, 1)]
        if query.to_version is not None:
            where.append("version <= ?")
            params.append(query.to_version)
        if query.origin is not None:
            where.append("origin = ?")
            params.append(query.origin)
        if query.event_types:
            where.append(f"event_type IN ({','.join('?' * len(query.event_types))})")
            params.extend(sorted(query.event_types))
        sql = f"SELECT {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY version"
        sql += " DESC" if query.backwards else ""
        if query.limit is not None:
            sql += " LIMIT ?"
            params.append(query.limit)
        rows = await self._run(lambda: self._db.execute(sql, params).fetchall())
        return [_event(row) for row in rows]

    async def version_at(self, aggregate_id: str, timestamp_us: int) -> int:
        (version,) = await self._run(
            lambda: self._db.execute(
                "SELECT COALESCE("
                " (SELECT MIN(version) - 1 FROM events WHERE aggregate_id = ? AND recorded_at_us > ?),"
                " (SELECT COALESCE(MAX(version), 0) FROM events WHERE aggregate_id = ?))",
                (aggregate_id, timestamp_us, aggregate_id),
            ).fetchone()
        )
        return int(version)

    async def claim_owner(self, scope: str, value: str) -> str | None:
        row = await self._run(
            lambda: self._db.execute(
                "SELECT aggregate_id FROM claims WHERE scope = ? AND value = ?", (scope, value)
            ).fetchone()
        )
        return None if row is None else str(row[0])

    async def claims_in_clear(self, limit: int) -> list[HeldClaim]:
        rows = await self._run(
            lambda: self._db.execute(
                "SELECT scope, value, aggregate_id FROM claims WHERE substr(value, 1, 1) <> ? LIMIT ?",
                (HIDDEN_CLAIM_MARK, limit),
            ).fetchall()
        )
        return [HeldClaim(r[0], r[1], r[2]) for r in rows]

    async def hide_claim(self, claim: HeldClaim, hidden_value: str) -> bool:
        def hide() -> bool:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                dropped = db.execute(
                    "DELETE FROM claims WHERE scope = ? AND value = ? AND aggregate_id = ?",
                    (claim.scope, claim.value, claim.aggregate_id),
                ).rowcount
                if dropped:
                    db.execute(
                        "INSERT INTO claims (scope, value, aggregate_id) VALUES (?,?,?)"
                        " ON CONFLICT (scope, value) DO NOTHING",
                        (claim.scope, hidden_value, claim.aggregate_id),
                    )
                (holder,) = db.execute(
                    "SELECT aggregate_id FROM claims WHERE scope = ? AND value = ?", (claim.scope, hidden_value)
                ).fetchone() or (None,)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return bool(dropped) and holder == claim.aggregate_id

        return await self._run(hide)

    async def load_snapshot(self, aggregate_id: str, *, at_most: int | None = None) -> Snapshot | None:
        sql = f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots WHERE aggregate_id = ?"
        params: list[object] = [aggregate_id]
        if at_most is not None:
            sql += " AND version <= ?"
            params.append(at_most)
        sql += " ORDER BY version DESC LIMIT 1"
        row = await self._run(lambda: self._db.execute(sql, params).fetchone())
        if row is None:
            return None
        return Snapshot(row[0], row[1], row[2], row[3], row[4], bytes(row[5]))

    # -- audit -----------------------------------------------------------

    async def record_audit_entry(self, entry: AuditEntry) -> None:
        await self._run(
            self._db.execute,
            f"INSERT INTO refusals ({_AUDIT_COLUMNS}, reason, message, outcome) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
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
            ),
        )

    async def read_audit(self, query: AuditQuery) -> list[AuditEntry]:
        where, params = _audit_filter(query)
        outcome = {None: "", ACCEPTED: " AND rejection IS NULL", REFUSED: " AND rejection IS NOT NULL"}
        commands: list[sqlite3.Row] = []
        if query.outcome in outcome:
            commands = await self._run(
                lambda: self._db.execute(
                    f"SELECT {_COMMAND_COLUMNS} FROM commands WHERE {where}{outcome[query.outcome]}"
                    " ORDER BY recorded_at_us DESC LIMIT ?",
                    (*params, query.limit),
                ).fetchall()
            )
        only = "" if query.outcome is None else " AND outcome = ?"
        others = await self._run(
            lambda: self._db.execute(
                f"SELECT {_AUDIT_COLUMNS}, reason, message, outcome FROM refusals WHERE {where}{only}"
                " ORDER BY recorded_at_us DESC LIMIT ?",
                (*params, *([query.outcome] if query.outcome is not None else []), query.limit),
            ).fetchall()
        )
        entries = [_command(r).audit_entry() for r in commands] + [_other(r) for r in others]
        entries.sort(key=lambda e: e.recorded_at_us, reverse=True)
        return entries[: query.limit]

    # -- data keys -------------------------------------------------------

    async def create_data_key(self, key: DataKey) -> DataKey:
        def create() -> DataKey:
            self._db.execute(
                "INSERT INTO data_keys (aggregate_id, master_key_id, wrapped_key, created_at_us)"
                " VALUES (?,?,?,?) ON CONFLICT (aggregate_id) DO NOTHING",
                (key.aggregate_id, key.master_key_id, key.wrapped, time.time_ns() // 1000),
            )
            stored = self._load_key(key.aggregate_id)
            assert stored is not None
            return stored

        return await self._run(create)

    def _load_key(self, aggregate_id: str) -> DataKey | None:
        row = self._db.execute(
            "SELECT master_key_id, wrapped_key FROM data_keys WHERE aggregate_id = ?", (aggregate_id,)
        ).fetchone()
        return None if row is None else DataKey(aggregate_id, row[0], None if row[1] is None else bytes(row[1]))

    async def load_data_key(self, aggregate_id: str) -> DataKey | None:
        return await self._run(self._load_key, aggregate_id)

    async def forget_data_key(self, aggregate_id: str) -> bool:
        def forget() -> bool:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                erased = db.execute(
                    "UPDATE data_keys SET master_key_id = NULL, wrapped_key = NULL, forgotten_at_us = ?"
                    " WHERE aggregate_id = ? AND wrapped_key IS NOT NULL",
                    (time.time_ns() // 1000, aggregate_id),
                ).rowcount
                db.execute("DELETE FROM snapshots WHERE aggregate_id = ?", (aggregate_id,))
                # Only an aggregate with a key (or its tombstone) is forgotten;
                # one that never had a key keeps its claims.
                db.execute(
                    "DELETE FROM claims WHERE aggregate_id = ?"
                    " AND EXISTS (SELECT 1 FROM data_keys WHERE aggregate_id = ?)",
                    (aggregate_id, aggregate_id),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return erased == 1

        return await self._run(forget)

    async def data_keys_to_rewrap(self, active_master_key_id: str, limit: int) -> list[DataKey]:
        rows = await self._run(
            lambda: self._db.execute(
                "SELECT aggregate_id, master_key_id, wrapped_key FROM data_keys"
                " WHERE wrapped_key IS NOT NULL AND master_key_id <> ? LIMIT ?",
                (active_master_key_id, limit),
            ).fetchall()
        )
        return [DataKey(r[0], r[1], bytes(r[2])) for r in rows]

    async def rewrap_data_key(self, old: DataKey, new: DataKey) -> bool:
        cursor = await self._run(
            self._db.execute,
            "UPDATE data_keys SET master_key_id = ?, wrapped_key = ?"
            " WHERE aggregate_id = ? AND master_key_id = ? AND wrapped_key = ?",
            (new.master_key_id, new.wrapped, old.aggregate_id, old.master_key_id, old.wrapped),
        )
        return bool(cursor.rowcount == 1)


def _other(row: sqlite3.Row) -> AuditEntry:
    return AuditEntry(
        recorded_at_us=row[0],
        command_id=row[1],
        command_type=row[2],
        aggregate_id=row[3],
        principal=row[4],
        user_id=row[5],
        origin=row[6],
        reason=row[7],
        message=row[8],
        outcome=row[9],
    )


def _audit_filter(query: AuditQuery) -> tuple[str, list[object]]:
    """The WHERE condition both audit tables share (they have these columns)."""
    where: list[str] = ["1 = 1"]
    params: list[object] = []
    for column, value in (
        ("aggregate_id", query.aggregate_id),
        ("principal", query.principal),
        ("command_id", query.command_id),
    ):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if query.since_us is not None:
        where.append("recorded_at_us >= ?")
        params.append(query.since_us)
    if query.until_us is not None:
        where.append("recorded_at_us < ?")
        params.append(query.until_us)
    return " AND ".join(where), params
