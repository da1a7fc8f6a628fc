"""Limits, each breached over a real socket: a clear RESOURCE_EXHAUSTED and
nothing written."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chronicle.v1 import cluster_service_pb2, cluster_service_pb2_grpc, command_service_pb2, event_service_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.store.memory import MemoryStore
from tests.support.blocking import GatedStore
from tests.support.contents import at_rest
from tests.support.grpc_client import command, connect, details_of, running_server, with_jwt_auth
from tests.support.security import JwtIssuer, bearer
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


async def test_a_page_of_commands_over_the_size_limit_is_resource_exhausted() -> None:
    store = MemoryStore()
    async with running_server(store, max_message_bytes=64 * 1024, max_event_bytes=16 * 1024) as (_, client):
        # Each command fits; the page of them does not.
        page = command_service_pb2.SubmitPage(
            requests=[
                command_service_pb2.SubmitRequest(command=command(f"acc-{i}", bank.OpenAccount(owner="x" * 10_000)))
                for i in range(10)
            ]
        )
        call = client.commands.SubmitStreamPages(iter([page]))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in call:
                pass
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await store.log_head() == 0


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


async def test_a_topology_watch_counts_as_a_subscription_and_leaves_room_for_commands() -> None:
    # Every routing client keeps a WatchTopology stream open for its whole
    # life: counted as an RPC, enough of them left no room for commands.
    async with running_server(MemoryStore(), max_subscriptions=1, max_concurrent_rpcs=1) as (_, client):
        watch = cluster_service_pb2_grpc.ClusterServiceStub(client.channel).WatchTopology(
            cluster_service_pb2.WatchTopologyRequest()
        )
        assert (await watch.read()).HasField("topology")  # open and following
        response = await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        second = client.events.Subscribe(event_service_pb2.SubscribeRequest())
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await second.read()
        watch.cancel()
    assert response.version == 1
    assert details_of(raised.value).reason == "TOO_MANY_SUBSCRIPTIONS"


async def test_a_new_aggregate_over_the_live_aggregate_cap_is_resource_exhausted_while_all_are_busy() -> None:
    store = GatedStore(MemoryStore())
    # An idle timeout of an hour: only the cap's own eviction can make room.
    async with running_server(store, max_workers=2, idle_timeout=3600) as (app, client):
        # Two aggregates live and busy (a busy worker never leaves): the cap is reached.
        busy = [asyncio.ensure_future(client.submit(command(a, bank.OpenAccount(owner="ann")))) for a in ("a-1", "a-2")]
        await eventually(lambda: app.router.live_workers == 2, within=10, what="two live aggregates")
        before = await at_rest(store)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.submit(command("a-3", bank.OpenAccount(owner="cy")))
        changes = (await at_rest(store)).changes_since(before)
        store.gate.set()
        assert [(await call).version for call in busy] == [1, 1]
        # Once they are idle, an idle one makes room for the third aggregate at once.
        assert (await client.submit(command("a-3", bank.OpenAccount(owner="cy")))).version == 1
        assert app.router.live_workers == 2
    details = details_of(raised.value)
    assert (details.code, details.reason, details.retry) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "TOO_MANY_AGGREGATES",
        True,
    )
    assert "are busy" in raised.value.details()
    assert list(changes) == ["refusals"]  # its audit entry, nothing written for a-3
    assert "TOO_MANY_AGGREGATES" in changes["refusals"].added[0]


async def test_idle_aggregates_make_room_under_the_live_aggregate_cap() -> None:
    # The cap bounds the live set, not throughput: idle cached aggregates are
    # evicted for new ones instead of refusing them until the idle timeout.
    store = MemoryStore()
    async with running_server(store, max_workers=3, idle_timeout=3600) as (app, client):
        versions = [(await client.submit(command(f"a-{n}", bank.OpenAccount(owner="ann")))).version for n in range(12)]
        assert app.router.live_workers == 3
        # An evicted aggregate is loaded again on its next command.
        assert (await client.submit(command("a-0", bank.Deposit(amount=5)))).version == 2
    assert versions == [1] * 12
    assert [await store.head(f"a-{n}") for n in range(12)].count(None) == 0


# -- quotas: per principal, and health watches -----------------------------------


@contextlib.asynccontextmanager
async def secured(store: Any, tmp_path: Path, **limits: Any) -> AsyncIterator[tuple[Any, JwtIssuer]]:
    issuer = JwtIssuer()
    async with running_server(
        store,
        settings=replace(with_jwt_auth(tmp_path, issuer), **limits),
    ) as (app, _):
        yield app, issuer


async def test_one_principal_cannot_take_every_rpc_slot(tmp_path: Path) -> None:
    store = GatedStore(MemoryStore())
    async with secured(store, tmp_path, max_rpcs_per_principal=1) as (app, issuer):
        async with connect(app.address, interceptors=bearer(issuer.token("alice"))) as alice:
            holding = asyncio.ensure_future(alice.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id="")))
            await store.entered.wait()  # alice's one call in flight
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await alice.events.GetAggregate(event_service_pb2.GetAggregateRequest(aggregate_id="acc-1"))
            async with connect(app.address, interceptors=bearer(issuer.token("root"))) as root:
                with pytest.raises(grpc.aio.AioRpcError) as other:  # another principal is let in
                    await root.events.GetAggregate(event_service_pb2.GetAggregateRequest(aggregate_id="acc-9"))
            store.gate.set()
            await holding
            state = await alice.events.GetAggregate(event_service_pb2.GetAggregateRequest(aggregate_id="acc-1"))
        assert (app.gate.rpcs_of, app.gate.subscriptions_of) == ({}, {})  # every call counted out
    details = details_of(raised.value)
    assert (details.code, details.reason, details.retry) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "PRINCIPAL_TOO_MANY_REQUESTS",
        True,
    )
    assert details.metadata == {"max_rpcs_per_principal": "1"}
    assert details_of(other.value).reason == "AGGREGATE_NOT_FOUND"
    assert state.version == 1


async def test_one_principal_cannot_take_every_subscription(tmp_path: Path) -> None:
    async with (
        secured(MemoryStore(), tmp_path, max_subscriptions_per_principal=1) as (app, issuer),
        connect(app.address, interceptors=bearer(issuer.token("alice"))) as alice,
    ):
        first = alice.events.Subscribe(event_service_pb2.SubscribeRequest())
        assert (await first.read()).HasField("caught_up")
        second = alice.events.Subscribe(event_service_pb2.SubscribeRequest())
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await second.read()
        # another principal (a teller too) is let in
        async with connect(app.address, interceptors=bearer(issuer.token("CN=batch,O=Chronicle Tests"))) as batch:
            others = batch.events.Subscribe(event_service_pb2.SubscribeRequest())
            assert (await others.read()).HasField("caught_up")
            others.cancel()
        first.cancel()
        await eventually(lambda: "alice" not in app.gate.subscriptions_of, what="alice's subscription counted out")
        again = alice.events.Subscribe(event_service_pb2.SubscribeRequest())
        assert (await again.read()).HasField("caught_up")
        again.cancel()
    details = details_of(raised.value)
    assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "PRINCIPAL_TOO_MANY_SUBSCRIPTIONS")


async def test_health_watches_have_a_limit_of_their_own() -> None:
    async with running_server(MemoryStore(), max_health_watches=2) as (app, client):
        health = health_pb2_grpc.HealthStub(client.channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(2)]
        for watch in watches:
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        third = health.Watch(health_pb2.HealthCheckRequest())
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await third.read()
        checked = await health.Check(health_pb2.HealthCheckRequest())  # Check is not limited
        watches[0].cancel()
        await eventually(lambda: app.health.servicer.watches < 2, what="a watch closed")
        fourth = health.Watch(health_pb2.HealthCheckRequest())
        assert (await fourth.read()).status == health_pb2.HealthCheckResponse.SERVING
        fourth.cancel()
        watches[1].cancel()
    details = details_of(raised.value)
    assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_HEALTH_WATCHES")
    assert checked.status == health_pb2.HealthCheckResponse.SERVING


async def test_pages_stay_within_what_a_default_client_receives_when_the_server_allows_more() -> None:
    # A server whose message limit is 32 MiB; a client with gRPC's default
    # 4 MiB. Six events of 900 kB: as one page of a quarter of the server's
    # limit they would be 5.4 MB, more than the client takes.
    async with running_server(MemoryStore(), max_message_bytes=32 * 1024 * 1024, max_event_bytes=1024 * 1024) as (
        _,
        client,
    ):
        for i in range(6):
            await client.submit(command(f"acc-{i}", bank.OpenAccount(owner="x" * 900_000)))
        call = client.events.Subscribe(event_service_pb2.SubscribeRequest(pages=True))
        received, pages = 0, 0
        async for response in call:
            if response.HasField("page"):
                pages += 1
                received += len(response.page.events)
            if received >= 6:
                break
        call.cancel()
    assert received == 6
    assert pages > 1
