"""The PostgreSQL store's LISTEN for commits outlives an unexpected error."""

from __future__ import annotations

import pytest

from service.store.postgres import PostgresStore
from service.store.postgres.database import Database
from tests.support.events import new_event
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres


async def test_an_unexpected_error_does_not_end_the_listener(
    postgres_store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the listener, commits through other replicas would wake this
    # process's readers only when their poll times out: it must keep trying
    # after any error, not only after a lost connection.
    db = Database(postgres_store.url, connections=1, connect_timeout=5.0, lock_timeout=5.0)
    await db.open()
    original = db._ensure_schema
    calls = 0

    async def failing_once() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("not a psycopg error")
        await original()

    monkeypatch.setattr(db, "_ensure_schema", failing_once)
    try:
        db.listen()
        listener = db._listener
        assert listener is not None
        await eventually(lambda: calls >= 2, what="LISTEN tried again")
        assert not listener.done()
        # And it listens: a commit through another store (``db`` sees it only
        # through LISTEN or the log's end read when LISTEN starts) wakes readers.
        await postgres_store.append("acc-1", [new_event()], 0)
        await db.commits.wait_beyond(0, max_wait=20.0)  # returns on the timeout too
        assert db.commits.latest >= 1
        assert not listener.done()
    finally:
        await db.close()
