"""What the PostgreSQL adapter adds to the contract: a database created by an
earlier Chronicle migrates and keeps its data."""

from __future__ import annotations

import psycopg
import pytest

from service.store.postgres import PostgresStore
from service.store.postgres.migrations import SCHEMA, known_migrations
from service.store.records import ClaimChange, Snapshot
from tests.support.events import new_event

pytestmark = pytest.mark.postgres


def _database_at_migration_one(url: str) -> None:
    first = known_migrations()[0]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {SCHEMA}")
        conn.execute(
            f"CREATE TABLE {SCHEMA}.schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(first.sql.encode())
        conn.execute(f"INSERT INTO {SCHEMA}.schema_migrations (version, name) VALUES (1, %s)", (first.name,))
        conn.execute(
            "INSERT INTO chronicle.snapshots (aggregate_id, aggregate_type, version, state_type, schema_version, state)"
            " VALUES ('a-1', 'Account', 7, 'bank.v1.Account', 1, '\\x0a03616e6e')"
        )


async def test_a_database_at_migration_one_keeps_its_snapshots_and_gains_claims(postgres_url: str) -> None:
    _database_at_migration_one(postgres_url)
    store = PostgresStore(postgres_url, pool_size=2)
    await store.open()
    try:
        assert await store.load_snapshot("a-1") == Snapshot("a-1", "Account", 7, "bank.v1.Account", 1, b"\x0a\x03ann")
        await store.save_snapshot(Snapshot("a-1", "Account", 9, "bank.v1.Account", 1, b""))
        older = await store.load_snapshot("a-1", at_most=8)
        assert older is not None and older.version == 7
        await store.append("u-1", [new_event()], 0, claims=[ClaimChange("users.email", "ann@example.com")])
        assert await store.claim_owner("users.email", "ann@example.com") == "u-1"
    finally:
        await store.close()
