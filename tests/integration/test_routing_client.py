"""The Python client with ``routing=True`` against three replicas on one
PostgreSQL: each command reaches the owner of its aggregate's partition
(so each aggregate lives in exactly one replica's workers), a replica that
stops answering is stepped around, and the client follows the topology."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.client import ChronicleClient, Command, RetryPolicy
from service.client.routing import Routes
from service.store.memory import MemoryStore
from tests.support.cluster import replica, settled
from tests.support.grpc_client import running_server
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

FAST = RetryPolicy(initial_backoff=0.02, max_backoff=0.2, max_attempts=20)
ACCOUNTS = [f"acc-{n}" for n in range(60)]


@pytest.fixture
async def three(postgres_url: str) -> AsyncIterator[list[Application]]:
    async with AsyncExitStack() as stack:
        apps = [(await stack.enter_async_context(replica(postgres_url)))[0] for _ in range(3)]
        await settled(apps)
        yield apps


def owner_of(apps: list[Application], aggregate_id: str) -> Application:
    (owner,) = [app for app in apps if app.ownership.owns(aggregate_id)]
    return owner


async def routed_client(apps: list[Application], seed: int = 0) -> ChronicleClient:
    client = ChronicleClient.connect(apps[seed].address, routing=True, retry=FAST)
    await client.__aenter__()
    routes = client.routes
    assert routes is not None

    # The client knows the settled topology: the owners it sees are the
    # replicas' own holdings (a replica's view may be a heartbeat behind).
    def as_held(topology: Any) -> bool:
        return all(
            topology.partition_owners[partition] == app.leases.member_id
            for app in apps
            for partition in app.ownership.owned()
        )

    await asyncio.wait_for(routes.wait_for_topology(as_held), timeout=10)
    return client


async def test_each_command_reaches_the_owner_of_its_aggregate(three: list[Application]) -> None:
    client = await routed_client(three)
    try:
        for account in ACCOUNTS:
            await client.submit(account, bank.OpenAccount(owner="o"))
            await client.submit(account, bank.Deposit(amount=1))
    finally:
        await client.close()
    # Each aggregate was worked by one replica, its owner, and no other.
    assert [app.router.live_workers for app in three] == [
        sum(1 for account in ACCOUNTS if app.ownership.owns(account)) for app in three
    ]
    assert sum(app.router.live_workers for app in three) == len(ACCOUNTS)


async def test_a_routed_stream_keeps_the_order_of_the_commands(three: list[Application]) -> None:
    client = await routed_client(three, seed=1)
    try:
        commands = [Command(account, bank.OpenAccount(owner="o")) for account in ACCOUNTS[:30]]
        commands += [Command(account, bank.Deposit(amount=n + 1)) for n in range(4) for account in ACCOUNTS[:30]]
        results = [result async for result in client.submit_stream(commands)]
    finally:
        await client.close()
    assert [r.command.command_id for r in results] == [c.command_id for c in commands]
    versions: dict[str, list[int]] = {}
    for result in results:
        versions.setdefault(result.command.aggregate_id, []).append(result.result().version)
    assert all(v == [1, 2, 3, 4, 5] for v in versions.values())
    assert sum(app.router.live_workers for app in three) == 30


async def test_a_replica_that_stops_answering_is_stepped_around_then_replaced(three: list[Application]) -> None:
    client = await routed_client(three)
    routes = client.routes
    assert routes is not None
    victim = three[2]
    try:
        account = next(a for a in ACCOUNTS if victim.ownership.owns(a))
        await client.submit(account, bank.OpenAccount(owner="o"))
        # The victim dies: its port closes, its leases are neither renewed
        # nor given up.
        await victim.leases.stop(leave=False)
        await victim.server.stop(0)
        # The command goes to the owner, finds no one, and is sent again to
        # another member (same command id), which executes it.
        deposited = await client.submit(account, bank.Deposit(amount=7))
        assert deposited.version == 2
        assert routes.is_down(victim.address)  # it was tried, and failed
        # Once the lease runs out the survivors take the partition over, and
        # the client hears of it.
        survivors = {app.leases.member_id for app in three[:2]}
        await asyncio.wait_for(
            routes.wait_for_topology(lambda t: set(t.partition_owners) == survivors),
            timeout=20,
        )
        assert routes.owner_of(account) in {app.address for app in three[:2]}
    finally:
        await client.close()


async def test_a_hint_with_a_newer_epoch_makes_the_client_fetch_the_topology(three: list[Application]) -> None:
    client = await routed_client(three)
    routes = client.routes
    assert routes is not None
    try:
        # Counted in fetches: the watch may still be adopting what the
        # client fetched first (``changes`` counts both).
        assert routes.topology is not None
        routes.hinted((("chronicle-not-owner", "3"), ("chronicle-topology-epoch", str(routes.topology.epoch))))
        routes.hinted((("chronicle-topology-epoch", "99999"),))  # no not-owner: no hint at all
        assert routes.refreshes == 0  # the epoch it knows: no fetch (an older one: test_routing_epochs.py)
        known = routes.changes
        routes.hinted((("chronicle-not-owner", "3"), ("chronicle-topology-epoch", "99999")))
        assert routes.refreshes == 1
        await eventually(lambda: routes.changes > known, within=10, what="the topology fetched again")
    finally:
        await client.close()


async def test_a_routing_client_of_a_lone_server_sends_everything_to_it() -> None:
    async with running_server(MemoryStore()) as (app, _):
        client = ChronicleClient.connect(app.address, routing=True)
        async with client:
            routes = client.routes
            assert isinstance(routes, Routes)
            assert routes.owner_of("acc-1") == app.address
            assert (await client.submit("acc-1", bank.OpenAccount(owner="ann"))).version == 1
            assert (await client.submit_batch([Command("acc-1", bank.Deposit(amount=3))])).version == 2
