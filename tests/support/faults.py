"""Faults injected from outside, as an operator or a broken network would."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import psycopg

from tests.support.processes import Replica


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def log_head(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT last_position FROM chronicle.log_head").fetchone()
    return int(row[0]) if row else 0


def terminate_backends(database_url: str, *, only_waiting: bool = False) -> int:
    """``pg_terminate_backend`` every other connection to the database (with
    ``only_waiting``: those waiting on a lock, i.e. mid-transaction); return
    how many were terminated."""
    condition = " AND wait_event_type = 'Lock'" if only_waiting else ""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()" + condition
        ).fetchall()
    return sum(1 for (done,) in rows if done)


def waiting_on_locks(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return int(row[0]) if row else 0


def wait_for_waiters(database_url: str, count: int = 1, *, within: float = 20.0) -> None:
    """Until ``count`` connections wait on a lock: appends' transactions
    (with group commit, one transaction may carry several appends)."""
    deadline = time.monotonic() + within
    while waiting_on_locks(database_url) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} transactions did not block within {within}s")
        time.sleep(0.02)


def wait_until_executing(server: Replica, commands: int, *, within: float = 20.0) -> None:
    """Until the server holds ``commands`` calls that its workers have taken
    up (none waiting in an aggregate's queue): each will run to its end,
    whatever happens to its caller. Read from the server's own metrics."""
    deadline = time.monotonic() + within
    while not (
        server.metric("chronicle_rpcs_in_flight") >= commands and server.metric("chronicle_queued_commands") == 0
    ):
        if time.monotonic() > deadline:
            raise AssertionError(f"the server did not take up {commands} commands within {within}s")
        time.sleep(0.02)


@contextmanager
def appends_blocked(database_url: str) -> Iterator[None]:
    """Hold the log's position lock: every append that writes events waits
    inside its transaction (command records inserted, no position yet) until
    the block ends. The service's lock_timeout (5 s) bounds how long."""
    with psycopg.connect(database_url) as conn:
        conn.execute("SELECT last_position FROM chronicle.log_head FOR UPDATE")
        try:
            yield
        finally:
            conn.rollback()
