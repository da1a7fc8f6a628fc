"""What the PostgreSQL adapter adds to the contract: a database created by an
earlier Chronicle migrates and keeps its data."""

from __future__ import annotations

import psycopg
import pytest

from service.store.leasing import Fencing, Lease, LeaseMember
from service.store.postgres import PostgresStore
from service.store.postgres.migrations import SCHEMA, known_migrations
from service.store.records import ClaimChange, Snapshot, StoredDocument
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


def _database_at(url: str, version: int) -> None:
    """A database as Chronicle left it after migration ``version``."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {SCHEMA}")
        conn.execute(
            f"CREATE TABLE {SCHEMA}.schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for migration in known_migrations()[:version]:
            conn.execute(migration.sql.encode())
            conn.execute(
                f"INSERT INTO {SCHEMA}.schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )


async def test_a_database_at_migration_nine_keeps_its_projections_and_gains_leases(postgres_url: str) -> None:
    _database_at(postgres_url, 9)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO chronicle.projection_checkpoints (name, position) VALUES ('p', 12)")
        conn.execute(
            "INSERT INTO chronicle.projection_documents (projection, key, type_name, data) VALUES ('p', 'k', 't', 'a')"
        )
    store = PostgresStore(postgres_url, pool_size=2)
    await store.open()
    try:
        assert await store.projection_position("p") == 12
        assert await store.load_document("p", "k") == StoredDocument("k", "t", b"a")
        member = LeaseMember("m-1", "127.0.0.1:1")
        view = await store.renew_leases("projections", member, ["p"], 5.0)
        assert view.members == (member,)
        assert view.leases == (Lease("p", None, 0),)
        (taken,) = await store.change_leases("projections", "m-1", release=(), acquire=["p"], ttl=5.0)
        assert taken == Lease("p", "m-1", 1)
        await store.commit_projection(
            "p", expected_position=12, new_position=13, writes=[], fencing=Fencing("projections", "p", "m-1", 1)
        )
        assert await store.projection_position("p") == 13
    finally:
        await store.close()
