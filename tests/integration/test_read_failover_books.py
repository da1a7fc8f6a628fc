"""What a routing client's read tells its books (``service.client.read_routing``),
against stand-in members over real sockets: an ``UNAVAILABLE`` that the
member itself sent with a reason of its own (``READS_BEHIND``: it has not
replayed ``min_position`` yet) marks nothing down, and the read is retried
on the same member; one that gRPC gave (a connection lost, no reason) marks
the member down, and the read goes to another."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import grpc
import pytest

from chronicle.v1 import cluster_service_pb2, cluster_service_pb2_grpc, event_service_pb2, event_service_pb2_grpc
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.api.status import rich_status
from service.client import ChronicleClient, RetryPolicy
from service.errors import StoreUnavailable
from tests.support.routes import record_marks

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, max_attempts=10)


class Member(cluster_service_pb2_grpc.ClusterServiceServicer, event_service_pb2_grpc.EventServiceServicer):
    """A stand-in replica whose GetAggregate fails as ``failures`` says (one
    per call: "behind" or "lost"), then answers."""

    def __init__(self, name: str, *failures: str) -> None:
        self.name = name
        self.address = ""
        self.topology = cluster_service_pb2.Topology()
        self.failures = list(failures)
        self.reads = 0

    async def start(self, stack: AsyncExitStack) -> None:
        server = grpc.aio.server()
        cluster_service_pb2_grpc.add_ClusterServiceServicer_to_server(self, server)
        event_service_pb2_grpc.add_EventServiceServicer_to_server(self, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        stack.push_async_callback(server.stop, None)
        self.address = f"127.0.0.1:{port}"

    async def GetAggregate(self, request: Any, context: Any) -> event_service_pb2.GetAggregateResponse:
        self.reads += 1
        failure = self.failures.pop(0) if self.failures else None
        if failure == "behind":
            behind = StoreUnavailable("reads here are behind; retry shortly", reason="READS_BEHIND")
            await context.abort_with_status(rich_status(behind))
        if failure == "lost":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "connection lost (simulated)")
        response = event_service_pb2.GetAggregateResponse(aggregate_id=request.aggregate_id, version=1)
        response.state.Pack(bank.Account(owner=self.name))
        return response

    async def GetTopology(self, request: Any, context: Any) -> cluster_service_pb2.GetTopologyResponse:
        return cluster_service_pb2.GetTopologyResponse(topology=self.topology)

    async def WatchTopology(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield cluster_service_pb2.WatchTopologyResponse(topology=self.topology)
        await asyncio.Event().wait()  # it never changes; the call ends when the server stops


async def two_members(stack: AsyncExitStack, *seed_failures: str) -> tuple[Member, Member]:
    seed, other = Member("seed", *seed_failures), Member("other")
    for member in (seed, other):
        await member.start(stack)
    topology = cluster_service_pb2.Topology(
        epoch=1,
        partition_count=2,
        hash=cluster_service_pb2.PARTITION_HASH_CRC32,
        members=[cluster_service_pb2.Member(member_id=m.name, address=m.address) for m in (seed, other)],
        partition_owners=[seed.name, other.name],
    )
    seed.topology = other.topology = topology
    return seed, other


async def test_a_member_behind_is_asked_again_and_one_whose_connection_is_lost_is_stepped_around(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with AsyncExitStack() as stack:
        seed, other = await two_members(stack, "behind", "behind", "lost")
        client = await stack.enter_async_context(ChronicleClient.connect(seed.address, routing=True, retry=FAST))
        marked = record_marks(client.routes, monkeypatch)
        state = await client.get_aggregate("acc-1", bank.Account, min_position=7)
        # Behind twice: asked again, nothing marked; then lost: marked down,
        # and the read went to the other member.
        assert state.state.owner == "other"
        assert (seed.reads, other.reads, marked) == (3, 1, [seed.address])
        assert client.routes is not None and client.routes.is_down(seed.address)
