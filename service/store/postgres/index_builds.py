"""Migrations that build indexes without blocking writes.

``CREATE INDEX`` holds a SHARE lock on its table until it is built, so on a
large live table every write waits for the whole build. ``CREATE INDEX
CONCURRENTLY`` lets writes go on, at a price: it cannot run in a
transaction, and a build that fails or is interrupted (a cancel, a replica
killed, the connection lost) leaves the index behind, INVALID (in the
catalog, kept up to date by writes, never used by a read), where ``IF NOT
EXISTS`` would then find it and build nothing.

So a migration script with a line ``-- concurrently`` holds nothing but
``CREATE [UNIQUE] INDEX CONCURRENTLY IF NOT EXISTS name ON chronicle.table
…;`` statements (refused at start otherwise: anything else would run
outside a transaction, half applied on a failure). The runner
(migrations.py) sends each on its own, outside a transaction; before each,
an INVALID index of that name, an interrupted build's, is dropped
(``DROP INDEX CONCURRENTLY``) and built again; after each, the index must
be valid; and only then is the migration's version recorded. A build
interrupted leaves the version where it was, so the next run (the next
replica to start, or ``chronicle migrate``) repairs it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import psycopg

from service.errors import ConfigurationError
from service.store.sql_common import Migration

log = logging.getLogger(__name__)
SCHEMA = "chronicle"

_CONCURRENTLY = re.compile(r"^-- concurrently\s*$", re.MULTILINE)
_COMMENT = re.compile(r"--[^\n]*")
# One statement, up to its semicolon (an index definition has none inside).
_BUILD = re.compile(
    rf"CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+IF\s+NOT\s+EXISTS\s+([a-z_][a-z0-9_]*)\s+ON\s+{SCHEMA}\.[a-z_][a-z0-9_]*\b[^;]*;",
    re.IGNORECASE,
)

# Whether the index ``chronicle.<name>`` is valid; no row: there is none.
_VALIDITY = f"""
SELECT i.indisvalid FROM pg_index AS i
JOIN pg_class AS c ON c.oid = i.indexrelid JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = '{SCHEMA}' AND c.relname = %s
"""


@dataclass(frozen=True)
class IndexBuild:
    """One ``CREATE INDEX CONCURRENTLY IF NOT EXISTS`` of a migration."""

    name: str
    sql: str


def index_builds(migration: Migration) -> list[IndexBuild] | None:
    """The index builds of a ``-- concurrently`` migration, in order; None
    for any other (run in a transaction). A ``-- concurrently`` script that
    holds anything else is refused (``ConfigurationError``)."""
    if not _CONCURRENTLY.search(migration.sql):
        return None
    statements = _COMMENT.sub("", migration.sql)
    builds = [IndexBuild(match.group(1), match.group(0)) for match in _BUILD.finditer(statements)]
    rest = _BUILD.sub("", statements).strip()
    if rest or not builds:
        raise ConfigurationError(
            f"PostgreSQL migration {migration.version:04d}_{migration.name} says `-- concurrently`, so it runs"
            f" outside a transaction and may hold only `CREATE [UNIQUE] INDEX CONCURRENTLY IF NOT EXISTS name ON"
            f" {SCHEMA}.table …;` statements" + (f"; it also holds: {rest[:200]}" if rest else "; it holds none")
        )
    return builds


async def build_index(conn: psycopg.AsyncConnection[object], index: IndexBuild) -> None:
    """Build ``index`` without blocking writes to its table, first dropping
    what an interrupted build of it left (INVALID); raise unless it ends
    valid. ``conn`` in autocommit, holding the migration lock."""
    if await _is_valid(conn, index.name) is False:
        log.warning("dropping the INVALID index %s.%s an interrupted build left, to build it again", SCHEMA, index.name)
        await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {SCHEMA}.{index.name}".encode())
    await conn.execute(index.sql.encode())
    if await _is_valid(conn, index.name) is not True:
        # Not built (a name another kind of relation holds) or left invalid:
        # the version is not recorded, so the next run tries again.
        raise ConfigurationError(
            f"the index {SCHEMA}.{index.name} is not valid after CREATE INDEX CONCURRENTLY; the migration is not"
            " recorded, and the next run drops and builds the index again"
        )


async def _is_valid(conn: psycopg.AsyncConnection[object], name: str) -> bool | None:
    cursor = await conn.execute(_VALIDITY.encode(), (name,))
    row = await cursor.fetchone()
    return None if row is None else bool(row[0])  # type: ignore[index]
