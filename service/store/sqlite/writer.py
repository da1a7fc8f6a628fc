"""The SQLite store's one thread and its one connection.

Every call to the file, read or write, runs on one dedicated thread with one
connection, in the order it was made: the event loop never blocks on the
file, and the connection is never used by two threads at once.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Concatenate, ParamSpec, TypeVar

from service.errors import StoreUnavailable, store_busy
from service.store.sqlite import sql

# Primary result codes of a lock another connection holds (the extended
# codes, SQLITE_BUSY_SNAPSHOT say, carry them in their low byte).
_BUSY = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})

P = ParamSpec("P")
T = TypeVar("T")


class Writer:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chronicle-sqlite")
        self._conn: sqlite3.Connection | None = None

    async def open(self, connect: Callable[[], sqlite3.Connection]) -> None:
        """Make the connection with ``connect``, on the thread; once."""

        def open_once() -> None:
            if self._conn is None:
                self._conn = connect()

        await self._call(open_once)

    async def close(self) -> None:
        if self._conn is not None:
            await self._call(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    async def run(self, work: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``work(connection, *args)``, on the thread."""
        return await self._call(lambda: work(self._connection(), *args, **kwargs))

    async def _call(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn)
        except sqlite3.OperationalError as error:
            if (getattr(error, "sqlite_errorcode", None) or 0) & 0xFF in _BUSY:
                # Another connection (a second process on the file) held the
                # write lock past the busy timeout: CONTENTION, in words of
                # no driver; "database is locked" is the server's log's.
                raise store_busy(f"SQLite: {error}") from error
            # Unreadable file, full disk: the store cannot serve now.
            raise StoreUnavailable(f"SQLite: {error}") from error

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable("the SQLite store is not open")
        return self._conn


@contextmanager
def writing(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, holding the file's write lock from its start:
    committed if the block ends, rolled back if it raises.

    Rolled back only if still active: after some errors (SQLITE_FULL or
    SQLITE_IOERR on a COMMIT, or on a statement that had to undo the whole
    transaction) SQLite has rolled it back itself, and a ROLLBACK would fail
    ("cannot rollback - no transaction is active") and hide the error that
    says what happened (the disk is full)."""
    db.execute(sql.BEGIN_WRITE)
    try:
        yield
        db.execute(sql.COMMIT)
    except BaseException as error:
        if db.in_transaction:
            try:
                db.execute(sql.ROLLBACK)
            except sqlite3.Error as failed:
                error.add_note(f"and the ROLLBACK after it failed too: {failed}")
        raise


@contextmanager
def reading(db: sqlite3.Connection) -> Iterator[None]:
    """One read transaction: its reads see one snapshot of the file (another
    process may be writing it meanwhile)."""
    db.execute(sql.BEGIN_READ)
    try:
        yield
    finally:
        if db.in_transaction:  # not if an error made SQLite end it (as for writing)
            db.execute(sql.COMMIT)
