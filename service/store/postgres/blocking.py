"""The store's blocking side: psycopg's sync API, run on a few threads.

psycopg's async API costs about four times the CPU of its sync API per
round trip (every wait registers and unregisters the socket with the event
loop: measured here, 111 µs against 25 µs for a ``SELECT 1``, 285 µs against
58 µs for a one-statement transaction). The service is CPU-bound on its
event loop, so its hottest database work (group commit, loading aggregates,
reading the log) runs as plain sync code on a small thread pool, each thread
with a pooled connection: the loop only pays one hand-off per operation.
psycopg releases the GIL while it waits for the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from service.store.postgres.errors import translated_sync

T = TypeVar("T")
Work = Callable[[psycopg.Connection[Any]], T]


class BlockingSide:
    def __init__(self, url: str, *, threads: int, connect_timeout: float, options: str) -> None:
        self._connect_timeout = connect_timeout
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=threads,
            open=False,
            timeout=connect_timeout,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(connect_timeout)), "options": options},
            name="chronicle-blocking",
            reconnect_timeout=connect_timeout,
        )
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="chronicle-pg")
        self._closed = False

    def open(self) -> None:
        self._pool.open(wait=False)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(self._threads, self._pool.close)
        self._threads.shutdown(wait=True)

    async def check(self) -> None:
        """Replace the pooled connections that no longer work (see ``PostgresStore.ping``)."""
        await asyncio.get_running_loop().run_in_executor(self._threads, self._pool.check)

    async def run(self, what: str, work: Work[T], *, fast: bool = False, read_only: bool = False) -> T:
        """Run ``work`` with a connection on a pool thread. ``fast``: the
        database was unreachable a moment ago, so wait for a connection only
        briefly (fail fast, let clients retry). ``read_only`` work is run
        once more on a fresh connection if the pooled one turns out dead (a
        database restarted since it was last used)."""
        timeout = min(0.5, self._connect_timeout) if fast else self._connect_timeout
        return await asyncio.get_running_loop().run_in_executor(
            self._threads, self._call, what, work, timeout, read_only
        )

    def _call(self, what: str, work: Work[T], timeout: float, read_only: bool) -> T:
        with translated_sync(what):
            try:
                with self._pool.connection(timeout=timeout) as conn:
                    return work(conn)
            except psycopg.OperationalError:
                if not read_only:
                    raise  # a write may have committed: the caller's retry (same command id) decides
                with self._pool.connection(timeout=timeout) as conn:
                    return work(conn)
