"""One tenant's principals together hold at most
``--max-concurrent-rpcs-per-tenant`` calls in flight and
``--max-subscriptions-per-tenant`` open subscriptions and submit at most
``--max-commands-per-second-per-tenant`` commands (docs/security.md,
"Quotas"), over a real socket: a tenant's many principals cannot take every
place the server has, nor its workers, and lock the other tenants out.
Subscriptions and group consumers share the pool, as they share the
per-principal one; principals without a tenant are not counted. The rate
limits run on a clock the test moves: what is asserted is the buckets'
accounting, never how long anything took."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import command_service_pb2 as cs
from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import subscription_group_service_pb2 as gpb
from chronicle.v1 import subscription_group_service_pb2_grpc as gpb_grpc
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.store.memory import MemoryStore
from tests.support.grpc_client import Client, command, connect, details_of, running_server, with_jwt_auth
from tests.support.security import JwtIssuer, bearer
from tests.support.waiting import eventually

POLICY = """
[roles.tenant-reader]
scope = "tenant"
submit = ["bank.v1.OpenAccount", "bank.v1.Deposit"]
subscribe = ["Account"]
consume = ["*"]

[roles.operator]
read = ["*"]
subscribe = ["*"]
admin = true

[principals."root"]
roles = ["operator"]
"""


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[Application, JwtIssuer]]:
    issuer = JwtIssuer()
    settings = replace(
        with_jwt_auth(tmp_path, issuer, POLICY),
        jwt_tenant_claim="tenant",
        max_subscriptions_per_principal=5,
        max_subscriptions_per_tenant=2,
    )
    async with running_server(MemoryStore(), settings=settings) as (app, _):
        yield app, issuer


def held_by_tenant(app: Application) -> dict[str, int]:
    """The subscriptions the gate counts against each tenant."""
    assert app.gate is not None
    return app.gate.subscriptions_of_tenant


def of(issuer: JwtIssuer, name: str, tenant: str) -> list[grpc.aio.ClientInterceptor]:
    return bearer(issuer.token(name, roles=["tenant-reader"], tenant=tenant))


async def test_a_tenants_principals_together_hold_at_most_the_tenants_subscriptions(
    server: tuple[Application, JwtIssuer],
) -> None:
    app, issuer = server
    async with (
        connect(app.address, interceptors=of(issuer, "acme-1", "acme")) as acme1,
        connect(app.address, interceptors=of(issuer, "acme-2", "acme")) as acme2,
        connect(app.address, interceptors=of(issuer, "acme-3", "acme")) as acme3,
        connect(app.address, interceptors=of(issuer, "globex-1", "globex")) as globex,
        connect(app.address, interceptors=bearer(issuer.token("root"))) as root,
    ):
        held = [acme1.events.Subscribe(ev.SubscribeRequest()), acme2.events.Subscribe(ev.SubscribeRequest())]
        for stream in held:
            assert (await stream.read()).HasField("caught_up")
        # A third principal of acme, under its own quota (5), is refused: acme holds 2.
        third = acme3.events.Subscribe(ev.SubscribeRequest())
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await third.read()
        details = details_of(raised.value)
        assert (details.code, details.reason, details.retry) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "TENANT_TOO_MANY_SUBSCRIPTIONS",
            True,
        )
        assert details.metadata == {"max_subscriptions_per_tenant": "2", "tenant": "acme"}
        # Another tenant, and a principal of no tenant, are let in.
        others = [globex.events.Subscribe(ev.SubscribeRequest()), root.events.Subscribe(ev.SubscribeRequest())]
        for stream in others:
            assert (await stream.read()).HasField("caught_up")
        assert held_by_tenant(app) == {"acme": 2, "globex": 1}
        # Closing one of acme's makes room for the next.
        held.pop().cancel()
        await eventually(lambda: held_by_tenant(app).get("acme") == 1, what="acme's one counted out")
        again = acme3.events.Subscribe(ev.SubscribeRequest())
        assert (await again.read()).HasField("caught_up")
        for stream in [*held, *others, again]:
            stream.cancel()
    await eventually(lambda: held_by_tenant(app) == {}, what="every subscription counted out")


async def test_a_tenants_group_consumers_share_its_subscriptions(server: tuple[Application, JwtIssuer]) -> None:
    app, issuer = server
    async with (
        connect(app.address, interceptors=bearer(issuer.token("root"))) as root,
        connect(app.address, interceptors=of(issuer, "acme-1", "acme")) as acme1,
        connect(app.address, interceptors=of(issuer, "acme-2", "acme")) as acme2,
    ):
        await gpb_grpc.SubscriptionGroupServiceStub(root.channel).CreateGroup(
            gpb.CreateGroupRequest(
                name="acme-billing", filter=gpb.GroupFilter(aggregate_types=["Account"], tenant="acme")
            )
        )
        subscription = acme1.events.Subscribe(ev.SubscribeRequest())
        assert (await subscription.read()).HasField("caught_up")
        consumer = gpb_grpc.SubscriptionGroupServiceStub(acme2.channel).Consume()
        await consumer.write(gpb.ConsumeRequest(start=gpb.ConsumeStart(group="acme-billing", consumer="a")))
        await eventually(lambda: held_by_tenant(app).get("acme") == 2, what="acme's consumer counted in")
        refused = gpb_grpc.SubscriptionGroupServiceStub(acme1.channel).Consume()
        await refused.write(gpb.ConsumeRequest(start=gpb.ConsumeStart(group="acme-billing", consumer="b")))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await refused.read()
        assert details_of(raised.value).reason == "TENANT_TOO_MANY_SUBSCRIPTIONS"
        subscription.cancel()
        consumer.cancel()


async def test_with_no_tenants_limit_a_tenant_is_held_to_its_principals_quotas_alone(tmp_path: Path) -> None:
    issuer = JwtIssuer()
    settings = replace(
        with_jwt_auth(tmp_path, issuer, POLICY),
        jwt_tenant_claim="tenant",
        max_subscriptions_per_tenant=0,
    )
    async with running_server(MemoryStore(), settings=settings) as (app, _), AsyncExitStack() as clients:
        streams = []
        for n in range(3):  # over the fixture's tenant limit of 2
            acme = await clients.enter_async_context(connect(app.address, interceptors=of(issuer, f"acme-{n}", "acme")))
            streams.append(acme.events.Subscribe(ev.SubscribeRequest()))
        for stream in streams:
            assert (await stream.read()).HasField("caught_up")
        assert held_by_tenant(app) == {}  # not counted
        for stream in streams:
            stream.cancel()


async def test_a_tenants_principals_together_submit_at_most_the_tenants_commands_per_second(tmp_path: Path) -> None:
    issuer = JwtIssuer()
    settings = replace(
        with_jwt_auth(tmp_path, issuer, POLICY), jwt_tenant_claim="tenant", max_commands_per_second_per_tenant=10
    )
    async with running_server(MemoryStore(), settings=settings) as (app, _):
        assert app.rate_limits is not None
        now = [1000.0]
        app.rate_limits.clock = lambda: now[0]

        # A batch is of one aggregate: its opening and four deposits.
        opening = cs.SubmitBatchRequest(
            commands=[
                command("acme:acc-10", bank.OpenAccount(owner="ann"), user_id=""),
                *(command("acme:acc-10", bank.Deposit(amount=1), user_id="") for _ in range(4)),
            ]
        )

        async with (
            connect(app.address, interceptors=of(issuer, "acme-1", "acme")) as acme1,
            connect(app.address, interceptors=of(issuer, "acme-2", "acme")) as acme2,
            connect(app.address, interceptors=of(issuer, "globex-1", "globex")) as globex,
        ):
            for n in range(6):
                await acme1.submit(command(f"acme:acc-{n}", bank.OpenAccount(owner="ann"), user_id=""))
            with pytest.raises(grpc.aio.AioRpcError) as raised:  # acme-2 under no limit of its own
                await acme2.commands.SubmitBatch(opening)
            for n in range(10):  # another tenant's bucket is its own
                await globex.submit(command(f"globex:acc-{n}", bank.OpenAccount(owner="gus"), user_id=""))
            now[0] += 0.1  # one more token: the batch of five now passes, whole
            await acme2.commands.SubmitBatch(opening)
        details = details_of(raised.value)
        assert (details.code, details.reason, details.retry) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "TENANT_RATE_LIMITED",
            True,
        )
        assert details.metadata == {"commands_per_second": "10", "burst": "10", "tenant": "acme"}
        head = await app.store.events.head("acme:acc-10")
        assert head is not None and head.version == 5  # written once, whole, when it passed


def calls_of_tenant(app: Application) -> dict[str, int]:
    """The calls in flight (subscriptions apart) the gate counts against each tenant."""
    assert app.gate is not None
    return app.gate.rpcs_of_tenant


async def held_open(client: Client, aggregate_id: str) -> grpc.aio.StreamStreamCall[cs.SubmitRequest, Any]:
    """A command stream, admitted (its first command answered) and left open:
    a call in flight until it is closed."""
    stream = client.commands.SubmitStream()
    await stream.write(cs.SubmitRequest(command=command(aggregate_id, bank.OpenAccount(owner="ann"), user_id="")))
    response = await stream.read()
    assert response is not grpc.aio.EOF
    return stream


async def test_a_tenants_principals_together_hold_at_most_the_tenants_calls_in_flight(tmp_path: Path) -> None:
    issuer = JwtIssuer()
    # Room for three calls: without a tenant's limit, acme's three principals
    # would take every one and globex would be refused TOO_MANY_REQUESTS.
    settings = replace(
        with_jwt_auth(tmp_path, issuer, POLICY),
        jwt_tenant_claim="tenant",
        max_concurrent_rpcs=3,
        max_concurrent_rpcs_per_tenant=2,
    )
    async with (
        running_server(MemoryStore(), settings=settings) as (app, _),
        connect(app.address, interceptors=of(issuer, "acme-1", "acme")) as acme1,
        connect(app.address, interceptors=of(issuer, "acme-2", "acme")) as acme2,
        connect(app.address, interceptors=of(issuer, "acme-3", "acme")) as acme3,
        connect(app.address, interceptors=of(issuer, "globex-1", "globex")) as globex,
        connect(app.address, interceptors=bearer(issuer.token("root"))) as root,
    ):
        held = [await held_open(acme1, "acme:acc-1"), await held_open(acme2, "acme:acc-2")]
        assert calls_of_tenant(app) == {"acme": 2}
        # A third principal of acme, under its own quota (500), is refused: acme has 2 in flight.
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await acme3.submit(command("acme:acc-3", bank.OpenAccount(owner="ann"), user_id=""))
        # The server's third place is another tenant's, and a principal's of no tenant.
        assert (await globex.submit(command("globex:acc-1", bank.OpenAccount(owner="gus"), user_id=""))).version == 1
        read = [
            event async for event in root.events.ReadAggregate(ev.ReadAggregateRequest(aggregate_id="globex:acc-1"))
        ]
        assert [event.version for event in read] == [1]
        audit = await root.admin.QueryAudit(admin.QueryAuditRequest(principal="acme-3"))
        assert [entry.reason for entry in audit.entries] == ["TENANT_TOO_MANY_REQUESTS"]  # audited, as the principal's
        # Closing one of acme's makes room for the next.
        closing = held.pop()
        await closing.done_writing()
        assert await closing.read() is grpc.aio.EOF
        await eventually(lambda: calls_of_tenant(app) == {"acme": 1}, what="acme's stream counted out")
        assert (await acme3.submit(command("acme:acc-3", bank.OpenAccount(owner="ann"), user_id=""))).version == 1
        held[0].cancel()
        await eventually(lambda: calls_of_tenant(app) == {}, what="every call counted out")
    details = details_of(raised.value)
    assert (details.code, details.reason, details.retry) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "TENANT_TOO_MANY_REQUESTS",
        True,
    )
    assert details.metadata == {"max_concurrent_rpcs_per_tenant": "2", "tenant": "acme"}


async def test_a_tenants_subscriptions_are_not_its_calls_in_flight(tmp_path: Path) -> None:
    issuer = JwtIssuer()
    settings = replace(
        with_jwt_auth(tmp_path, issuer, POLICY), jwt_tenant_claim="tenant", max_concurrent_rpcs_per_tenant=1
    )
    async with (
        running_server(MemoryStore(), settings=settings) as (app, _),
        connect(app.address, interceptors=of(issuer, "acme-1", "acme")) as acme1,
        connect(app.address, interceptors=of(issuer, "acme-2", "acme")) as acme2,
    ):
        subscription = acme1.events.Subscribe(ev.SubscribeRequest())
        assert (await subscription.read()).HasField("caught_up")
        # acme's one place for calls is free: the subscription counts apart, as it does server-wide.
        stream = await held_open(acme2, "acme:acc-1")
        assert (calls_of_tenant(app), held_by_tenant(app)) == ({"acme": 1}, {"acme": 1})
        stream.cancel()
        subscription.cancel()


async def test_with_no_tenants_limit_of_calls_a_tenant_is_held_to_its_principals_quotas_alone(tmp_path: Path) -> None:
    issuer = JwtIssuer()
    settings = replace(
        with_jwt_auth(tmp_path, issuer, POLICY), jwt_tenant_claim="tenant", max_concurrent_rpcs_per_tenant=0
    )
    async with running_server(MemoryStore(), settings=settings) as (app, _), AsyncExitStack() as clients:
        streams = []
        for n in range(3):
            acme = await clients.enter_async_context(connect(app.address, interceptors=of(issuer, f"acme-{n}", "acme")))
            streams.append(await held_open(acme, f"acme:acc-{n}"))
        assert calls_of_tenant(app) == {}  # not counted
        for stream in streams:
            stream.cancel()
