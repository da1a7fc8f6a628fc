"""The embedded default store: one SQLite file, no server to install.

Laid out like the PostgreSQL store (postgres/store.py): one module per role
of base.py (events, log, claims, snapshots, projections, audit, keys,
transfer, retention, leases, groups), every statement in sql.py, the
schema's versions in migrations.py (scripts in migrations/). What differs
is how it talks to the database: writer.py, one thread with one connection
to the file, and a second one for the lease heartbeats.

SQLite serializes writers, so positions are assigned and committed in the
same order and a reader by position can never skip an event. All work runs
on one dedicated thread with one connection; the event loop never blocks on
the file. Durability: WAL journal with ``synchronous=FULL``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import quote

from service.errors import ConfigurationError, StoreUnavailable, store_unreachable
from service.store.base import DEFAULT_KEEP_SNAPSHOTS, check_keep_snapshots
from service.store.notifier import CommitNotifier
from service.store.schema_use import SchemaUse, needs_migrating
from service.store.sqlite import sql
from service.store.sqlite.audit import AuditRole
from service.store.sqlite.claims import ClaimsRole
from service.store.sqlite.events import EventsRole
from service.store.sqlite.groups import GroupsRole
from service.store.sqlite.keys import KeysRole
from service.store.sqlite.leases import LeasesRole
from service.store.sqlite.log import LogRole
from service.store.sqlite.migrations import SCHEMA_VERSION, migrate, schema_floor, schema_version
from service.store.sqlite.private_file import create_private
from service.store.sqlite.projections import ProjectionsRole
from service.store.sqlite.retention import RetentionRole
from service.store.sqlite.snapshots import SnapshotsRole
from service.store.sqlite.transfer import TransferRole
from service.store.sqlite.writer import Writer


class SqliteStore(
    EventsRole,
    LogRole,
    ClaimsRole,
    SnapshotsRole,
    ProjectionsRole,
    AuditRole,
    KeysRole,
    TransferRole,
    RetentionRole,
    LeasesRole,
    GroupsRole,
):
    """Every role of a store, in the SQLite file at ``path`` (made, with its
    folder, if missing; ``":memory:"`` for a database that lives as long as
    the store). ``use``: what it may do to the schema it finds
    (schema_use.py); ``READ_ONLY`` opens the file read only (it must exist).

    Not ``--processes``: several processes on one port are for more cores,
    and a file takes one writer at a time (each waiting its turn by
    SQLite's sleep-and-retry), so they would only queue for it. Two servers
    overlapping on a file (a rolling update) share the work by its leases."""

    # service/store/factory.py: check_shared_by_processes
    serves_one_process = True

    def __init__(
        self, path: str | Path, *, keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS, use: SchemaUse = SchemaUse.MIGRATE
    ) -> None:
        self._path = str(path)
        self._use = use
        self.schema_version: int | None = None  # once opened (``chronicle migrate`` says it)
        self._keep_snapshots = check_keep_snapshots(keep_snapshots)
        self._writer = Writer()
        # The heartbeats on a connection and thread of their own: queued
        # behind the store's work (an import, a busy moment's appends) they
        # would be late and the leases lapse; and their commits need no
        # fsync of their own (_connect_for_leases). A database in memory is
        # one connection's, so there they share it (one process anyway), and
        # a store opened read only (a backup's) takes no leases.
        shared = self._path == ":memory:" or use is SchemaUse.READ_ONLY
        self._lease_writer = self._writer if shared else Writer()
        self._commits = CommitNotifier()

    async def open(self) -> None:
        await self._writer.open(self._connect)  # first: it checks (or migrates) the schema
        if self._lease_writer is not self._writer:
            await self._lease_writer.open(self._connect_for_leases)

    async def close(self) -> None:
        if self._lease_writer is not self._writer:
            await self._lease_writer.close()
        await self._writer.close()

    async def ping(self) -> None:
        await self._writer.run(lambda db: db.execute(sql.PING).fetchone())

    def _connect(self) -> sqlite3.Connection:
        """The connection, durable, its schema checked (and brought up to
        date, when the store may)."""
        read_only = self._use is SchemaUse.READ_ONLY
        if self._path != ":memory:" and not read_only:
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            create_private(self._path)  # not the umask's mode: its -wal and -shm take the same
        try:
            if read_only:  # the file must be there; nothing is written, not even the journal mode
                uri = _read_only_uri(self._path)
                conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
                conn.execute(sql.BUSY_TIMEOUT)
            else:
                conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
                for statement in sql.CONNECTION_SETUP:
                    conn.execute(statement)
            version = schema_version(conn)
            floor = schema_floor(conn, version)
        except sqlite3.Error as error:
            raise store_unreachable(f"cannot open SQLite database {self._path}: {error}") from error
        try:
            # Not "unavailable": retrying cannot help, and running old code
            # on a new schema could corrupt it (as PostgreSQL's migrations.py).
            if needs_migrating(version, SCHEMA_VERSION, self._use, self._path, compatible_from=floor):
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    migrate(conn, target)
                version = SCHEMA_VERSION
        except sqlite3.Error as error:
            conn.close()
            raise StoreUnavailable(f"cannot migrate {self._path} to schema {SCHEMA_VERSION}: {error}") from error
        except ConfigurationError:
            conn.close()
            raise
        self.schema_version = version
        return conn

    def _connect_for_leases(self) -> sqlite3.Connection:
        """The heartbeats' connection. Its commits are not synced to disk
        one by one (``synchronous=NORMAL``): the write-ahead log is one
        file, written in order, so the next commit of the store's own
        connection (synced) makes every lease change before it durable, and
        work under a lease's token commits on that connection. A power loss
        can lose only lease changes no work relied on, with the processes
        that made them."""
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            for statement in (*sql.CONNECTION_SETUP, sql.LEASES_SYNCHRONOUS):
                conn.execute(statement)
        except sqlite3.Error as error:
            raise store_unreachable(f"cannot open SQLite database {self._path}: {error}") from error
        return conn


def _read_only_uri(path: str) -> str:
    """The SQLite URI that opens ``path`` read only."""
    return f"file:{quote(str(Path(path).absolute()))}?mode=ro"
