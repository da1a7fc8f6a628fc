"""A third-party store in a dozen lines: ``sqlite-memory://`` serves
Chronicle from a SQLite database that lives in memory as long as the
server. It plays every role of service/store/base.py by being Chronicle's
SQLite store on ``:memory:``; a store written from scratch implements the
same protocols (service/store/memory.py is the reference). docs/stores.md
shows how it is registered and tested."""

from __future__ import annotations

from service.store.base import StoreAdapter
from service.store.sqlite import SqliteStore


def open_store(url: str, *, pool_size: int, keep_snapshots: int) -> StoreAdapter:
    """The ``chronicle.stores`` entry point: the store of a ``sqlite-memory://`` URL."""
    if url != "sqlite-memory://":
        raise ValueError(f"sqlite-memory:// takes no path or options, got {url!r}")
    return SqliteStore(":memory:", keep_snapshots=keep_snapshots)
