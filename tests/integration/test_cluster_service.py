"""ClusterService over a real socket: the topology, its changes as replicas
join and leave, and the hint a replica gives when it executes a command for
a partition it does not own. Two servers in this process share one
PostgreSQL database (real leases, short ones so that changes come quickly)."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import grpc
import pytest

from chronicle.v1 import cluster_service_pb2 as pb
from chronicle.v1 import cluster_service_pb2_grpc as pb_grpc
from chronicle.v1 import command_service_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.cluster.hashing import partition_of
from service.store.memory import MemoryStore
from tests.support.cluster import replica
from tests.support.grpc_client import Client, command, running_server
from tests.support.waiting import eventually


def topology_stub(client: Client) -> pb_grpc.ClusterServiceStub:
    return pb_grpc.ClusterServiceStub(client.channel)


async def topology_of(client: Client) -> pb.Topology:
    response: pb.GetTopologyResponse = await topology_stub(client).GetTopology(pb.GetTopologyRequest(), timeout=10)
    return response.topology


async def test_a_lone_server_owns_every_partition_and_says_where_it_is() -> None:
    async with running_server(MemoryStore(), partitions=16) as (app, client):
        topology = await topology_of(client)
    assert topology.partition_count == 16
    assert topology.hash == pb.PARTITION_HASH_CRC32
    (member,) = topology.members
    assert member.address == app.address
    assert member.member_id == topology.answered_by == app.leases.member_id
    assert list(topology.partition_owners) == [member.member_id] * 16
    assert topology.epoch == 16


def owners(topology: pb.Topology) -> dict[str, int]:
    counted: dict[str, int] = {}
    for owner in topology.partition_owners:
        counted[owner] = counted.get(owner, 0) + 1
    return counted


@pytest.mark.postgres
async def test_two_servers_share_the_partitions_and_both_say_so(postgres_url: str) -> None:
    async with replica(postgres_url) as (first, one), replica(postgres_url) as (second, two):

        async def agreed() -> bool:
            a, b = await topology_of(one), await topology_of(two)
            return a.partition_owners == b.partition_owners and owners(a) == {
                first.leases.member_id: 32,
                second.leases.member_id: 32,
            }

        await eventually(agreed, within=20, what="both servers reporting a 32/32 split")
        topology = await topology_of(two)
        assert {m.address for m in topology.members} == {first.address, second.address}
        assert topology.answered_by == second.leases.member_id


@pytest.mark.postgres
async def test_a_command_for_a_partition_the_server_does_not_own_carries_the_hint(postgres_url: str) -> None:
    async with replica(postgres_url) as (first, one), replica(postgres_url) as (second, two):
        await eventually(
            lambda: len(first.ownership.owned()) == 32 and len(second.ownership.owned()) == 32,
            within=20,
            what="a 32/32 split",
        )
        owned_by_first = next(f"acc-{n}" for n in range(1000) if first.ownership.owns(f"acc-{n}"))
        partition = partition_of(owned_by_first, 64)
        # To the owner: no hint.
        at_owner = one.commands.Submit(
            command_service_pb2.SubmitRequest(command=command(owned_by_first, bank.OpenAccount(owner="o")))
        )
        await at_owner
        assert _hint(await at_owner.trailing_metadata()) is None
        # To the other replica: executed all the same, and the hint says so.
        elsewhere = two.commands.Submit(
            command_service_pb2.SubmitRequest(command=command(owned_by_first, bank.Deposit(amount=5)))
        )
        response = await elsewhere
        assert response.version == 2
        hint = _hint(await elsewhere.trailing_metadata())
        assert hint == (str(partition), str((await topology_of(two)).epoch))
        batch = two.commands.SubmitBatch(
            command_service_pb2.SubmitBatchRequest(commands=[command(owned_by_first, bank.Deposit(amount=1))])
        )
        assert (await batch).version == 3
        assert _hint(await batch.trailing_metadata()) is not None


def _hint(metadata: Any) -> tuple[str, str] | None:
    found = dict(metadata or ())
    if "chronicle-not-owner" not in found:
        return None
    return str(found["chronicle-not-owner"]), str(found["chronicle-topology-epoch"])


@pytest.mark.postgres
async def test_watchers_hear_of_a_replica_joining_and_leaving(postgres_url: str) -> None:
    async with AsyncExitStack() as stack:
        first, one = await stack.enter_async_context(replica(postgres_url))
        watch = topology_stub(one).WatchTopology(pb.WatchTopologyRequest())
        stack.callback(watch.cancel)
        heard: list[pb.Topology] = []

        async def until(check: Any) -> pb.Topology:
            async with asyncio.timeout(20):
                while True:
                    message: pb.WatchTopologyResponse = await watch.read()
                    heard.append(message.topology)
                    if check(message.topology):
                        return message.topology

        alone = await until(lambda t: owners(t) == {first.leases.member_id: 64})
        second, _ = await stack.enter_async_context(replica(postgres_url))
        split = await until(lambda t: owners(t) == {first.leases.member_id: 32, second.leases.member_id: 32})
        assert split.epoch > alone.epoch
        assert [t.epoch for t in heard] == sorted(t.epoch for t in heard)  # never backwards
        await second.stop(grace=1.0, drain=0.0)
        back = await until(lambda t: owners(t) == {first.leases.member_id: 64})
        assert [m.member_id for m in back.members] == [first.leases.member_id]
        assert back.epoch > split.epoch


async def test_a_stopping_server_ends_its_watchers_so_they_watch_another() -> None:
    async with running_server(MemoryStore()) as (app, client):
        watch = topology_stub(client).WatchTopology(pb.WatchTopologyRequest())
        first = await watch.read()
        assert first.topology.answered_by == app.leases.member_id
        stopping = asyncio.ensure_future(app.stop(grace=30.0, drain=0.0))
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await asyncio.wait_for(_read_to_the_end(watch), 10)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        async with asyncio.timeout(10):  # not the 30 s of grace: no call was left open
            await stopping


async def _read_to_the_end(stream: Any) -> None:
    while True:
        await stream.read()
