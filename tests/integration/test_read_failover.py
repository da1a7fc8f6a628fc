"""A routing Python client's reads fail over as its commands do: two replica
processes on one PostgreSQL, the client given the first, which is killed
(SIGKILL) mid-way. Its subscription resumes on the survivor after its last
complete position (every event once, in order), its group consumer joins
the group there and gets the events, and its reads (``get_aggregate`` and
``read`` with ``min_position``, the group, projection and reaction calls)
are served there, the dead replica marked down as for a command."""

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

# No max_attempts: a read is retried for retry_for (30 s), a stream for as
# long as it is read. The old client spent those 30 s on the dead seed.
FAST = RetryPolicy(initial_backoff=0.02, max_backoff=0.2, retry_for=15.0)
REPLICA_FLAGS = ["--lease-seconds", "2", "--anonymous-admin"]


@pytest.fixture
def two(postgres_url: str, tmp_path: Path) -> Iterator[list[Replica]]:
    with ExitStack() as stack:
        replicas = [
            stack.enter_context(replica(postgres_url, log_path=tmp_path / f"replica-{n}.log", extra=REPLICA_FLAGS))
            for n in range(2)
        ]
        yield replicas


def shared_by_two(topology: Any) -> bool:
    owners = set(topology.partition_owners)
    return len(topology.members) == 2 and "" not in owners and len(owners) == 2


async def test_reads_a_subscription_and_a_group_consumer_go_on_when_the_address_given_dies(
    two: list[Replica], monkeypatch: pytest.MonkeyPatch
) -> None:
    seed, survivor = two
    async with ChronicleClient.connect(seed.address, routing=True, retry=FAST) as client:
        routes = client.routes
        assert routes is not None
        await asyncio.wait_for(routes.wait_for_topology(shared_by_two), 30)
        marked = record_marks(routes, monkeypatch)
        await client.groups.create("audit", aggregate_types=["Account"])

        subscribed: list[int] = []
        subscription = client.subscribe(aggregate_types=["Account"])

        async def subscribe() -> None:
            async for event in subscription:
                subscribed.append(event.position)

        consumed: set[str] = set()
        consumer = client.consume("audit", consumer="auditor", reconnect_delay=0.1)

        async def consume() -> None:
            async for delivery in consumer:
                consumed.add(delivery.event.envelope.event_id)
                await delivery.ack()

        tasks = [asyncio.create_task(subscribe()), asyncio.create_task(consume())]
        try:
            tag = uuid.uuid4().hex[:8]

            async def open_account(n: int) -> Any:
                return await client.submit(f"acc-{tag}-{n}", bank.OpenAccount(owner=f"owner-{n}"))

            before = [await open_account(n) for n in range(10)]
            await eventually(lambda: len(subscribed) >= 10, within=20, what="the first ten events subscribed")
            await eventually(lambda: len(consumed) >= 10, within=20, what="the first ten events consumed")
            # Both streams are on the seed (reads go to the address given while it is up).
            groups = await client.groups.list()
            (auditor,) = groups[0].consumers
            assert auditor.replica_address == seed.address
            assert marked == []

            seed.stop(signal.SIGKILL)
            after = [await open_account(n) for n in range(10, 20)]
            last = after[-1].position

            # Read your writes on the survivor, the seed being dead.
            state = await client.get_aggregate(f"acc-{tag}-19", bank.Account, min_position=last)
            assert (state.version, state.state.owner) == (1, "owner-19")
            events = await client.read_all(f"acc-{tag}-15", min_position=last)
            assert [e.event_type for e in events] == ["bank.v1.AccountOpened"]
            assert isinstance(await client.projections.list(), list)
            assert isinstance(await client.reactions.list(), list)
            assert seed.address in marked
            assert survivor.address not in marked

            # The subscription resumed there: every event once, in log order.
            await eventually(lambda: len(subscribed) >= 20, within=30, what="all 20 events subscribed")
            await asyncio.sleep(0.3)  # a repeat would come now
            assert subscribed == [submitted.position for submitted in before + after]
            assert subscription.position == last

            # The consumer joined the group on the survivor and got the rest
            # (once the dead replica's hold on the group's segments lapsed).
            all_ids = {event.event_id for submitted in before + after for event in submitted.events}
            await eventually(lambda: consumed >= all_ids, within=30, what="every event consumed")

            async def on_the_survivor() -> bool:
                consumers = (await client.groups.get("audit")).consumers
                return [c.replica_address for c in consumers] == [survivor.address]

            await eventually(on_the_survivor, within=10, what="the consumer on the survivor")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await consumer.close()
        # Streams the client ended itself (cancelled, closed) mark no one down.
        assert survivor.address not in marked
