"""The stores the shared contract suite runs against, by name."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from service.store.base import EventStore
from service.store.memory import MemoryStore
from service.store.sqlite import SqliteStore

StoreFactory = Callable[[Path], AbstractAsyncContextManager[EventStore]]


@asynccontextmanager
async def memory_store(tmp: Path) -> AsyncIterator[EventStore]:
    store = MemoryStore()
    await store.open()
    yield store
    await store.close()


@asynccontextmanager
async def sqlite_store(tmp: Path) -> AsyncIterator[EventStore]:
    store = SqliteStore(tmp / "events.db")
    await store.open()
    yield store
    await store.close()


STORES: dict[str, StoreFactory] = {"memory": memory_store, "sqlite": sqlite_store}
