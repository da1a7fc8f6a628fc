"""Versioned SQL migrations for the SQLite store.

Files ``migrations/NNNN_name.sql`` are applied in order, each once: script N
brings the schema from version N - 1 to N, and ``PRAGMA user_version`` holds
the version the file is at. A file whose schema is newer than every
migration this code knows is refused (store.py): running old code on a new
schema could corrupt it.
"""

from __future__ import annotations

import sqlite3

from service.store.sql_common import known_migrations
from service.store.sqlite import sql
from service.store.sqlite.writer import writing

MIGRATIONS = known_migrations("service.store.sqlite")
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    (version,) = conn.execute(sql.SCHEMA_VERSION).fetchone()
    return int(version)


def schema_floor(conn: sqlite3.Connection, version: int) -> int | None:
    """The compatibility floor of the file's schema, at ``version`` (None:
    not recorded, by a Chronicle from before floors)."""
    if conn.execute(sql.SCHEMA_FLOORS_EXIST).fetchone() is None:
        return None
    row = conn.execute(sql.SCHEMA_FLOOR, (version,)).fetchone()
    return None if row is None else int(row[0])


def migrate(conn: sqlite3.Connection, target: int) -> None:
    """Bring the schema to version ``target``, once, even when several
    processes open a new file at the same moment: the version is read again
    under the write lock, and the script, the new version and its
    compatibility floor commit together."""
    with writing(conn):
        if schema_version(conn) < target:
            migration = MIGRATIONS[target - 1]
            for statement in _statements(migration.sql):
                conn.execute(statement)
            conn.execute(sql.CREATE_SCHEMA_FLOORS)
            conn.execute(sql.SET_SCHEMA_FLOOR, (target, migration.compatible_from))
            conn.execute(sql.set_schema_version(target))


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
