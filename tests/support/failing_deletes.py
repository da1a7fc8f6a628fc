"""A deletion (or an insertion) that fails in the database itself, as a
full disk would: a trigger on one table that raises when the row whose
``column`` is ``value`` is deleted (inserted), on SQLite (a temporary
trigger on the store's own writer connection) or PostgreSQL (a trigger the
test's own connection makes), and its removal once the test has seen the
failure. For all-or-none tests of actions that write many rows in one
transaction."""

from __future__ import annotations

import sqlite3

import psycopg

from service.store.base import StoreAdapter
from service.store.sqlite import SqliteStore


async def fail_deleting(store: StoreAdapter, postgres_url: str, *, table: str, column: str, value: str) -> None:
    """From now on, deleting ``table``'s row whose ``column`` is ``value``
    fails (``postgres_url``: the PostgreSQL store's database; unused on
    SQLite)."""
    await _fail(store, postgres_url, "DELETE", table=table, column=column, value=value)


async def fail_inserting(store: StoreAdapter, postgres_url: str, *, table: str, column: str, value: str) -> None:
    """From now on, inserting a row into ``table`` whose ``column`` is
    ``value`` fails (as ``fail_deleting``); ``heal_deleting`` removes it."""
    await _fail(store, postgres_url, "INSERT", table=table, column=column, value=value)


async def _fail(store: StoreAdapter, postgres_url: str, operation: str, *, table: str, column: str, value: str) -> None:
    row = "OLD" if operation == "DELETE" else "NEW"
    if isinstance(store, SqliteStore):
        await store._writer.run(_sqlite_trigger, operation, table, f"{row}.{column}", value)
        return
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute(
            "CREATE OR REPLACE FUNCTION chronicle.injected_failure() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN RAISE EXCEPTION 'injected: disk full' USING ERRCODE = '53100'; END $$"
        )
        await conn.execute(
            f"CREATE TRIGGER injected BEFORE {operation} ON chronicle.{table} FOR EACH ROW"
            f" WHEN ({row}.{column} = '{value}') EXECUTE FUNCTION chronicle.injected_failure()"
        )


async def heal_deleting(store: StoreAdapter, postgres_url: str, *, table: str) -> None:
    """Deletions from ``table`` (or insertions) go through again."""
    if isinstance(store, SqliteStore):
        await store._writer.run(lambda db: db.execute("DROP TRIGGER temp.injected"))
        return
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute(f"DROP TRIGGER injected ON chronicle.{table}")


def _sqlite_trigger(connection: sqlite3.Connection, operation: str, table: str, column: str, value: str) -> None:
    def disk_full() -> None:
        raise OSError("injected: disk full")

    connection.create_function("injected_failure", 0, disk_full)
    connection.execute(
        f"CREATE TEMP TRIGGER injected BEFORE {operation} ON main.{table}"
        f" WHEN {column} = '{value}' BEGIN SELECT injected_failure(); END"
    )
