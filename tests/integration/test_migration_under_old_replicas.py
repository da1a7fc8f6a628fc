"""A replica about to apply a migration that raises the compatibility floor
refuses while live replicas run code below the new floor
(``MIGRATION_UNDER_OLD_REPLICAS``, naming them): in a rolling upgrade it
would strand them, failing on the migrated schema and refused when they
restart. ``--migrate=force`` applies it anyway; an additive migration, or
a member whose membership lapsed, is no reason to refuse.

The code holds no such migration yet: one is added to the known ones
(``known_migrations``), over a real PostgreSQL at the current schema, with
old replicas as rows of lease_members (what their heartbeats write)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from service.errors import ConfigurationError
from service.store.postgres import PostgresStore
from service.store.postgres import migrations as pg_migrations
from service.store.sql_common import Migration

pytestmark = pytest.mark.postgres

REAL = pg_migrations.known_migrations()
CURRENT = REAL[-1].version
PROBE = "CREATE TABLE chronicle.floor_probe (x integer)"


def with_migration(monkeypatch: pytest.MonkeyPatch, *, additive: bool) -> None:
    floor = REAL[-1].compatible_from if additive else CURRENT + 1
    added = Migration(CURRENT + 1, "floor_probe", PROBE, compatible_from=floor)
    monkeypatch.setattr(pg_migrations, "known_migrations", lambda: [*REAL, added])


@pytest.fixture
def current(postgres_url: str) -> str:
    """A database at this code's schema, with two live old replicas and
    one whose membership lapsed."""

    async def migrate() -> None:
        store = PostgresStore(postgres_url, pool_size=1)
        await store.open()
        await store.ping()
        await store.close()

    asyncio.run(migrate())
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        insert = (
            "INSERT INTO chronicle.lease_members (lease_group, member_id, address, expires_at, version, schema_version)"
            " VALUES ('partitions-16', %s, %s, now() + %s * interval '1 second', %s, %s)"
        )
        conn.execute(insert, ("m-current", "10.0.0.1:50051", 30, "0.2.0 (commit 0123456789ab)", CURRENT))
        conn.execute(insert, ("m-older", "10.0.0.2:50051", 30, "", 0))  # a version from before members said
        conn.execute(insert, ("m-gone", "10.0.0.3:50051", -30, "0.1.0", 0))  # lapsed: stopped
        # A subscription group's consumer is a lease member of its group, with
        # no address nor version (groups.py): no replica, not to be named.
        conn.execute(
            "INSERT INTO chronicle.lease_members (lease_group, member_id, address, expires_at, version, schema_version)"
            " VALUES ('subscription-group:audit', 'c-1', '', now() + interval '30 seconds', '', %s)",
            (CURRENT,),
        )
    return postgres_url


def schema_of(url: str) -> tuple[int, bool]:
    with psycopg.connect(url) as conn:
        version = conn.execute("SELECT max(version) FROM chronicle.schema_migrations").fetchone()
        probe = conn.execute("SELECT to_regclass('chronicle.floor_probe') IS NOT NULL").fetchone()
    assert version is not None and probe is not None
    return int(version[0]), bool(probe[0])


async def test_a_floor_raising_migration_is_refused_naming_the_live_replicas_below_it(
    current: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_migration(monkeypatch, additive=False)
    store = PostgresStore(current, pool_size=1)
    with pytest.raises(ConfigurationError) as refused:
        await store.open()
    await store.close()
    error = refused.value
    assert error.reason == "MIGRATION_UNDER_OLD_REPLICAS"
    assert f"is at schema version {CURRENT}, and the migrations due raise its compatibility floor to {CURRENT + 1}" in (
        error.message
    )
    assert f"10.0.0.1:50051 (version 0.2.0 (commit 0123456789ab), schema {CURRENT})" in error.message
    assert "10.0.0.2:50051 (version older than 0.2.0, schema unknown)" in error.message
    assert "10.0.0.3" not in error.message  # its membership lapsed
    assert "--migrate=force" in error.message
    assert error.metadata["replicas"] == "10.0.0.1:50051,10.0.0.2:50051"
    assert ": (version" not in error.message and "; (version" not in error.message  # no consumer as a replica
    assert schema_of(current) == (CURRENT, False)  # nothing applied


async def test_live_group_consumers_alone_are_no_reason_to_refuse(
    current: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Their servers are members of their own (stopped here): a consumer's
    membership is no replica running schema code."""
    with psycopg.connect(current, autocommit=True) as conn:
        conn.execute("DELETE FROM chronicle.lease_members WHERE lease_group NOT LIKE 'subscription-group:%'")
    with_migration(monkeypatch, additive=False)
    store = PostgresStore(current, pool_size=1)
    await store.open()
    await store.close()
    assert schema_of(current) == (CURRENT + 1, True)


async def test_an_additive_migration_is_applied_under_them(current: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with_migration(monkeypatch, additive=True)
    store = PostgresStore(current, pool_size=1)
    await store.open()
    await store.close()
    assert schema_of(current) == (CURRENT + 1, True)  # the old replicas run on an additive one


async def test_migrate_force_applies_a_floor_raising_migration_under_them(
    current: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_migration(monkeypatch, additive=False)
    store = PostgresStore(current, pool_size=1, force_migration=True)
    await store.open()
    await store.close()
    assert schema_of(current) == (CURRENT + 1, True)
    with psycopg.connect(current) as conn:
        floor = conn.execute(
            "SELECT compatible_from FROM chronicle.schema_migrations WHERE version = %s", (CURRENT + 1,)
        )
        assert floor.fetchone() == (CURRENT + 1,)
