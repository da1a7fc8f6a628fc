"""Every migration, from every earlier schema version, over a database that
holds every kind of row: what an earlier Chronicle wrote still reads back
through the current store, with the same content, and still behaves.

The versions are the migration files the code has: a new migration is
tested from every version before it without a change here, and the filler
(``tests/support/old_rows.py``, ``schema_versions.py``) must keep up with it:
``test_the_filler_holds_every_table_and_column_of_*`` fails when a version
has a table or a column no row fills, and
``test_at_the_latest_version_the_filler_writes_what_the_*_store_writes``
when the newest SQL of the filler no longer matches what the store writes
(docs/testing.md, "How a new migration is tested").
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from pathlib import Path

import psycopg
import pytest

from service.errors import ConfigurationError
from service.store.postgres import PostgresStore
from service.store.postgres.migrations import known_migrations
from service.store.sqlite import SqliteStore
from service.store.sqlite.migrations import SCHEMA_VERSION
from tests.support.contents import contents
from tests.support.old_rows import rows_at, unreadable, write_through
from tests.support.processes import serve_until_exit
from tests.support.schema_versions import (
    POSTGRES_VERSIONS,
    SQLITE_VERSIONS,
    DatabaseAt,
    PostgresVersions,
    build_sqlite,
    comparable_rows_postgres,
    comparable_rows_sqlite,
    empty_places_postgres,
    empty_places_sqlite,
)


def report(failures: dict[str, str]) -> str:
    return "\n".join(f"  {kind}: {what}" for kind, what in failures.items())


# -- PostgreSQL ----------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("version", POSTGRES_VERSIONS)
async def test_every_kind_of_row_survives_migrating_postgres_from(
    version: int, postgres_at: DatabaseAt, postgres_versions: PostgresVersions
) -> None:
    url = await postgres_at(version, filled=True)
    # Forced: the rows hold a live lease member (from version 10), which is
    # an old replica to the check before a migration that raises the floor
    # (test_migration_under_old_replicas.py); here only the rows matter.
    store = PostgresStore(url, pool_size=2, force_migration=True)
    await store.open()
    try:
        failures = await unreadable(store, rows_at("postgres", version))
        assert not failures, f"after migrating from version {version}:\n{report(failures)}"
        # The same schema as a new database's: no migration behaves otherwise over rows.
        assert (await contents(store)).tables["schema"] == await postgres_versions.fresh_schema()
    finally:
        await store.close()


@pytest.mark.postgres
@pytest.mark.parametrize("version", POSTGRES_VERSIONS)
async def test_the_filler_holds_every_table_and_column_of_postgres_at(version: int, postgres_at: DatabaseAt) -> None:
    url = await postgres_at(version, filled=True)
    assert await asyncio.to_thread(empty_places_postgres, url) == [], (
        f"schema version {version} can hold rows tests/support/old_rows.py does not write"
    )


@pytest.mark.postgres
async def test_at_the_latest_version_the_filler_writes_what_the_postgres_store_writes(
    postgres_at: DatabaseAt, postgres_url: str
) -> None:
    latest = POSTGRES_VERSIONS[-1]
    filled = await postgres_at(latest, filled=True)
    rows = rows_at("postgres", latest)
    store = PostgresStore(postgres_url, pool_size=2, json_of=rows.json_of)  # as with --postgres-json-events
    await store.open()
    try:
        await write_through(store, rows)
    finally:
        await store.close()
    assert comparable_rows_postgres(filled) == comparable_rows_postgres(postgres_url)


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("kind", "damage"),
    [
        ("claims as stored", "DELETE FROM chronicle.claims WHERE value NOT LIKE E'\\x1f%'"),
        ("refusals replay", "UPDATE chronicle.commands SET rejection = NULL"),
        ("projections", "UPDATE chronicle.projection_documents SET data = data || '\\x00'::bytea"),
        ("events", "UPDATE chronicle.data_keys SET wrapped_key = NULL, master_key_id = NULL, forgotten_at = now()"),
        ("audit", "DELETE FROM chronicle.refusals"),
        ("leases", "UPDATE chronicle.leases SET epoch = 0"),
    ],
)
async def test_a_migration_that_loses_a_kind_of_row_is_caught(kind: str, damage: str, postgres_at: DatabaseAt) -> None:
    """The checks can fail: the latest version's rows, damaged as a faulty
    migration would, no longer pass."""
    url = await postgres_at(POSTGRES_VERSIONS[-1], filled=True)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(damage.encode())
    store = PostgresStore(url, pool_size=2)
    await store.open()
    try:
        failures = await unreadable(store, rows_at("postgres", POSTGRES_VERSIONS[-1]))
    finally:
        await store.close()
    assert kind in failures, report(failures)


@pytest.mark.postgres
async def test_replicas_starting_together_on_an_old_database_migrate_it_once_and_keep_its_rows(
    postgres_at: DatabaseAt,
) -> None:
    url = await postgres_at(1, filled=True)
    stores = [PostgresStore(url, pool_size=2) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        await asyncio.gather(*(s.ping() for s in stores))
        with psycopg.connect(url) as conn:
            applied = conn.execute("SELECT version FROM chronicle.schema_migrations ORDER BY version").fetchall()
        assert [v for (v,) in applied] == [m.version for m in known_migrations()]
        failures = await unreadable(stores[1], rows_at("postgres", 1))
        assert not failures, report(failures)
    finally:
        for store in stores:
            await store.close()


# -- SQLite --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", SQLITE_VERSIONS)
async def test_every_kind_of_row_survives_migrating_sqlite_from(version: int, tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    build_sqlite(path, version, filled=True)
    store = SqliteStore(path)
    await store.open()
    try:
        failures = await unreadable(store, rows_at("sqlite", version))
        assert not failures, f"after migrating from version {version}:\n{report(failures)}"
    finally:
        await store.close()
    fresh = SqliteStore(tmp_path / "fresh.db")
    await fresh.open()
    await fresh.close()
    assert (await contents(store)).tables["schema"] == (await contents(fresh)).tables["schema"]


@pytest.mark.parametrize("version", SQLITE_VERSIONS)
def test_the_filler_holds_every_table_and_column_of_sqlite_at(version: int, tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    build_sqlite(path, version, filled=True)
    assert empty_places_sqlite(path) == [], (
        f"schema version {version} can hold rows tests/support/old_rows.py does not write"
    )


async def test_at_the_latest_version_the_filler_writes_what_the_sqlite_store_writes(tmp_path: Path) -> None:
    latest = SQLITE_VERSIONS[-1]
    build_sqlite(tmp_path / "filled.db", latest, filled=True)
    store = SqliteStore(tmp_path / "written.db")
    await store.open()
    try:
        await write_through(store, rows_at("sqlite", latest))
    finally:
        await store.close()
    assert comparable_rows_sqlite(tmp_path / "filled.db") == comparable_rows_sqlite(tmp_path / "written.db")


async def test_sqlite_stores_opening_an_old_file_together_migrate_it_once_and_keep_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    build_sqlite(path, 1, filled=True)
    stores = [SqliteStore(path) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        failures = await unreadable(stores[2], rows_at("sqlite", 1))
        assert not failures, report(failures)
    finally:
        for store in stores:
            await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


# -- a schema newer than the code ----------------------------------------------------------


async def test_a_sqlite_file_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    build_sqlite(path, SQLITE_VERSIONS[-1], filled=True)
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = await contents(SqliteStore(path))
    store = SqliteStore(path)
    with pytest.raises(ConfigurationError) as raised:
        await store.open()
    await store.close()
    assert raised.value.reason == "SCHEMA_TOO_NEW"
    assert f"schema version {SCHEMA_VERSION + 1}" in raised.value.message
    assert f"knows ({SCHEMA_VERSION})" in raised.value.message
    assert (await contents(SqliteStore(path))).changes_since(before) == {}


def test_the_server_exits_with_a_clear_message_on_a_sqlite_file_newer_than_it(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    build_sqlite(path, SQLITE_VERSIONS[-1], filled=False)
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    _assert_refused_as_too_new(serve_until_exit("--database-url", f"sqlite:///{path}"))


@pytest.mark.postgres
async def test_the_server_exits_with_a_clear_message_on_a_postgres_schema_newer_than_it(
    postgres_at: DatabaseAt,
) -> None:
    url = await postgres_at(POSTGRES_VERSIONS[-1], filled=False)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO chronicle.schema_migrations (version, name) VALUES (%s, 'from_the_future')",
            (POSTGRES_VERSIONS[-1] + 1,),
        )
    _assert_refused_as_too_new(await asyncio.to_thread(serve_until_exit, "--database-url", url))


def _assert_refused_as_too_new(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode != 0
    assert "SCHEMA_TOO_NEW" in result.stderr
    assert "upgrade Chronicle" in result.stderr
