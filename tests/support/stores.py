"""The stores the shared contract suite runs against, by name: each adapter
on a new database, and the SQL adapters once more on a database that the
code's first migration made and the store then migrated (``-migrated``), as
one an earlier Chronicle left (on PostgreSQL migrated once per run, each
test on a copy). That database is empty: the contract's tests expect a store
of their own; rows surviving the migrations is
``tests/integration/test_migrations_over_data.py``'s job."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.store.base import DEFAULT_KEEP_SNAPSHOTS, StoreAdapter
from service.store.memory import MemoryStore
from service.store.postgres import PostgresStore
from service.store.sqlite import SqliteStore
from tests.support.schema_versions import build_sqlite


@dataclass(frozen=True)
class StoreSite:
    """Where a test's store may live: a private folder, a private database."""

    tmp: Path
    postgres_url: Callable[[], str]
    # A new database already at the current schema (``conftest.postgres_current``).
    postgres_current: Callable[[], Awaitable[str]]
    # A new database made at an earlier schema version, then migrated by the
    # current store (``conftest.postgres_at``).
    postgres_migrated_from: Callable[[int], Awaitable[str]]
    keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS


def store_site(request: pytest.FixtureRequest, tmp: Path, *, keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS) -> StoreSite:
    """Where a test's store lives; PostgreSQL's databases made only when asked for."""
    return StoreSite(
        tmp=tmp,
        postgres_url=lambda: request.getfixturevalue("postgres_url"),
        postgres_current=lambda: request.getfixturevalue("postgres_current")(),
        postgres_migrated_from=lambda version: request.getfixturevalue("postgres_at")(
            version, filled=False, migrated=True
        ),
        keep_snapshots=keep_snapshots,
    )


StoreFactory = Callable[[StoreSite], AbstractAsyncContextManager[StoreAdapter]]


@asynccontextmanager
async def memory_store(site: StoreSite) -> AsyncIterator[StoreAdapter]:
    store = MemoryStore(keep_snapshots=site.keep_snapshots)
    await store.open()
    yield store
    await store.close()


@asynccontextmanager
async def sqlite_store(site: StoreSite) -> AsyncIterator[StoreAdapter]:
    store = SqliteStore(site.tmp / "events.db", keep_snapshots=site.keep_snapshots)
    await store.open()
    yield store
    await store.close()


@asynccontextmanager
async def sqlite_store_migrated(site: StoreSite) -> AsyncIterator[StoreAdapter]:
    path = site.tmp / "events.db"
    build_sqlite(path, 1, filled=False)
    store = SqliteStore(path, keep_snapshots=site.keep_snapshots)
    await store.open()
    yield store
    await store.close()


@asynccontextmanager
async def postgres_store(site: StoreSite) -> AsyncIterator[StoreAdapter]:
    # A copy of a database the current store migrated once: opening it finds
    # nothing to migrate (migrating an empty database is
    # test_postgres_operations' and the template's own open()).
    async with _opened_postgres(await site.postgres_current(), site) as store:
        yield store


@asynccontextmanager
async def postgres_store_migrated(site: StoreSite) -> AsyncIterator[StoreAdapter]:
    async with _opened_postgres(await site.postgres_migrated_from(1), site) as store:
        yield store


@asynccontextmanager
async def _opened_postgres(url: str, site: StoreSite) -> AsyncIterator[StoreAdapter]:
    store = PostgresStore(url, pool_size=4, keep_snapshots=site.keep_snapshots)
    await store.open()
    await store.ping()  # the database must be there: fail here, not in the test
    yield store
    await store.close()


STORES: dict[str, StoreFactory] = {
    "memory": memory_store,
    "sqlite": sqlite_store,
    "sqlite-migrated": sqlite_store_migrated,
    "postgres": postgres_store,
    "postgres-migrated": postgres_store_migrated,
}
