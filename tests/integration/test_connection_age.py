"""Connections that grow old: with --max-connection-age-seconds the server
closes each client connection that long after it opened (GOAWAY), so a
client behind a connection-level load balancer opens a new one, perhaps to
a replica added since. Clients notice nothing: a plain channel's next call
goes over a new connection, and the Python client's subscription, ended
UNAVAILABLE after the grace, resumes after its last event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import grpc

from chronicle.v1 import command_service_pb2, command_service_pb2_grpc
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.client import ChronicleClient, Command, RetryPolicy
from service.store.memory import MemoryStore
from tests.support.grpc_client import TEST_SETTINGS, Client, command, running_server
from tests.support.silent_proxy import SilentProxy
from tests.support.waiting import eventually

AGED = replace(TEST_SETTINGS, max_connection_age_seconds=0.5, max_connection_age_grace_seconds=0.3)
FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)


@asynccontextmanager
async def aged() -> AsyncIterator[tuple[Client, SilentProxy, grpc.aio.Channel]]:
    """A server whose connections age in half a second, with an account
    opened; a client straight to it, and a channel through a proxy that
    counts the connections made."""
    async with (
        running_server(MemoryStore(), settings=AGED) as (app, client),
        SilentProxy(app.port).running() as proxy,
        grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as channel,
    ):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        yield client, proxy, channel


async def test_a_connection_is_closed_at_its_age_and_the_next_call_opens_another() -> None:
    async with aged() as (_, proxy, channel):
        stub = command_service_pb2_grpc.CommandServiceStub(channel)
        versions: list[int] = []

        async def deposit_through_the_proxy() -> bool:
            request = command_service_pb2.SubmitRequest(command=command("acc-1", bank.Deposit(amount=1)))
            versions.append((await stub.Submit(request)).version)  # every call succeeds, old connection or new
            return proxy.connections >= 3

        await eventually(deposit_through_the_proxy, what="two connections aged out")
        assert versions == list(range(2, len(versions) + 2))  # each deposit once, none lost


async def test_a_subscription_outlives_its_connections_without_missing_an_event() -> None:
    async with aged() as (client, proxy, channel), ChronicleClient(channel, retry=FAST) as subscriber:
        received: list[int] = []

        async def follow() -> None:
            async for event in subscriber.subscribe():
                received.append(event.position)

        following = asyncio.ensure_future(follow())
        try:
            written = 1

            async def deposited() -> bool:
                nonlocal written
                await client.submit(command("acc-1", bank.Deposit(amount=1)))
                written += 1
                return proxy.connections >= 3  # the subscription's connection aged out twice

            await eventually(deposited, what="two connections aged out")
            await eventually(lambda: len(received) >= written, what="every event received")
            assert received == list(range(1, written + 1))  # in order, none twice, none missed
        finally:
            following.cancel()


async def test_a_command_stream_outlives_its_connections_and_runs_each_command_once() -> None:
    async with aged() as (_, proxy, channel), ChronicleClient(channel, retry=FAST) as submitter:

        async def deposits() -> AsyncIterator[Command]:
            for _ in range(2_000):  # a bound for a broken build; the connections end it
                if proxy.connections >= 3:  # the stream's connection aged out twice
                    return
                yield Command("acc-1", bank.Deposit(amount=1))
                await asyncio.sleep(0.02)

        versions = [(result.result()).version async for result in submitter.submit_stream(deposits())]
        assert proxy.connections >= 3
        assert versions == list(range(2, len(versions) + 2))  # in order, each once, none lost
