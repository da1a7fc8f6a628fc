"""Everything a store holds, read from underneath it, so that a test can
check that an operation changed nothing, or exactly what it should.

A test that promises "nothing written" compares the whole store before and
after, not the one aggregate it thought of: a stray command record, claim,
audit entry or data key would otherwise go unseen. Each store is read below
the ``StoreAdapter`` protocol (the memory store's containers, the SQLite
file's tables, the PostgreSQL schema's tables), so even a row that no read
method returns shows. SQLite and PostgreSQL also list their schema (tables,
columns, indexes, constraints, functions, triggers) under ``"schema"``.

Tables are named as the SQL stores name them; the memory store's containers
are named after the tables they stand for. On a running server, compare
``at_rest``: its projections write in the background.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter

import psycopg
from psycopg import sql

from service.app import build_registry
from service.plugins.registry import Registry
from service.store.base import AuditQuery, StoreAdapter
from service.store.memory import MemoryStore
from service.store.postgres import PostgresStore
from service.store.sqlite import SqliteStore
from service.store_contract.contents import EVENT_TABLES, Change, Contents
from tests.support.grpc_client import TEST_SETTINGS
from tests.support.waiting import eventually

# The memory store's containers by the table each stands for; one missing
# here is still compared, under its attribute's name.
_MEMORY_TABLES = {
    "_log": "events",
    "_streams": "events_by_aggregate",
    "_event_ids": "event_ids",
    "_commands": "commands",
    "_claims": "claims",
    "_snapshots": "snapshots",
    "_refusals": "refusals",
    "_keys": "data_keys",
    "_projection_positions": "projection_checkpoints",
    "_documents": "projection_documents",
    "_subjects": "projection_subjects",
    "_parked": "projection_parked_events",
    "_groups": "subscription_groups",
    "_consumer_reports": "group_consumer_reports",
}


async def contents(store: object) -> Contents:
    """What ``store`` (or the store it wraps, through ``inner``) holds now."""
    while (inner := getattr(store, "inner", None)) is not None:
        store = inner
    if isinstance(store, MemoryStore):
        return _memory(store)
    if isinstance(store, SqliteStore):
        return await asyncio.to_thread(_sqlite, store._path)
    if isinstance(store, PostgresStore):
        return await _postgres(store.url)
    raise TypeError(f"no way to read {type(store).__name__} from underneath")


async def at_rest(store: StoreAdapter, *, registry: Registry | None = None) -> Contents:
    """What ``store`` holds once a server's projections (those of ``registry``,
    by default the plugins a test server loads) have started and caught up
    with the log:
    they write in the background, so on a running server this, not
    ``contents``, is the state to compare before and after a request. The
    lease tables are left out (heartbeats)."""
    names = [p.name for p in (registry or build_registry(TEST_SETTINGS)).projections]

    async def caught_up() -> bool:
        # Started, too: a runner's first run records the version its
        # documents are built by (a checkpoint row), even on an empty log.
        head = await store.log_head()
        return all(
            [
                await store.projection_position(name) >= head and await store.projection_version(name) is not None
                for name in names
            ]
        )

    await eventually(caught_up, what="the projections catching up with the log")
    held = await contents(store)
    # A running server's lease heartbeats (and its group consumers' reports)
    # rewrite these rows all the time: they say who is alive, not what the
    # store holds.
    return Contents({name: rows for name, rows in held.tables.items() if name not in LIVENESS_TABLES})


LIVENESS_TABLES = frozenset({"lease_members", "leases", "group_consumer_reports"})


async def audited_dry_runs_only(store: StoreAdapter, before: Contents, *outcomes: str) -> None:
    """Since ``before``, nothing changed but the audit's own table, which
    gained one dry run's entry per outcome given, newest first: what a dry
    run leaves (it writes nothing, and is audited)."""
    changes = (await at_rest(store)).changes_since(before)
    assert list(changes) == ["refusals"], changes
    assert len(changes["refusals"].added) == len(outcomes) and not changes["refusals"].removed
    entries = [e for e in await store.read_audit(AuditQuery(limit=len(outcomes))) if e.dry_run]
    assert [e.outcome for e in entries] == list(outcomes)
    assert all(e.peer.startswith("ipv") for e in entries)


def _memory(store: MemoryStore) -> Contents:
    tables: dict[str, Counter[str]] = {}
    for name, value in vars(store).items():
        if isinstance(value, dict):
            rows = [repr(item) for item in value.items()]
        elif isinstance(value, list | set):
            rows = [repr(item) for item in value]
        else:
            continue  # settings and the commit notifier, not data
        tables[_MEMORY_TABLES.get(name, name)] = Counter(rows)
    return Contents(tables)


def _sqlite(path: str) -> Contents:
    conn = sqlite3.connect(path)
    try:
        names = [
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        tables = {name: Counter(repr(row) for row in conn.execute(f'SELECT * FROM "{name}"')) for name in names}
        schema = [repr(row) for row in conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")]
        schema.append(repr(("user_version", conn.execute("PRAGMA user_version").fetchone())))
    finally:
        conn.close()
    return Contents({**tables, "schema": Counter(schema)})


_POSTGRES_SCHEMA = [
    "SELECT table_name, column_name, data_type, is_nullable, column_default"
    " FROM information_schema.columns WHERE table_schema = 'chronicle'",
    "SELECT indexdef FROM pg_indexes WHERE schemaname = 'chronicle'",
    "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
    " FROM pg_constraint WHERE connamespace = 'chronicle'::regnamespace",
    "SELECT proname, pg_get_functiondef(oid) FROM pg_proc WHERE pronamespace = 'chronicle'::regnamespace",
    "SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger"
    " WHERE NOT tgisinternal AND tgrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'chronicle'::regnamespace)",
]


async def _postgres(url: str) -> Contents:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        listed = await conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'chronicle'::regnamespace AND relkind IN ('r', 'p')"
        )
        tables: dict[str, Counter[str]] = {}
        for (name,) in await listed.fetchall():
            query = sql.SQL("SELECT t::text FROM chronicle.{} AS t").format(sql.Identifier(name))
            tables[name] = Counter(text for (text,) in await (await conn.execute(query)).fetchall())
        schema: list[str] = []
        for query_text in _POSTGRES_SCHEMA:
            schema += [repr(tuple(row)) for row in await (await conn.execute(query_text)).fetchall()]
    return Contents({**tables, "schema": Counter(schema)})


__all__ = ["EVENT_TABLES", "Change", "Contents", "at_rest", "contents"]
