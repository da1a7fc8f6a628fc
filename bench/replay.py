"""Aggregate load time: one aggregate of 10,000 events, rebuilt from its
events alone, then from a snapshot, on the benchmark's PostgreSQL."""

from __future__ import annotations

import statistics
import time
import uuid

from bench.plugin import plugin, tally
from service.plugins.registry import Registry
from service.processing.state import AggregateLoader
from service.store.base import Store
from service.store.postgres import PostgresStore
from service.store.records import NewEvent, Snapshot


async def load_times(database_url: str, events: int = 10_000, rounds: int = 7) -> dict[str, float]:
    store = PostgresStore(database_url, pool_size=2)
    await store.open()
    try:
        registry = Registry([plugin])
        aggregate_id = f"replay-{uuid.uuid4().hex[:8]}"
        version = 0
        while version < events:
            chunk = [
                NewEvent(
                    event_id=str(uuid.uuid4()),
                    aggregate_type="Tally",
                    event_type="google.protobuf.Int64Value",
                    schema_version=1,
                    payload=b"\x08" + bytes([(version + i) % 100 + 1]),
                    timestamp_us=time.time_ns() // 1000,
                )
                for i in range(min(500, events - version))
            ]
            await store.append(aggregate_id, chunk, version)
            version += len(chunk)
        loader = AggregateLoader(Store.of(store), registry)

        async def timed() -> float:
            start = time.perf_counter()
            loaded = await loader.load(aggregate_id, tally)
            elapsed = time.perf_counter() - start
            assert loaded.version == events
            return elapsed

        full = statistics.median([await timed() for _ in range(rounds)])
        state = (await loader.load(aggregate_id, tally)).state
        await store.save_snapshot(
            Snapshot(
                aggregate_id,
                "Tally",
                events,
                tally.snapshot_state_type,  # as the server saves them: with its fingerprint
                tally.state_schema_version,
                state.SerializeToString(),
            )
        )
        snapshotted = statistics.median([await timed() for _ in range(rounds)])
        return {"events": events, "full_replay_ms": full * 1000, "with_snapshot_ms": snapshotted * 1000}
    finally:
        await store.close()


def main() -> None:
    """``python -m bench.replay``: this point alone, on a throwaway cluster."""
    import asyncio
    import json

    from tests.support.postgres import start_cluster

    cluster = start_cluster(own=True)
    try:
        print(json.dumps(asyncio.run(load_times(cluster.admin_url))))
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
