"""What someone who took a store's database holds (every byte of its files,
or of a ``pg_dump``; the command records and keys read from it directly),
and the SQLite and PostgreSQL stores the tests that look at it run on."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from service.store.base import StoreAdapter
from service.store.postgres import PostgresStore
from service.store.sqlite import SqliteStore
from tests.support.postgres import find_bindir


@dataclass
class DataAtRest:
    """What someone who took the database holds: every byte of it, and the
    command records read from it directly."""

    read_bytes: Callable[[], bytes]
    read_fingerprints: Callable[[], list[bytes]]
    read_wrapped_key: Callable[[str], bytes | None]
    read_documents: Callable[[], set[bytes]]


def sqlite_at_rest(folder: Path) -> DataAtRest:
    path = folder / "events.db"

    def every_file() -> bytes:
        # The database file, its WAL and its shared memory: the whole directory.
        return b"".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file())

    def query(statement: str, *params: object) -> list[tuple[Any, ...]]:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return db.execute(statement, params).fetchall()

    return _read_with(every_file, query, tables="", placeholder="?")


def postgres_at_rest(url: str) -> DataAtRest:
    def dump() -> bytes:
        pg_dump = find_bindir() / "pg_dump"
        return subprocess.run([str(pg_dump), "--dbname", url], check=True, capture_output=True, timeout=60).stdout

    def query(statement: str, *params: object) -> list[tuple[Any, ...]]:
        with psycopg.connect(url) as db:
            return db.execute(statement.encode(), params).fetchall()

    return _read_with(dump, query, tables="chronicle.", placeholder="%s")


Query = Callable[..., list[tuple[Any, ...]]]


def _read_with(read_bytes: Callable[[], bytes], query: Query, *, tables: str, placeholder: str) -> DataAtRest:
    """The records read directly through ``query``, the store's tables
    named with ``tables`` before them and its driver's ``placeholder``."""
    return DataAtRest(
        read_bytes,
        lambda: [bytes(row[0]) for row in query(f"SELECT fingerprint FROM {tables}commands")],
        lambda aggregate_id: _first_bytes(
            query(f"SELECT wrapped_key FROM {tables}data_keys WHERE aggregate_id = {placeholder}", aggregate_id)
        ),
        lambda: {bytes(row[0]) for row in query(f"SELECT data FROM {tables}projection_documents")},
    )


def _first_bytes(rows: list[tuple[Any, ...]]) -> bytes | None:
    value = rows[0][0] if rows else None
    return None if value is None else bytes(value)


@dataclass
class Site:
    store: StoreAdapter
    at_rest: DataAtRest


def site_for(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    """A SQLite store in ``tmp_path`` or one on the test PostgreSQL
    (``request.param``: "sqlite" or "postgres"), with what is at rest in it."""
    if request.param == "sqlite":
        folder = tmp_path / "data"
        return Site(SqliteStore(folder / "events.db"), sqlite_at_rest(folder))
    url = request.getfixturevalue("postgres_url")
    return Site(PostgresStore(url, pool_size=4), postgres_at_rest(url))
