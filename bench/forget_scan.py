"""What a forget costs on a store with many command records, and what an
index by aggregate on the command records and the audit's refusals would
cost every command (docs/performance.md, "Forgetting").

A forget erases the fingerprints and refusal texts of the aggregate's
command records and the messages of its audit entries: without an index by
aggregate, each of those UPDATEs reads its whole table. Measured here:

- the forget's time (``KeyStore.forget_data_key``, the store's whole forget
  transaction) on a store holding ROWS command records and ROWS / 5
  refusals of other aggregates, without and with the two indexes, on
  SQLite (where it holds the write lock: every command waits) and on a
  PostgreSQL of its own;
- appends with their command record (one event and one record each, as a
  command makes) per second on an empty store, without and with the
  indexes, alternating rounds.

Not part of `make bench`:

    .venv/bin/python -m bench.forget_scan [ROWS]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from service.store.base import StoreAdapter
from service.store.postgres import PostgresStore
from service.store.records import CommandRecord, DataKey, NewEvent
from service.store.sqlite import SqliteStore
from tests.support.postgres import Cluster, start_cluster

ROUNDS = 3
APPENDS = 5000
IN_FLIGHT = 16
INDEXES = {
    "sqlite": (
        "CREATE INDEX commands_by_aggregate ON commands (aggregate_id)",
        "CREATE INDEX refusals_by_aggregate ON refusals (aggregate_id)",
    ),
    "postgres": (
        "CREATE INDEX commands_by_aggregate ON chronicle.commands (aggregate_id)",
        "CREATE INDEX refusals_by_aggregate ON chronicle.refusals (aggregate_id)",
    ),
}
# Rows copied from one template row, each with an id and an aggregate of its own.
FILL = {
    "sqlite": (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
        " INSERT INTO commands (command_id, aggregate_id, command_type, fingerprint, first_version, last_version,"
        " rejection) SELECT 'fill-' || i, 'other-' || (i % 100000), command_type, fingerprint, first_version,"
        " last_version, rejection FROM n, (SELECT * FROM commands WHERE command_id = ?)",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
        " INSERT INTO refusals (recorded_at_us, command_id, command_type, aggregate_id, principal, user_id, origin,"
        " reason, message) SELECT i, 'fill-' || i, 'test.v1.Do', 'other-' || (i % 100000), 'p', 'p', 'o',"
        " 'INSUFFICIENT_FUNDS', 'the balance is ' || i FROM n",
    ),
    "postgres": (
        "INSERT INTO chronicle.commands (command_id, aggregate_id, command_type, fingerprint, first_version,"
        " last_version, rejection) SELECT 'fill-' || i, 'other-' || (i %% 100000), command_type, fingerprint,"
        " first_version, last_version, rejection FROM generate_series(1, %s) i,"
        " (SELECT * FROM chronicle.commands WHERE command_id = %s) t",
        "INSERT INTO chronicle.refusals (recorded_at, command_id, command_type, aggregate_id, principal, user_id,"
        " origin, reason, message) SELECT now(), 'fill-' || i, 'test.v1.Do', 'other-' || (i %% 100000), 'p', 'p',"
        " 'o', 'INSUFFICIENT_FUNDS', 'the balance is ' || i FROM generate_series(1, %s) i",
    ),
}


def event() -> NewEvent:
    return NewEvent(
        event_id=str(uuid.uuid4()),
        aggregate_type="Account",
        event_type="bank.v1.MoneyDeposited",
        schema_version=1,
        payload=b"\x08\x01",
        timestamp_us=time.time_ns() // 1000,
        origin="bench",
    )


def record(aggregate_id: str, version: int) -> CommandRecord:
    return CommandRecord(
        command_id=str(uuid.uuid4()),
        aggregate_id=aggregate_id,
        command_type="bank.v1.Deposit",
        fingerprint=bytes(32),
        first_version=version,
        last_version=version,
        principal="bench",
        user_id="bench",
        origin="bench",
    )


class Site:
    """One store of a kind, and SQL run on its database from underneath."""

    def __init__(self, kind: str, cluster: Cluster | None) -> None:
        self.kind = kind
        self._cluster = cluster
        self._folder = Path(tempfile.mkdtemp(prefix="forget-scan-"))
        self.url = cluster.create_database() if cluster is not None else str(self._folder / "events.db")

    def store(self) -> StoreAdapter:
        if self.kind == "sqlite":
            return SqliteStore(self.url)
        return PostgresStore(self.url, pool_size=4)

    def sql(self, statement: str, *params: object) -> None:
        if self.kind == "sqlite":
            import sqlite3

            with sqlite3.connect(self.url) as db:
                db.execute(statement, params)
            return
        with psycopg.connect(self.url) as conn:
            conn.execute(statement.encode(), params)

    def drop(self) -> None:
        if self._cluster is not None:
            self._cluster.drop_database(self.url)


async def forget_times(kind: str, cluster: Cluster | None, rows: int) -> dict[str, float]:
    """Median seconds of a forget without and with the indexes."""
    site = Site(kind, cluster)
    store = site.store()
    await store.open()
    template = record("subject-0", 1)
    subjects = [f"subject-{i}" for i in range(2 * ROUNDS)]
    for subject in subjects:
        await store.append(subject, [event()], 0, commands=[template if subject == "subject-0" else record(subject, 1)])
        await store.create_data_key(DataKey(subject, "k1", bytes(40)))
    await store.close()
    commands, refusals = FILL[kind]
    started = time.perf_counter()
    site.sql(commands, rows, template.command_id)
    site.sql(refusals, rows // 5)
    filled = time.perf_counter() - started
    store = site.store()  # (a closed store is not opened again)
    await store.open()

    async def forgets(chosen: list[str]) -> float:
        took = []
        for subject in chosen:
            started = time.perf_counter()
            assert await store.forget_data_key(subject)
            took.append(time.perf_counter() - started)
        return statistics.median(took)

    without = await forgets(subjects[:ROUNDS])
    await store.close()
    started = time.perf_counter()
    for statement in INDEXES[kind]:
        site.sql(statement)
    indexed = time.perf_counter() - started
    store = site.store()
    await store.open()
    with_index = await forgets(subjects[ROUNDS:])
    await store.close()
    site.drop()
    return {
        "fill_seconds": round(filled, 1),
        "forget_seconds_without_index": round(without, 4),
        "index_build_seconds": round(indexed, 1),
        "forget_seconds_with_index": round(with_index, 4),
    }


async def appends_per_second(kind: str, cluster: Cluster | None, *, indexed: bool) -> float:
    """Appends of one event and its command record per second, IN_FLIGHT at
    once over as many aggregates, on a new store."""
    site = Site(kind, cluster)
    store = site.store()
    await store.open()
    await store.close()
    if indexed:
        for statement in INDEXES[kind]:
            site.sql(statement)
    store = site.store()
    await store.open()
    versions = [0] * IN_FLIGHT
    left = [APPENDS]

    async def lane(n: int) -> None:
        while left[0] > 0:
            left[0] -= 1
            aggregate_id = f"acc-{n}"
            await store.append(aggregate_id, [event()], versions[n], commands=[record(aggregate_id, versions[n] + 1)])
            versions[n] += 1

    await store.append("warm", [event()], 0, commands=[record("warm", 1)])
    started = time.perf_counter()
    await asyncio.gather(*(lane(n) for n in range(IN_FLIGHT)))
    rate = APPENDS / (time.perf_counter() - started)
    await store.close()
    site.drop()
    return rate


def alternating(kind: str, cluster: Cluster | None) -> dict[str, float]:
    """Appends per second without and with the indexes, medians of ROUNDS
    alternating runs (drift on a shared machine hits both alike)."""
    rates: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(ROUNDS):
        for indexed in (False, True):
            rates[indexed].append(asyncio.run(appends_per_second(kind, cluster, indexed=indexed)))
    without, with_index = statistics.median(rates[False]), statistics.median(rates[True])
    return {
        "appends_per_second_without_index": round(without),
        "appends_per_second_with_index": round(with_index),
        "change_percent": round((with_index - without) / without * 100, 1),
    }


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 500_000
    cluster = start_cluster(own=True)
    report: dict[str, dict[str, float]] = {}
    try:
        for kind, on in (("sqlite", None), ("postgres", cluster)):
            report[kind] = asyncio.run(forget_times(kind, on, rows))
            report[kind] |= alternating(kind, on)
            print(kind, json.dumps(report[kind]), file=sys.stderr)
    finally:
        cluster.shutdown()
    print(json.dumps({"rows": rows, **report}, indent=2))


if __name__ == "__main__":
    main()
