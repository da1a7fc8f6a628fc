"""A replica that drains behind an L4 balancer: its subscribers and group
consumers resume on another replica at the start of the drain, not at its
end. Two replicas on one PostgreSQL behind a round-robin TCP balancer (a
Kubernetes Service); a client's connection lands on the first, which is
stopped with a long --shutdown-drain and taken out of the balancer, as a
terminating pod's endpoint is. The draining replica ends the streams
SHUTTING_DOWN; the client leaves that connection for a new one
(``service.client.going_away``), which the balancer places on the other
replica. Before, the client reopened on the same connection (gRPC shares it
among channels), refused until the drain ended."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.client import ChronicleClient, RetryPolicy
from tests.support.balancer import RoundRobinBalancer
from tests.support.cluster import replica
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

FAST = RetryPolicy(initial_backoff=0.05, max_backoff=0.5)
DRAIN = 10.0


async def test_subscriber_and_consumer_move_to_another_replica_at_the_start_of_a_drain(postgres_url: str) -> None:
    async with (
        replica(postgres_url, anonymous_admin=True) as (draining, _),
        replica(postgres_url, anonymous_admin=True) as (staying, _),
        RoundRobinBalancer([draining.port, staying.port]).running() as balancer,
        ChronicleClient.connect(f"127.0.0.1:{balancer.port}", retry=FAST) as client,
    ):
        tag = uuid.uuid4().hex[:8]
        group = f"drain-{tag}"
        await client.groups.create(group, aggregate_types=["Account"])  # the first connection: the draining one
        assert balancer.connections == {draining.port: 1}
        subscribed: list[str] = []
        consumed: list[str] = []

        async def subscribe() -> None:
            async for event in client.subscribe(from_end=True, aggregate_types=["Account"]):
                subscribed.append(event.aggregate_id)

        async def consume() -> None:
            async with client.consume(group, consumer="auditor", reconnect_delay=0.05) as consumer:
                async for delivery in consumer:
                    consumed.append(delivery.event.aggregate_id)
                    await delivery.ack()

        tasks = [asyncio.create_task(subscribe()), asyncio.create_task(consume())]
        try:
            await eventually(lambda: draining.subscriptions.active == 1 and draining.groups.active == 1)
            await client.submit(f"before-{tag}", bank.OpenAccount(owner="a"))
            await eventually(lambda: f"before-{tag}" in subscribed and f"before-{tag}" in consumed)

            began = time.monotonic()
            stopping = asyncio.create_task(draining.stop(grace=1.0, drain=DRAIN))
            balancer.take_out(draining.port)
            await eventually(lambda: staying.subscriptions.active == 1 and staying.groups.active == 1, within=DRAIN)
            moved = time.monotonic() - began
            assert moved < DRAIN / 2, f"the streams moved after {moved:.1f}s of a {DRAIN}s drain"
            assert not stopping.done()  # still draining: they did not wait for it
            await client.submit(f"after-{tag}", bank.OpenAccount(owner="b"))
            await eventually(lambda: f"after-{tag}" in subscribed and f"after-{tag}" in consumed, within=DRAIN / 2)
            assert balancer.connections == {draining.port: 1, staying.port: 1}
            await stopping
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
