"""Rolling upgrades and rollbacks (docs/deployment.md, "Upgrading and
rolling back"): each migration records its compatibility floor, the oldest
schema version whose code still runs on what it leaves; this code serves a
database whose schema is newer when the floor is at most its own version
(one additive migration ahead), and refuses it when the floor is above.
The migration ahead is a fake one, applied by the code's own runner as a
newer Chronicle would."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.errors import ConfigurationError
from service.store.base import StoreAdapter
from service.store.postgres import PostgresStore
from service.store.postgres import migrations as postgres_migrations
from service.store.sql_common import Migration, known_migrations
from service.store.sqlite import SqliteStore
from service.store.sqlite import migrations as sqlite_migrations
from tests.support.grpc_client import command, running_server
from tests.support.schema_versions import build_sqlite

POSTGRES = postgres_migrations.known_migrations()
NEWEST_POSTGRES = POSTGRES[-1].version
NEWEST_SQLITE = sqlite_migrations.SCHEMA_VERSION


def ahead(newest: Migration, sql: str, *, additive: bool) -> Migration:
    """A migration one version after ``newest``: additive (it keeps the
    floor, so this code still runs on it) or not (its floor is itself)."""
    version = newest.version + 1
    return Migration(version, "future_change", sql, newest.compatible_from if additive else version)


async def postgres_one_ahead(url: str, *, additive: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    future = ahead(POSTGRES[-1], "CREATE TABLE chronicle.future_notes (note text)", additive=additive)
    with monkeypatch.context() as newer:
        newer.setattr(postgres_migrations, "known_migrations", lambda: [*POSTGRES, future])
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            assert await postgres_migrations.migrate(conn) == future.version


def sqlite_one_ahead(path: Path, *, additive: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    build_sqlite(path, NEWEST_SQLITE, filled=False)
    future = ahead(sqlite_migrations.MIGRATIONS[-1], "CREATE TABLE future_notes (note TEXT);", additive=additive)
    with monkeypatch.context() as newer:
        newer.setattr(sqlite_migrations, "MIGRATIONS", [*sqlite_migrations.MIGRATIONS, future])
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            sqlite_migrations.migrate(conn, future.version)
        finally:
            conn.close()


async def serves_a_command(store: StoreAdapter) -> None:
    await store.open()
    try:
        async with running_server(store) as (_, client):
            done = await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
            assert done.events[0].position == 1
    finally:
        await store.close()


async def opened(store: StoreAdapter) -> None:
    await store.open()
    await store.ping()  # PostgreSQL: reached (and its schema checked) now, if not at open


async def refused(store: StoreAdapter) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as raised:
        await opened(store)
    await store.close()
    assert raised.value.reason == "SCHEMA_TOO_NEW"
    return raised.value


@pytest.mark.postgres
async def test_postgres_one_additive_migration_ahead_is_served_and_left_at_its_version(
    postgres_current: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = await postgres_current()  # type: ignore[operator]
    await postgres_one_ahead(url, additive=True, monkeypatch=monkeypatch)
    await serves_a_command(PostgresStore(url, pool_size=2))
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT max(version) FROM chronicle.schema_migrations").fetchone() == (NEWEST_POSTGRES + 1,)


@pytest.mark.postgres
async def test_postgres_whose_floor_is_above_this_code_is_refused(
    postgres_current: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = await postgres_current()  # type: ignore[operator]
    await postgres_one_ahead(url, additive=False, monkeypatch=monkeypatch)
    error = await refused(PostgresStore(url, pool_size=2))
    assert f"schema version {NEWEST_POSTGRES + 1}, newer than this Chronicle knows ({NEWEST_POSTGRES})" in (
        error.message
    )
    assert f"only the code of schema version {NEWEST_POSTGRES + 1} or later" in error.message


async def test_sqlite_one_additive_migration_ahead_is_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ahead.db"
    sqlite_one_ahead(path, additive=True, monkeypatch=monkeypatch)
    await serves_a_command(SqliteStore(path))
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (NEWEST_SQLITE + 1,)
    conn.close()


async def test_sqlite_whose_floor_is_above_this_code_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ahead.db"
    sqlite_one_ahead(path, additive=False, monkeypatch=monkeypatch)
    error = await refused(SqliteStore(path))
    assert f"only the code of schema version {NEWEST_SQLITE + 1} or later" in error.message


def test_a_backup_of_a_newer_schema_is_refused_even_when_compatible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older CLI would leave out what the newer schema holds."""
    path = tmp_path / "ahead.db"
    sqlite_one_ahead(path, additive=True, monkeypatch=monkeypatch)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "service",
            "export",
            str(tmp_path / "b.chronicle"),
            "--database-url",
            f"sqlite:///{path}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "SCHEMA_TOO_NEW" in done.stderr
    assert "export it with the Chronicle that wrote it (or a newer one)" in done.stderr


def test_a_migration_marked_additive_keeps_the_floor_and_any_other_raises_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripts = tmp_path / "future_store" / "migrations"
    scripts.mkdir(parents=True)
    (tmp_path / "future_store" / "__init__.py").write_text("")
    (scripts / "0001_initial.sql").write_text("CREATE TABLE a (x int);\n")
    (scripts / "0002_more.sql").write_text("-- A new table only:\n-- additive\nCREATE TABLE b (x int);\n")
    (scripts / "0003_also.sql").write_text("-- additive\nCREATE TABLE c (x int);\n")
    (scripts / "0004_rename.sql").write_text("ALTER TABLE a RENAME x TO y;\n")
    (scripts / "0005_after.sql").write_text("-- additive\nCREATE TABLE d (x int);\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = known_migrations("future_store")
    assert [m.compatible_from for m in found] == [1, 1, 1, 4, 4]
