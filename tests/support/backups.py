"""A store's database and a backup of it, as an operator takes one (the
SQLite files copied, a ``pg_dump``) and restores it into a store of its own,
for the tests of what a backup still holds once a tenant's key is destroyed."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.store.base import StoreAdapter
from service.store.postgres import PostgresStore
from service.store.sqlite import SqliteStore
from tests.support.postgres import find_bindir


@dataclass
class Backup:
    """The database as a backup holds it: its bytes, and a way to restore
    it into a store of its own."""

    raw: bytes
    restore: Callable[[], Callable[[], StoreAdapter]]


@dataclass
class Site:
    """The live database: a store over it (a new adapter for each server),
    and a backup of it taken."""

    store: Callable[[], StoreAdapter]
    back_up: Callable[[], Backup]


def backup_site(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    """The live database on SQLite in ``tmp_path`` or on the test PostgreSQL
    (``request.param``: "sqlite" or "postgres"), and how to back it up."""
    if request.param == "sqlite":
        live = tmp_path / "data"

        def copy_files() -> Backup:
            copy = Path(shutil.copytree(live, tmp_path / "backup"))
            raw = b"".join(p.read_bytes() for p in sorted(copy.iterdir()) if p.is_file())
            return Backup(raw, lambda: lambda: SqliteStore(copy / "events.db"))

        return Site(lambda: SqliteStore(live / "events.db"), copy_files)
    url = request.getfixturevalue("postgres_url")
    cluster = request.getfixturevalue("pg_cluster")

    def dump_and_restore() -> Backup:
        dump = subprocess.run(
            [str(find_bindir() / "pg_dump"), "--dbname", url], check=True, capture_output=True, timeout=60
        ).stdout

        def restore() -> Callable[[], StoreAdapter]:
            restored = cluster.create_database()
            request.addfinalizer(lambda: cluster.drop_database(restored))
            psql = [str(find_bindir() / "psql"), "--dbname", restored, "-v", "ON_ERROR_STOP=1", "--quiet"]
            subprocess.run(psql, input=dump, check=True, capture_output=True, timeout=60)
            return lambda: PostgresStore(restored, pool_size=4)

        return Backup(dump, restore)

    return Site(lambda: PostgresStore(url, pool_size=4), dump_and_restore)
