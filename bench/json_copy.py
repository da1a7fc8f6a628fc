"""What --postgres-json-events costs: bank deposits appended through the
PostgreSQL store's group commit (64 appends in flight over 1,000 accounts),
with and without the JSON copy of each payload, on a PostgreSQL of its own.
Reports appends per second, the client's and PostgreSQL's CPU per event,
and the events table's size per event. Not part of `make bench`:

    .venv/bin/python -m bench.json_copy [EVENTS]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
import uuid

import psycopg

from bench.machine import cpu_seconds_self, tree_cpu_seconds
from bench.servers import postmaster_pid
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import build_registry
from service.processing.payload_json import payload_json
from service.settings import Settings
from service.store.postgres import PostgresStore
from service.store.records import NewEvent
from tests.support.postgres import Cluster, start_cluster

ACCOUNTS = 1000
IN_FLIGHT = 64


def deposit(amount: int) -> NewEvent:
    return NewEvent(
        event_id=str(uuid.uuid4()),
        aggregate_type="Account",
        event_type="bank.v1.MoneyDeposited",
        schema_version=1,
        payload=bank.MoneyDeposited(amount=amount).SerializeToString(),
        timestamp_us=time.time_ns() // 1000,
        command_id=str(uuid.uuid4()),
        origin="bench",
    )


async def run(cluster: Cluster, events: int, *, json_copy: bool) -> dict[str, float]:
    url = cluster.create_database()
    json_of = payload_json(build_registry(Settings())) if json_copy else None
    store = PostgresStore(url, pool_size=4, json_of=json_of)
    await store.open()
    versions = dict.fromkeys(range(ACCOUNTS), 0)
    queue = list(range(events))
    postmaster = postmaster_pid(cluster)

    async def appender(lane: int) -> None:
        # Each lane has accounts of its own (lane, lane + 64, ...): one append
        # per aggregate in flight, as an aggregate's worker makes them.
        mine = list(range(lane, ACCOUNTS, IN_FLIGHT))
        while queue:
            n = queue.pop()
            account = mine[n % len(mine)]
            await store.append(f"acc-{account}", [deposit(n % 100 + 1)], versions[account])
            versions[account] += 1

    # Warm up the connections and prepared statements.
    await store.append("warm", [deposit(1)], 0)
    client_cpu, server_cpu, started = cpu_seconds_self(), tree_cpu_seconds(postmaster), time.perf_counter()
    await asyncio.gather(*(appender(lane) for lane in range(IN_FLIGHT)))
    elapsed = time.perf_counter() - started
    client = cpu_seconds_self() - client_cpu
    server = tree_cpu_seconds(postmaster) - server_cpu
    await store.close()
    with psycopg.connect(url) as conn:
        size = conn.execute("SELECT pg_total_relation_size('chronicle.events')").fetchone()
    cluster.drop_database(url)
    return {
        "events_per_second": events / elapsed,
        "client_cpu_us_per_event": client / events * 1e6,
        "postgres_cpu_us_per_event": server / events * 1e6,
        "table_bytes_per_event": (size[0] if size else 0) / events,
    }


def rendering_us() -> float:
    """The JSON rendering alone, per event (in the client's CPU above)."""
    json_of = payload_json(build_registry(Settings()))
    payload = bank.MoneyDeposited(amount=42).SerializeToString()
    started = time.perf_counter()
    for _ in range(20_000):
        json_of("bank.v1.MoneyDeposited", payload)
    return (time.perf_counter() - started) / 20_000 * 1e6


def main() -> None:
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    cluster = start_cluster(own=True)
    try:
        results: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
        for _ in range(3):  # alternating, so that drift hits both alike
            for mode in ("off", "on"):
                results[mode].append(asyncio.run(run(cluster, events, json_copy=mode == "on")))
    finally:
        cluster.shutdown()
    report = {
        mode: {key: round(statistics.median(r[key] for r in runs), 1) for key in runs[0]}
        for mode, runs in results.items()
    }
    report["rendering_us_per_event"] = {"json_of": round(rendering_us(), 1)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
