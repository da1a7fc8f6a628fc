"""The stores the shared contract suite runs against, by name."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from service.store.base import DEFAULT_KEEP_SNAPSHOTS, StoreAdapter
from service.store.memory import MemoryStore
from service.store.postgres import PostgresStore
from service.store.sqlite import SqliteStore


@dataclass(frozen=True)
class StoreSite:
    """Where a test's store may live: a private folder, a private database."""

    tmp: Path
    postgres_url: Callable[[], str]
    keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS


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
async def postgres_store(site: StoreSite) -> AsyncIterator[StoreAdapter]:
    store = PostgresStore(site.postgres_url(), pool_size=4, keep_snapshots=site.keep_snapshots)
    await store.open()
    await store.ping()  # the database must be there: fail here, not in the test
    yield store
    await store.close()


STORES: dict[str, StoreFactory] = {"memory": memory_store, "sqlite": sqlite_store, "postgres": postgres_store}
