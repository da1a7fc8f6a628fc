"""`chronicle export --database-url` is a backup: it opens its source read
only and changes nothing, not even the schema's version (a newer CLI must
not upgrade production's schema in place), so it works on a read-only role
or file; a schema older or newer than the CLI's is refused with a reason
that says what to do."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from service.store.postgres.migrations import known_migrations
from service.store.sqlite.migrations import SCHEMA_VERSION
from tests.support.postgres import Cluster, schema_on_standby
from tests.support.processes import cli
from tests.support.schema_versions import DatabaseAt, build_sqlite

pytestmark = pytest.mark.slow

NEWEST_POSTGRES = known_migrations()[-1].version


def export(url: str, out: Path) -> subprocess.CompletedProcess[str]:
    return cli("export", str(out), "--database-url", url, "--quiet", server="unused:1", check=False)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` read only, also for root (who writes through a mode of 0444):
    immutable, where the file system lets root say so."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        yield
        path.chmod(0o644)
        return
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("root cannot make a file read only here (chattr +i)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def user_version(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def test_a_read_only_sqlite_file_is_exported_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "live.db"
    build_sqlite(path, SCHEMA_VERSION, filled=True)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with read_only(path):
        done = export(f"sqlite:///{path}", tmp_path / "backup.chronicle")
    assert done.returncode == 0, done.stderr
    assert '"events": ' in done.stdout
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


@pytest.mark.parametrize("made_read_only", [False, True], ids=["writable", "read_only"])
def test_a_sqlite_file_at_an_older_schema_is_refused_and_stays_at_its_version(
    tmp_path: Path, made_read_only: bool
) -> None:
    path = tmp_path / "old.db"
    build_sqlite(path, SCHEMA_VERSION - 1, filled=True)
    with read_only(path) if made_read_only else contextlib.nullcontext():
        refused = export(f"sqlite:///{path}", tmp_path / "backup.chronicle")
    assert refused.returncode != 0
    assert f"SCHEMA_TOO_OLD: {path} has schema version {SCHEMA_VERSION - 1}, older than" in refused.stderr
    assert "export it with the Chronicle that wrote it, or migrate it first" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert user_version(path) == SCHEMA_VERSION - 1


def test_a_sqlite_file_that_is_not_there_is_not_made(tmp_path: Path) -> None:
    refused = export(f"sqlite:///{tmp_path}/missing/chronicle.db", tmp_path / "backup.chronicle")
    assert "STORE_UNAVAILABLE" in refused.stderr
    assert not (tmp_path / "missing").exists()


def postgres_version(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT max(version) FROM chronicle.schema_migrations").fetchone()
        return int(row[0])  # type: ignore[index]


@pytest.mark.postgres
async def test_postgres_through_a_read_only_role_is_exported(
    tmp_path: Path, pg_cluster: Cluster, postgres_at: DatabaseAt
) -> None:
    url = await postgres_at(NEWEST_POSTGRES, filled=True)
    role = f"chronicle_backup_{uuid.uuid4().hex[:8]}"  # roles are the cluster's, shared by every test
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"ALTER ROLE {role} SET default_transaction_read_only = on")
        conn.execute(f"GRANT USAGE ON SCHEMA chronicle TO {role}")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA chronicle TO {role}")
    try:
        as_backup = url.replace("postgres@", f"{role}@", 1)
        done = export(as_backup, tmp_path / "backup.chronicle")
        assert done.returncode == 0, done.stderr
        assert '"events": ' in done.stdout
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


@pytest.mark.postgres
async def test_postgres_at_an_older_schema_is_refused_and_stays_at_its_version(
    tmp_path: Path, postgres_at: DatabaseAt
) -> None:
    url = await postgres_at(NEWEST_POSTGRES - 1, filled=True)
    refused = export(url, tmp_path / "backup.chronicle")
    assert refused.returncode != 0
    assert f"SCHEMA_TOO_OLD: the database {url.split('?')[0]} has schema version {NEWEST_POSTGRES - 1}" in (
        refused.stderr
    )
    assert postgres_version(url) == NEWEST_POSTGRES - 1


@pytest.mark.postgres
async def test_a_hot_standby_is_exported(tmp_path: Path, standby_urls: tuple[str, str]) -> None:
    primary_url, standby_url = standby_urls
    await schema_on_standby(primary_url, standby_url)
    done = export(standby_url, tmp_path / "backup.chronicle")
    assert done.returncode == 0, done.stderr
    assert "DATABASE_READ_ONLY" not in done.stderr
