"""One tenant's principals together hold at most
``--max-subscriptions-per-tenant`` open subscriptions (docs/security.md,
"Quotas"), over a real socket: a tenant's many principals cannot take every
place the server has and lock the other tenants out. Subscriptions and
group consumers share the pool, as they share the per-principal one;
principals without a tenant are not counted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import subscription_group_service_pb2 as gpb
from chronicle.v1 import subscription_group_service_pb2_grpc as gpb_grpc
from service.app import Application
from service.store.memory import MemoryStore
from tests.support.grpc_client import connect, details_of, running_server, with_jwt_auth
from tests.support.security import JwtIssuer, bearer
from tests.support.waiting import eventually

POLICY = """
[roles.tenant-reader]
scope = "tenant"
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
