"""A routing Python client's group consumer, alone in its client, fails over
when the replica it consumes on stops (SIGTERM): clients.md promises it
joins its group on a live replica. It used to retry the stopped one for
ever: a consumer's first act on a new stream is to write its start, and
that write (the connection refused) was the failure, which nothing booked,
so the address given was never marked down; only a subscription in the
same client, whose failure was booked on its read, moved it."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.client import ChronicleClient, RetryPolicy
from tests.support.processes import Replica, replica
from tests.support.routes import record_marks
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

FAST = RetryPolicy(initial_backoff=0.02, max_backoff=0.2, retry_for=15.0)
REPLICA_FLAGS = ["--lease-seconds", "2", "--anonymous-admin"]


@pytest.fixture
def two(postgres_url: str, tmp_path: Path) -> Iterator[list[Replica]]:
    with ExitStack() as stack:
        yield [
            stack.enter_context(replica(postgres_url, log_path=tmp_path / f"replica-{n}.log", extra=REPLICA_FLAGS))
            for n in range(2)
        ]


def shared_by_two(topology: Any) -> bool:
    owners = set(topology.partition_owners)
    return len(topology.members) == 2 and "" not in owners and len(owners) == 2


async def test_a_consumer_alone_joins_its_group_on_the_survivor_when_its_replica_stops(
    two: list[Replica], monkeypatch: pytest.MonkeyPatch
) -> None:
    seed, survivor = two
    group = f"alone-{uuid.uuid4().hex[:8]}"
    async with ChronicleClient.connect(seed.address, routing=True, retry=FAST) as client:
        routes = client.routes
        assert routes is not None
        await asyncio.wait_for(routes.wait_for_topology(shared_by_two), 30)
        await client.groups.create(group, aggregate_types=["Account"], from_end=True)
        consumed: set[str] = set()
        consumer = client.consume(group, consumer="alone", reconnect_delay=0.1)

        async def consume() -> None:
            async for delivery in consumer:
                consumed.add(delivery.event.envelope.event_id)
                await delivery.ack()

        task = asyncio.create_task(consume())
        try:
            await asyncio.wait_for(consumer.joined.wait(), 20)
            marked = record_marks(client.routes, monkeypatch)
            seed.stop(signal.SIGTERM)
            tag = uuid.uuid4().hex[:8]
            written = [await client.submit(f"acc-{tag}-{n}", bank.OpenAccount(owner=f"o{n}")) for n in range(5)]
            ids = {event.event_id for submitted in written for event in submitted.events}
            # Delivered on the survivor: the consumer's own failure marked the seed down.
            await eventually(lambda: consumed >= ids, within=30, what="the events written after the stop consumed")
            assert seed.address in marked
            assert survivor.address not in marked

            async def on_the_survivor() -> bool:  # its session reports its replica with its heartbeat
                consumers = (await client.groups.get(group)).consumers
                return [c.replica_address for c in consumers] == [survivor.address]

            await eventually(on_the_survivor, within=10, what="the consumer reported on the survivor")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await consumer.close()
