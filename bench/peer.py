"""The peer: the Python ``eventsourcing`` library (PyPI), in-process, on the
same PostgreSQL, with the same bank domain and load as the bank point:
deposits of 1 over 1,000 accounts from ``threads`` threads. Its aggregate
cache is on without fast-forwarding (the most favourable setting that is
still correct in one process, as Chronicle's workers keep aggregates warm);
a deposit that loses a version race is retried on a reloaded account."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError

from bench import machine


class Account(Aggregate):
    @event("Opened")
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.balance = 0

    @event("Deposited")
    def deposit(self, amount: int) -> None:
        self.balance += amount


class Bank(Application[UUID]):
    def open_account(self, owner: str) -> UUID:
        account = Account(owner)
        self.save(account)
        return account.id

    def deposit(self, account_id: UUID, amount: int) -> None:
        for _ in range(10):
            account: Account = self.repository.get(account_id)
            account.deposit(amount)
            try:
                self.save(account)
                return
            except IntegrityError:
                # Another thread deposited first: the cached account is behind.
                # (A third may have evicted it already: the cache raises
                # KeyError then, which ended the worker and undercounted
                # the library.)
                if self.repository.cache is not None:
                    with contextlib.suppress(KeyError):
                        self.repository.cache.get(account_id, evict=True)
        raise RuntimeError(f"deposit to {account_id} kept conflicting")


def environment(database_url: str, threads: int) -> dict[str, str]:
    parts = urlsplit(database_url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": parts.path.lstrip("/"),
        "POSTGRES_HOST": parts.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(parts.port or 5432),
        "POSTGRES_USER": parts.username or "postgres",
        "POSTGRES_PASSWORD": parts.password or "",
        "POSTGRES_POOL_SIZE": str(threads),
        "POSTGRES_SCHEMA": "peer",
        "AGGREGATE_CACHE_MAXSIZE": "100000",
        "AGGREGATE_CACHE_FASTFORWARD": "n",
    }


def deposits(
    database_url: str, postmaster: int, *, accounts: int = 1000, threads: int = 16, seconds: float = 8.0
) -> dict[str, Any]:
    """Deposits per second, and CPU per deposit of this process and of PostgreSQL."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS peer")
    bank = Bank(env=environment(database_url, threads))
    ids = [bank.open_account(f"owner-{i}") for i in range(accounts)]
    stop = threading.Event()
    counts = [0] * threads
    failures: list[BaseException] = []

    def worker(index: int) -> None:
        chooser = random.Random(index)
        try:
            while not stop.is_set():
                bank.deposit(ids[chooser.randrange(accounts)], 1)
                counts[index] += 1
        except BaseException as failure:
            failures.append(failure)  # a worker that died would undercount the library: the point fails
            raise

    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in workers:
        thread.start()
    time.sleep(1.0)  # warm-up
    done_before = sum(counts)
    cpu_before = machine.cpu_seconds_self(), machine.tree_cpu_seconds(postmaster)
    started = time.perf_counter()
    time.sleep(seconds)
    elapsed = time.perf_counter() - started
    done = sum(counts) - done_before
    cpu_after = machine.cpu_seconds_self(), machine.tree_cpu_seconds(postmaster)
    stop.set()
    for thread in workers:
        thread.join(30)
    bank.close()
    if failures:
        raise RuntimeError(f"{len(failures)} of the library's {threads} threads failed") from failures[0]
    return {
        "library": "eventsourcing",
        "threads": threads,
        "accounts": accounts,
        "completed": done,
        "rate": done / elapsed,
        "client_cpu": cpu_after[0] - cpu_before[0],
        "db_cpu": cpu_after[1] - cpu_before[1],
        "wall": elapsed,
    }
