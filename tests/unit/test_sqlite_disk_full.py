"""A SQLite write that fails for want of room says so.

When a COMMIT fails with SQLITE_FULL (or SQLITE_IOERR), SQLite has already
rolled the transaction back; the store's ``ROLLBACK`` after it then failed
too ("cannot rollback - no transaction is active") and its error was the
one the client read, hiding the disk. ``writer.writing`` now rolls back only
a transaction that is still active and lets the original error through
(UNAVAILABLE, STORE_UNAVAILABLE, with SQLite's own words).

Filling a real disk is not needed: a connection whose COMMIT fails as a full
disk's does (SQLite rolls back, then reports "database or disk is full"); a
real COMMIT failing in SQLite itself, in a child process whose file size
limit (RLIMIT_FSIZE) the WAL cannot grow past; and a real SQLITE_FULL from
``PRAGMA max_page_count``, which SQLite reports once the file reaches it.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.errors import StoreUnavailable
from service.store.sqlite import SqliteStore
from tests.support.events import new_event

ROOT = Path(__file__).resolve().parents[2]
FULL = "database or disk is full"


class _FillsUpOnCommit(sqlite3.Connection):
    """A connection whose COMMIT fails as on a full disk while ``full``:
    SQLite rolls the transaction back, then reports SQLITE_FULL."""

    full = False

    def execute(self, sql: str, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
        if self.full and sql.strip().upper() == "COMMIT" and self.in_transaction:
            super().execute("ROLLBACK")
            raise sqlite3.OperationalError(FULL)
        return super().execute(sql, *args, **kwargs)


@pytest.fixture
def fills_up(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_FillsUpOnCommit]]:
    """Every SQLite connection opened meanwhile is a ``_FillsUpOnCommit``."""
    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        return real_connect(*args, factory=_FillsUpOnCommit, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)
    yield _FillsUpOnCommit
    _FillsUpOnCommit.full = False


async def _count(store: SqliteStore, table: str) -> int:
    return int(await store._writer.run(lambda db: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]))


async def test_a_commit_that_fails_on_a_full_disk_says_the_disk_is_full(
    tmp_path: Path, fills_up: type[_FillsUpOnCommit]
) -> None:
    store = SqliteStore(tmp_path / "events.db")
    await store.open()
    try:
        await store.append("acc-1", [new_event()], 0)
        fills_up.full = True
        with pytest.raises(StoreUnavailable) as raised:
            await store.append("acc-2", [new_event()], 0)
        assert raised.value.reason == "STORE_UNAVAILABLE"
        assert raised.value.message == f"SQLite: {FULL}"  # not "cannot rollback - no transaction is active"
        assert await _count(store, "events") == 1  # nothing of it was written
        fills_up.full = False  # room again: the store serves on, no transaction left open
        await store.append("acc-2", [new_event()], 0)
        assert await _count(store, "events") == 2
    finally:
        await store.close()


_CHILD = textwrap.dedent(
    """
    import asyncio, json, resource, signal, sys
    from pathlib import Path

    from service.errors import StoreUnavailable
    from service.store.sqlite import SqliteStore
    from tests.support.events import new_event

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing us


    async def main() -> None:
        path = Path(sys.argv[1])
        store = SqliteStore(path)
        await store.open()
        await store.append("acc-1", [new_event()], 0)
        largest = max(f.stat().st_size for f in path.parent.iterdir())
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        # Room for no more than a page: the COMMIT's WAL frames do not fit.
        resource.setrlimit(resource.RLIMIT_FSIZE, (largest + 1000, hard))
        outcome = {}
        try:
            await store.append("acc-2", [new_event(payload=b"x" * 20000)], 0)
            outcome["first"] = "appended"
        except StoreUnavailable as error:
            outcome["first"] = error.message
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        await store.append("acc-2", [new_event()], 0)
        outcome["then"] = "appended"
        outcome["events"] = await store._writer.run(lambda db: db.execute("SELECT count(*) FROM events").fetchone()[0])
        await store.close()
        print(json.dumps(outcome))


    asyncio.run(main())
    """
)


def test_a_commit_sqlite_itself_fails_and_rolls_back_reports_its_own_error(tmp_path: Path) -> None:
    """A real COMMIT failing in SQLite (writing the WAL past the process's
    file size limit: SQLITE_IOERR_WRITE, transaction rolled back by SQLite),
    the same way a full disk's SQLITE_FULL does."""
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "events.db")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    outcome = json.loads(child.stdout.strip().splitlines()[-1])
    assert outcome["first"] == "SQLite: disk I/O error", outcome  # not "cannot rollback - no transaction is active"
    assert outcome["then"] == "appended"
    assert outcome["events"] == 2  # the failed append wrote nothing


async def test_a_file_at_its_max_page_count_is_full_and_says_so(tmp_path: Path) -> None:
    """A real SQLITE_FULL: SQLite reports it once the file reaches
    ``max_page_count`` (here on the INSERT, inside the transaction, which
    the store then rolls back itself)."""
    store = SqliteStore(tmp_path / "events.db")
    await store.open()
    try:
        await store.append("acc-1", [new_event()], 0)

        def cap(db: sqlite3.Connection) -> int:
            pages = int(db.execute("PRAGMA page_count").fetchone()[0])
            db.execute(f"PRAGMA max_page_count = {pages}")
            return pages

        pages = await store._writer.run(cap)
        with pytest.raises(StoreUnavailable) as raised:
            await store.append("acc-2", [new_event(payload=b"x" * 20000)], 0)
        assert raised.value.message == f"SQLite: {FULL}"
        assert await _count(store, "events") == 1
        await store._writer.run(lambda db: db.execute(f"PRAGMA max_page_count = {pages * 100}"))
        await store.append("acc-2", [new_event(payload=b"x" * 20000)], 0)
        assert await _count(store, "events") == 2
    finally:
        await store.close()
