"""One outage of a member that several of a routing client's calls were in
flight to marks it down once, for a second (``Routes.unreachable``): the
client sends the owner's commands to it again a second later, not up to
30 s later as when every failed call doubled its down time. Stand-in
members over real sockets: ``a`` owns every partition and fails the first
calls it is sent all at once, ``b`` answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import grpc

from chronicle.v1 import cluster_service_pb2, cluster_service_pb2_grpc
from chronicle.v1 import command_service_pb2 as pb
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.client import ChronicleClient, RetryPolicy
from service.client.routing import DOWN_SECONDS

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, max_attempts=10)
IN_FLIGHT = 6


class Member(cluster_service_pb2_grpc.ClusterServiceServicer):
    """A stand-in replica. With ``failing``, its first Submits wait until
    that many have arrived and then all end UNAVAILABLE without a reason (a
    connection lost, as gRPC says it); later ones, and all of a member
    without it, are answered."""

    def __init__(self, name: str, failing: int = 0) -> None:
        self.name = name
        self.address = ""
        self.topology = cluster_service_pb2.Topology()
        self.answered: list[str] = []
        self._failing = failing
        self._arrived = asyncio.Event()
        self._waiting = 0

    async def start(self, stack: AsyncExitStack) -> None:
        server = grpc.aio.server()
        submit = grpc.unary_unary_rpc_method_handler(
            self._submit,
            request_deserializer=pb.SubmitRequest.FromString,
            response_serializer=pb.SubmitResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("chronicle.v1.CommandService", {"Submit": submit}),)
        )
        cluster_service_pb2_grpc.add_ClusterServiceServicer_to_server(self, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        stack.push_async_callback(server.stop, None)
        self.address = f"127.0.0.1:{port}"

    async def _submit(self, request: pb.SubmitRequest, context: Any) -> pb.SubmitResponse:
        if self._failing:
            self._failing -= 1
            self._waiting += 1
            if self._waiting == IN_FLIGHT:
                self._arrived.set()
            await self._arrived.wait()
            await context.abort(grpc.StatusCode.UNAVAILABLE, "connection lost (simulated)")
        self.answered.append(request.command.aggregate_id)
        return pb.SubmitResponse(version=1)

    async def GetTopology(self, request: Any, context: Any) -> cluster_service_pb2.GetTopologyResponse:
        return cluster_service_pb2.GetTopologyResponse(topology=self.topology)

    async def WatchTopology(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield cluster_service_pb2.WatchTopologyResponse(topology=self.topology)
        await asyncio.Event().wait()  # it never changes; the call ends when the server stops


async def test_calls_in_flight_to_a_member_that_fails_them_together_mark_it_down_for_a_second() -> None:
    owner, other = Member("a", failing=IN_FLIGHT), Member("b")
    async with AsyncExitStack() as stack:
        for member in (owner, other):
            await member.start(stack)
        topology = cluster_service_pb2.Topology(
            epoch=1,
            partition_count=4,
            hash=cluster_service_pb2.PARTITION_HASH_CRC32,
            members=[cluster_service_pb2.Member(member_id=m.name, address=m.address) for m in (owner, other)],
            partition_owners=[owner.name] * 4,
        )
        owner.topology = other.topology = topology
        client = await stack.enter_async_context(ChronicleClient.connect(owner.address, routing=True, retry=FAST))
        routes = client.routes
        assert routes is not None and routes.topology == topology
        accounts = [f"acc-{n}" for n in range(IN_FLIGHT)]
        async with asyncio.timeout(20):
            await asyncio.gather(*(client.submit(a, bank.Deposit(amount=1)) for a in accounts))
        assert sorted(other.answered) == accounts  # each sent again, elsewhere
        assert routes.failovers == IN_FLIGHT
        assert routes.is_down(owner.address)
        await asyncio.sleep(DOWN_SECONDS + 0.1)
        assert not routes.is_down(owner.address)  # one down period, not six
        await client.submit("acc-1", bank.Deposit(amount=1))
        assert owner.answered == ["acc-1"]  # the owner has its commands again
