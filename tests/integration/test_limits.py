"""Limits, each breached over a real socket: a clear RESOURCE_EXHAUSTED and
nothing written."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from chronicle.v1 import event_service_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.store.memory import MemoryStore
from tests.support.blocking import GatedStore
from tests.support.contents import at_rest
from tests.support.grpc_client import command, details_of, running_server
from tests.support.waiting import eventually


async def test_one_rpc_over_the_concurrency_limit_is_resource_exhausted() -> None:
    store = GatedStore(MemoryStore())
    async with running_server(store, max_concurrent_rpcs=1) as (_, client):
        holding = asyncio.ensure_future(client.submit(command("acc-1", bank.OpenAccount(owner="ann"))))
        await store.entered.wait()  # the first call holds the only slot
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.submit(command("acc-2", bank.OpenAccount(owner="bob")))
        store.gate.set()
        await holding
        assert await store.inner.head("acc-2") is None
    details = details_of(raised.value)
    assert (details.code, details.reason, details.retry) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "TOO_MANY_REQUESTS",
        True,
    )


async def test_a_message_over_the_size_limit_is_resource_exhausted() -> None:
    store = MemoryStore()
    async with running_server(store, max_message_bytes=64 * 1024, max_event_bytes=16 * 1024) as (_, client):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.submit(command("acc-1", bank.OpenAccount(owner="x" * 100_000)))
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await store.head("acc-1") is None


async def test_a_full_aggregate_queue_is_resource_exhausted() -> None:
    store = GatedStore(MemoryStore())
    async with running_server(store, queue_depth=1) as (app, client):
        running = asyncio.ensure_future(client.submit(command("acc-1", bank.OpenAccount(owner="ann"))))
        await store.entered.wait()  # the worker is busy with the first command
        queued = asyncio.ensure_future(client.submit(command("acc-1", bank.Deposit(amount=1))))
        # The router has no event for "queued"; wait for the condition, not a time.
        await eventually(lambda: app.router.queued >= 1, within=10, what="the second command queued")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.submit(command("acc-1", bank.Deposit(amount=2)))
        store.gate.set()
        await running
        assert (await queued).version == 2
    details = details_of(raised.value)
    assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "AGGREGATE_QUEUE_FULL")


async def test_subscriptions_have_a_limit_of_their_own_and_leave_room_for_commands() -> None:
    async with running_server(MemoryStore(), max_subscriptions=1, max_concurrent_rpcs=1) as (_, client):
        first = client.events.Subscribe(event_service_pb2.SubscribeRequest())
        assert (await first.read()).HasField("caught_up")  # open and following
        second = client.events.Subscribe(event_service_pb2.SubscribeRequest())
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await second.read()
        response = await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        first.cancel()
    details = details_of(raised.value)
    assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_SUBSCRIPTIONS")
    assert response.version == 1


async def test_one_aggregate_over_the_live_aggregate_cap_is_resource_exhausted_until_one_leaves() -> None:
    store = GatedStore(MemoryStore())
    async with running_server(store, max_workers=2, idle_timeout=0.05) as (app, client):
        # Two aggregates live and busy (a busy worker never leaves): the cap is reached.
        busy = [asyncio.ensure_future(client.submit(command(a, bank.OpenAccount(owner="ann")))) for a in ("a-1", "a-2")]
        await eventually(lambda: app.router.live_workers == 2, within=10, what="two live aggregates")
        before = await at_rest(store)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.submit(command("a-3", bank.OpenAccount(owner="cy")))
        changes = (await at_rest(store)).changes_since(before)
        store.gate.set()
        assert [(await call).version for call in busy] == [1, 1]
        # Once they are idle they leave, and the third aggregate gets a worker.
        third = command("a-3", bank.OpenAccount(owner="cy"))
        await eventually(lambda: app.router.live_workers == 0, within=10, what="idle aggregates leaving")
        assert (await client.submit(third)).version == 1
    details = details_of(raised.value)
    assert (details.code, details.reason, details.retry) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "TOO_MANY_AGGREGATES",
        True,
    )
    assert list(changes) == ["refusals"]  # its audit entry, nothing written for a-3
    assert "TOO_MANY_AGGREGATES" in changes["refusals"].added[0]
