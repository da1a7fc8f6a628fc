"""Versioned SQL migrations for the PostgreSQL store.

Files ``migrations/NNNN_name.sql`` are applied in order, each once, in one
transaction that first takes an advisory lock, so several replicas starting
at the same moment migrate exactly once and the others wait and then find
nothing to do. A database whose schema is newer than every migration this
code knows is refused: running old code on a new schema could corrupt it.
"""

from __future__ import annotations

import logging

import psycopg

from service.errors import ConfigurationError
from service.store import sql_common
from service.store.sql_common import Migration

log = logging.getLogger(__name__)
SCHEMA = "chronicle"
# pg_advisory_xact_lock key: any constant unlikely to collide with an application's.
MIGRATION_LOCK = 0x43_48_52_4F_4E  # "CHRON"


def known_migrations() -> list[Migration]:
    return sql_common.known_migrations("service.store.postgres")


async def migrate(conn: psycopg.AsyncConnection[object], *, target: int | None = None) -> int:
    """Bring the schema up to date (or, for the tests that build a database
    as an earlier Chronicle left it, up to version ``target``); return its
    version."""
    migrations = known_migrations()
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cursor = await conn.execute(f"SELECT coalesce(max(version), 0) FROM {SCHEMA}.schema_migrations")
        row = await cursor.fetchone()
        current = int(row[0]) if row else 0  # type: ignore[index]
        newest = migrations[-1].version if migrations else 0
        if current > newest:
            raise ConfigurationError(
                f"the database schema is at version {current}, newer than this Chronicle knows ({newest}); "
                "upgrade Chronicle before pointing it at this database",
                reason="SCHEMA_TOO_NEW",
            )
        wanted = newest if target is None else min(target, newest)
        for migration in migrations[current:wanted]:
            log.info("applying PostgreSQL migration %04d_%s", migration.version, migration.name)
            await conn.execute(migration.sql.encode())
            await conn.execute(
                f"INSERT INTO {SCHEMA}.schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
        return max(current, wanted)
