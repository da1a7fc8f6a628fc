"""A command the store refused for contention (another connection held what
it needed) is told to its caller in words of no driver: UNAVAILABLE,
reason CONTENTION, "the store is busy …; retry shortly", with a RetryInfo;
the driver's text ("database is locked", PostgreSQL's "deadlock detected"
and its SQLSTATE) goes to the server's log, at most every STORE_LOG_EVERY
seconds as an unreachable store's does. Before, SQLite's refusal read
"SQLite: database is locked" and PostgreSQL's named the SQLSTATE and the
store's internal operation.

The contention is real: a second connection of the test's holds SQLite's
write lock past the server's busy timeout, or makes the server's append
PostgreSQL's deadlock victim on each of its attempts."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import psycopg
import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.api import status
from service.app import start
from service.errors import CONTENTION, STORE_BUSY
from tests.support.grpc_client import TEST_SETTINGS, ErrorDetails, command, connect, details_of

# What of a driver's words a caller must never read.
DRIVER_WORDS = ("locked", "SQLite", "PostgreSQL", "deadlock", "40P01", "append")


def _told(details: ErrorDetails) -> list[str]:
    return [details.message, *details.metadata.values()]


async def _refused_then_served(
    database_url: str,
    hold: Callable[[threading.Event], AbstractContextManager[None]],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[ErrorDetails, list[str]]:
    """Open an account; deposit while ``hold(done)`` holds what the store
    needs (``done`` is set once the deposit was answered); deposit
    again with the same command id once it let go. The refusal's details,
    and what the server logged of it."""
    monkeypatch.setattr(status, "STORE_LOG_EVERY", 0.0)  # each refusal logged, whatever other tests logged
    app = await start(replace(TEST_SETTINGS, database_url=database_url))
    try:
        async with connect(app.address) as client:
            await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
            deposit = command("acc-1", bank.Deposit(amount=5))
            caplog.set_level(logging.WARNING, logger="service.api.status")
            done = threading.Event()
            with hold(done):
                try:
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await client.submit(deposit)
                finally:
                    done.set()
            served = await client.submit(deposit)  # the same command, once the store is free
            assert (served.version, served.replayed) == (2, False)  # the refused attempt wrote nothing
    finally:
        await app.stop(grace=1)
    logged = [r.getMessage() for r in caplog.records if r.name == "service.api.status"]
    return details_of(refused.value), logged


def _assert_busy(details: ErrorDetails) -> None:
    said = (details.code, details.reason, details.message, details.retry)
    assert said == (grpc.StatusCode.UNAVAILABLE, CONTENTION, STORE_BUSY, True)
    assert [text for text in _told(details) for word in DRIVER_WORDS if word in text] == []


async def test_sqlite_write_lock_held_by_another_connection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "chronicle.db"

    @contextmanager
    def write_lock_held(done: threading.Event) -> Iterator[None]:
        # Past the store's busy timeout (5 s): the server's append gives up.
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            yield
        finally:
            other.execute("ROLLBACK")
            other.close()

    details, logged = await _refused_then_served(f"sqlite:///{path}", write_lock_held, caplog, monkeypatch)
    _assert_busy(details)
    assert any(CONTENTION in line and "database is locked" in line for line in logged), logged


_DEADLOCKING = """
CREATE FUNCTION public.deadlocking() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(4242, 1);
    PERFORM pg_advisory_xact_lock(4242, 2);
    RETURN NULL;
END $$;
CREATE TRIGGER deadlocking AFTER INSERT ON chronicle.events
    FOR EACH STATEMENT EXECUTE FUNCTION public.deadlocking();
"""
_WAITING_ON_2 = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 4242 AND objid = 2 AND NOT granted"
)


def _deadlock_each_attempt(url: str, done: threading.Event, ready: threading.Event) -> None:
    """Hold advisory lock 2; each time the server's append (which took lock
    1 in its transaction) waits on it, ask for lock 1: a lock-order cycle,
    whose victim is the server's transaction (its deadlock_timeout runs out
    first: this session's is long). Lock 1, won then, is let go so that the
    append's next attempt takes it and meets the cycle again."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET deadlock_timeout = '60s'")
        conn.execute("SELECT pg_advisory_lock(4242, 2)")
        ready.set()
        while not done.is_set():
            row = conn.execute(_WAITING_ON_2).fetchone()
            if row is None or row[0] == 0:
                time.sleep(0.01)
                continue
            conn.execute("SELECT pg_advisory_lock(4242, 1)")  # blocks until the server's transaction is the victim
            conn.execute("SELECT pg_advisory_unlock(4242, 1)")
        conn.execute("SELECT pg_advisory_unlock_all()")


@pytest.mark.postgres
async def test_postgresql_deadlock_on_every_attempt(
    postgres_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        # The server's sessions find the cycle soon (it is theirs to break).
        conn.execute(f"ALTER DATABASE {conn.info.dbname} SET deadlock_timeout = '100ms'")

    @contextmanager
    def deadlocking(done: threading.Event) -> Iterator[None]:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(_DEADLOCKING)
        ready = threading.Event()
        other = threading.Thread(target=_deadlock_each_attempt, args=(postgres_url, done, ready), daemon=True)
        other.start()
        assert ready.wait(10)
        try:
            yield
        finally:
            done.set()
            other.join(30)
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                conn.execute("DROP TRIGGER deadlocking ON chronicle.events")

    details, logged = await _refused_then_served(postgres_url, deadlocking, caplog, monkeypatch)
    _assert_busy(details)
    assert any(CONTENTION in line and "deadlock detected" in line for line in logged), logged
