"""A command stream whose server stops answering (service/client/streaming.py):
a server whose process hung while its connection still answers pings (gRPC's
core answers them on threads of its own) keeps the stream's commands
waiting; after the client's attempt timeout without a message the call is
treated as broken (DEADLINE_EXCEEDED, the client's own) and reopened, its
commands sent again with their ids, and a routing client moves the lane to
another member, marked down.

Stand-in servers over real sockets: one that reads a call's commands and
never answers them (its hang), then answers on the next call; two replicas
of one partition, its owner hung."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from chronicle.v1 import (
    cluster_service_pb2,
    cluster_service_pb2_grpc,
    command_service_pb2,
    command_service_pb2_grpc,
)
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.client import ChronicleClient, Command, DeadlineExceeded, RetryPolicy
from service.client.streaming import CommandStream

FAST = RetryPolicy(initial_backoff=0.02, max_backoff=0.2, max_attempts=5)
TIMEOUT = 0.5  # the clients' attempt timeout here


class StandIn(command_service_pb2_grpc.CommandServiceServicer, cluster_service_pb2_grpc.ClusterServiceServicer):
    """A replica that answers no command of its first ``hung_calls`` calls
    (it reads them, as a hung process's connection still takes bytes) and
    every command of later calls (version 1 each)."""

    def __init__(self, hung_calls: int) -> None:
        self.hung_calls = hung_calls
        self.calls = 0
        self.received: list[str] = []
        self.topology = cluster_service_pb2.Topology()

    async def SubmitStreamPages(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        self.calls += 1
        hung = self.calls <= self.hung_calls
        async for page in requests:
            self.received.extend(request.command.command_id for request in page.requests)
            if not hung:
                yield command_service_pb2.SubmitResultPage(
                    results=[
                        command_service_pb2.SubmitStreamResponse(
                            command_id=request.command.command_id, ok=command_service_pb2.SubmitResponse(version=1)
                        )
                        for request in page.requests
                    ]
                )
        if hung:
            await asyncio.Event().wait()  # hung: never ends the call either

    async def GetTopology(self, request: Any, context: Any) -> cluster_service_pb2.GetTopologyResponse:
        return cluster_service_pb2.GetTopologyResponse(topology=self.topology)

    async def WatchTopology(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield cluster_service_pb2.WatchTopologyResponse(topology=self.topology)
        await asyncio.Event().wait()


@contextlib.asynccontextmanager
async def serving(stand_in: StandIn) -> AsyncIterator[str]:
    server = grpc.aio.server()
    command_service_pb2_grpc.add_CommandServiceServicer_to_server(stand_in, server)
    cluster_service_pb2_grpc.add_ClusterServiceServicer_to_server(stand_in, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


def deposits(count: int) -> list[Command]:
    return [Command("acc-1", bank.Deposit(amount=1)) for _ in range(count)]


async def test_a_stream_its_server_stopped_answering_is_opened_again_and_its_commands_sent_again() -> None:
    stand_in = StandIn(hung_calls=1)
    async with (
        serving(stand_in) as address,
        ChronicleClient.connect(address, retry=FAST, attempt_timeout=TIMEOUT) as client,
    ):
        commands = deposits(3)
        async with asyncio.timeout(20):  # without the timeout: for ever
            results = [result async for result in client.submit_stream(commands)]
    assert [r.command_id for r in results] == [c.command_id for c in commands]
    assert all(r.error is None for r in results)
    assert stand_in.calls == 2
    ids = [c.command_id for c in commands]
    assert stand_in.received == ids + ids  # the same commands, the same ids, again


async def test_a_server_that_never_answers_spends_the_attempts_however_long_each_call_was_open() -> None:
    """An unanswered call never counts as one that lived (``renew_after``):
    the stream raises DeadlineExceeded once the policy's attempts are spent."""
    stand_in = StandIn(hung_calls=1_000)
    twice = RetryPolicy(initial_backoff=0.02, max_backoff=0.2, max_attempts=2, renew_after=TIMEOUT / 5)
    async with (
        serving(stand_in) as address,
        ChronicleClient.connect(address, retry=twice, attempt_timeout=TIMEOUT) as client,
    ):
        async with asyncio.timeout(20):  # were each call counted as one that lived: for ever
            with pytest.raises(DeadlineExceeded, match="no answer on the command stream"):
                [result async for result in client.submit_stream(deposits(2))]
    assert stand_in.calls == 2


async def test_without_an_attempt_timeout_the_stream_waits() -> None:
    stand_in = StandIn(hung_calls=1)
    async with (
        serving(stand_in) as address,
        ChronicleClient.connect(address, retry=FAST, attempt_timeout=None) as client,
    ):
        results = client.submit_stream(deposits(1))
        first = asyncio.ensure_future(anext(results))
        await asyncio.sleep(6 * TIMEOUT)
        assert not first.done() and stand_in.calls == 1
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        await results.aclose()


async def test_a_routed_lane_whose_member_stopped_answering_moves_to_another_member_marked_down() -> None:
    hung, healthy = StandIn(hung_calls=1_000), StandIn(hung_calls=0)
    async with serving(hung) as hung_address, serving(healthy) as healthy_address:
        topology = cluster_service_pb2.Topology(
            epoch=1,
            partition_count=1,
            hash=cluster_service_pb2.PARTITION_HASH_CRC32,
            members=[
                cluster_service_pb2.Member(member_id="a", address=hung_address),
                cluster_service_pb2.Member(member_id="b", address=healthy_address),
            ],
            partition_owners=["a"],
        )
        hung.topology = healthy.topology = topology
        async with ChronicleClient.connect(
            healthy_address, routing=True, retry=FAST, attempt_timeout=TIMEOUT
        ) as client:
            assert client.routes is not None
            assert client.routes.owner_of("acc-1") == hung_address
            commands = deposits(3)
            async with asyncio.timeout(20):
                results = [result async for result in client.submit_stream(commands)]
            assert client.routes.is_down(hung_address)
    assert all(r.error is None for r in results)
    ids = [c.command_id for c in commands]
    assert hung.received == ids
    assert healthy.received == ids


def test_an_answer_timeout_is_positive() -> None:
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="answer timeout"):
            CommandStream(
                lambda paged, broken: None,
                no_commands(),
                lambda command: command_service_pb2.SubmitRequest(),
                retry=FAST,
                dry_run=False,
                answer_timeout=bad,
            )


async def no_commands() -> AsyncIterator[Command]:
    return
    yield
