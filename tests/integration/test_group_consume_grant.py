"""Who may consume a subscription group is a grant of its own (``consume``,
group names and ``*`` globs), over a real server on SQLite and PostgreSQL
with the Python client: a tenant that may subscribe to a group's types but
is granted no consume of its name can neither join it (and so ack, nack or
skip its events away from the group's own consumers) nor list its parked
events, nor see it in ListGroups; the refusal is CONSUME_DENIED alike for a
group that exists and one that does not. A role without a ``consume`` key
consumes no group (the start-up log says so); an administrator lists every
group (docs/security.md, "The policy")."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import start
from service.client import ChronicleClient
from service.client.errors import RemoteError
from service.store.base import StoreAdapter
from tests.support.grpc_client import with_jwt_auth
from tests.support.security import JwtIssuer

POLICY = """
[roles.operator]
submit = ["*"]
read = ["*"]
subscribe = ["*"]
admin = true

[roles.acme]
subscribe = ["Account"]
consume = ["acme-*"]

[roles.globex]
subscribe = ["Account"]
consume = ["globex-billing"]

[roles.legacy]      # written before the consume grant: subscribes, names no group
subscribe = ["Account"]

[principals.root]
roles = ["operator"]
[principals.acme-alice]
roles = ["acme"]
[principals.globex-bob]
roles = ["globex"]
[principals.old-worker]
roles = ["legacy"]
"""

OPENED = 3


@dataclass
class Tenants:
    address: str
    issuer: JwtIssuer

    def client(self, principal: str) -> ChronicleClient:
        return ChronicleClient.connect(self.address, token=self.issuer.token(principal))


pytestmark = pytest.mark.parametrize("store", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
async def tenants(store: StoreAdapter, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Tenants]:
    issuer = JwtIssuer()
    with caplog.at_level(logging.WARNING, logger="chronicle"):
        app = await start(with_jwt_auth(tmp_path, issuer, POLICY), store=store)
    try:
        served = Tenants(app.address, issuer)
        async with served.client("root") as root:
            for name in ("acme-billing", "globex-billing"):
                await root.groups.create(name, aggregate_types=["Account"])
            for n in range(OPENED):
                await root.submit(f"acme:acc-{n}", bank.OpenAccount(owner=f"owner {n}"))
        yield served
    finally:
        await app.stop(grace=1.0)


async def refused(call: object) -> RemoteError:
    with pytest.raises(RemoteError) as raised:
        await call  # type: ignore[misc]
    return raised.value


async def consume_refusal(client: ChronicleClient, group: str) -> RemoteError:
    async def first() -> None:
        async with client.consume(group, consumer="intruder", reconnect_delay=0.05) as deliveries:
            async for delivery in deliveries:
                await delivery.ack()

    return await refused(asyncio.wait_for(first(), 10))


async def test_a_tenant_without_the_consume_grant_cannot_join_another_tenants_group_nor_ack_its_events(
    tenants: Tenants,
) -> None:
    async with tenants.client("globex-bob") as bob:
        listed = [group.name for group in await bob.groups.list()]
        into_acme = await consume_refusal(bob, "acme-billing")
        into_nothing = await consume_refusal(bob, "acme-does-not-exist")
        parked = await refused(bob.groups.parked("acme-billing"))
    assert listed == ["globex-billing"]  # acme's group, its consumers and their addresses are not bob's to see
    for refusal in (into_acme, into_nothing, parked):
        assert (refusal.code.name, refusal.reason) == ("PERMISSION_DENIED", "CONSUME_DENIED"), refusal.message
    # The same refusal whether the group exists or not, but for its name.
    assert into_acme.message.replace("acme-billing", "G") == into_nothing.message.replace("acme-does-not-exist", "G")
    # acme's own consumer receives every event: none was settled by the intruder.
    async with tenants.client("acme-alice") as alice:
        received: list[str] = []
        async with alice.consume("acme-billing", consumer="billing") as deliveries:
            async for delivery in deliveries:
                received.append(delivery.event.aggregate_id)
                await delivery.ack()
                if len(received) == OPENED:
                    break
        assert [group.name for group in await alice.groups.list()] == ["acme-billing"]
    assert sorted(received) == [f"acme:acc-{n}" for n in range(OPENED)]


async def test_a_role_without_a_consume_key_consumes_no_group_and_start_up_says_so(
    tenants: Tenants, caplog: pytest.LogCaptureFixture
) -> None:
    async with tenants.client("old-worker") as old:
        assert await old.groups.list() == []
        refusal = await consume_refusal(old, "acme-billing")
    assert refusal.reason == "CONSUME_DENIED"
    warned = [r.getMessage() for r in caplog.get_records("setup") if "consume" in r.getMessage()]
    assert len(warned) == 1 and "'legacy'" in warned[0]  # acme's and globex's roles name their groups
    assert '["*"] for every group' in warned[0]


async def test_an_administrator_lists_every_group(tenants: Tenants) -> None:
    async with tenants.client("root") as root:
        assert sorted(group.name for group in await root.groups.list()) == ["acme-billing", "globex-billing"]
