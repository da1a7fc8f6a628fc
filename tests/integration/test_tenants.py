"""Tenant isolation, as docs/security.md ("Tenants") promises it, over a real
socket on SQLite and PostgreSQL: two tenants, acme (its principal's tenant
from its API-key entry) and globex (from a JWT claim), holding the same
tenant-scoped role. Each action is allowed in its own tenant and refused in
the other's with the documented reason: submit and batches, reads (alike
for another tenant's id and one that does not exist), subscriptions (only
the tenant's events, across a resume) and subscription groups."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from chronicle.v1 import command_pb2
from chronicle.v1 import command_service_pb2 as cs
from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import projection_service_pb2 as proj
from chronicle.v1 import reaction_service_pb2 as rpb
from chronicle.v1 import subscription_group_service_pb2 as gpb
from chronicle.v1 import subscription_group_service_pb2_grpc as gpb_grpc
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.client import ChronicleClient
from service.client.errors import RemoteError
from service.plugins import Documents, Plugin, ProjectedEvent, Send, TenantGuard
from service.plugins.middleware import CommandCall, Middleware
from service.plugins.registry import Registry
from tests.support.at_rest import Site, site_for
from tests.support.console import console, log_in, server_sent, session_cookie
from tests.support.grpc_client import Client, command, connect, details_of, running_server, with_jwt_auth
from tests.support.http import request
from tests.support.security import JwtIssuer, bearer, write
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

POLICY = """
[roles.tenant-banker]
scope = "tenant"
submit = ["bank.v1.OpenAccount", "bank.v1.Deposit", "bank.v1.TransferMoney"]
read = ["Account", "Transfer"]
subscribe = ["Account"]
consume = ["*"]  # its own tenant's groups only: the role is tenant-scoped

[roles.tenant-cashier]
scope = "tenant"
submit = ["bank.v1.Deposit"]

[roles.operator]
submit = ["*"]
read = ["*"]
subscribe = ["*"]
admin = true

[principals."root"]
roles = ["operator"]
"""

ACME_KEY = "chr_acme-test-key-0123456789abcdef0123456789abcd"


@pytest.fixture(params=["sqlite", "postgres"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    return site_for(request, tmp_path)


@dataclass
class Tenants:
    app: Application
    issuer: JwtIssuer

    def acme(self) -> AbstractAsyncContextManager[Client]:  # its tenant from its API key's entry
        return connect(self.app.address, interceptors=bearer(ACME_KEY))

    def globex_token(self) -> str:  # its tenant from its token's claim
        return self.issuer.token("globex-app", roles=["tenant-banker"], tenant="globex")

    def globex(self) -> AbstractAsyncContextManager[Client]:
        return connect(self.app.address, interceptors=bearer(self.globex_token()))

    def root(self) -> AbstractAsyncContextManager[Client]:
        return connect(self.app.address, interceptors=bearer(self.issuer.token("root")))


@asynccontextmanager
async def tenants(
    site: Site, tmp_path: Path, registry: Registry | None = None, **overrides: object
) -> AsyncIterator[Tenants]:
    import hashlib

    issuer = JwtIssuer()
    digest = hashlib.sha256(ACME_KEY.encode()).hexdigest()
    keys = write(
        tmp_path / "keys.toml",
        f'[[keys]]\nprincipal = "acme-app"\nsha256 = "{digest}"\nroles = ["tenant-banker"]\ntenant = "acme"\n',
    )
    settings = replace(
        with_jwt_auth(tmp_path, issuer, POLICY),
        api_keys_file=keys,
        jwt_tenant_claim="tenant",
        console_listen="127.0.0.1:0",
        **overrides,  # type: ignore[arg-type]
    )
    async with running_server(site.store, settings=settings, registry=registry) as (app, _):
        yield Tenants(app, issuer)


def mine(aggregate_id: str, message: Message) -> command_pb2.Command:
    # user_id empty: the principal's own (no impersonation grant here).
    return command(aggregate_id, message, user_id="")


async def refusal(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    details = details_of(raised.value)
    return details.code, details.reason


DENIED = grpc.StatusCode.PERMISSION_DENIED


async def test_commands_and_reads_stay_in_their_tenant(site: Site, tmp_path: Path) -> None:
    async with tenants(site, tmp_path) as t, t.acme() as acme, t.globex() as globex:
        await acme.submit(mine("acme:acc-1", bank.OpenAccount(owner="ann")))
        await globex.submit(mine("globex:acc-1", bank.OpenAccount(owner="gus")))

        # globex may not write to acme's account, nor to an id of no tenant.
        for target in ("acme:acc-1", "acc-9", "globexx:acc-1"):
            assert await refusal(globex.submit(mine(target, bank.Deposit(amount=5)))) == (DENIED, "SUBMIT_DENIED")
        # A batch (of one aggregate) of the other tenant's is refused whole.
        batch = cs.SubmitBatchRequest(
            commands=[mine("acme:acc-1", bank.Deposit(amount=1)), mine("acme:acc-1", bank.Deposit(amount=2))]
        )
        assert await refusal(globex.commands.SubmitBatch(batch)) == (DENIED, "SUBMIT_DENIED")

        # Reads: its own, yes; the other's and one that does not exist, the
        # same READ_DENIED (no existence oracle across tenants).
        own = await acme.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="acme:acc-1"))
        assert own.version == 1
        for target in ("acme:acc-1", "acme:nope", "nope"):
            assert await refusal(globex.events.GetAggregate(ev.GetAggregateRequest(aggregate_id=target))) == (
                DENIED,
                "READ_DENIED",
            )
            read = globex.events.ReadAggregate(ev.ReadAggregateRequest(aggregate_id=target))
            assert await refusal(_drain(read)) == (DENIED, "READ_DENIED")
        # Within its own tenant the rule is the one for types: an id that
        # does not exist is told apart only to a grant of every type.
        missing = await refusal(acme.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="acme:nope")))
        assert missing == (DENIED, "READ_DENIED")

        # Nothing of globex's attempts was written to acme's account.
        async with t.root() as root:
            account = await root.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="acme:acc-1"))
            assert account.version == 1


async def _drain(call: object) -> None:
    async for _ in call:  # type: ignore[attr-defined]
        pass


async def test_the_python_client_reads_its_tenant_and_is_refused_the_other(site: Site, tmp_path: Path) -> None:
    async with tenants(site, tmp_path) as t:
        token = t.globex_token()
        async with ChronicleClient.connect(t.app.address, token=lambda: token) as globex:
            await globex.submit("globex:acc-2", bank.OpenAccount(owner="gus"))
            state = await globex.get_aggregate("globex:acc-2", bank.Account)
            assert state.state.owner == "gus"
            async with t.acme() as acme:
                await acme.submit(mine("acme:acc-2", bank.OpenAccount(owner="ann")))
            with pytest.raises(RemoteError) as raised:
                await globex.get_aggregate("acme:acc-2", bank.Account)
            assert raised.value.reason == "READ_DENIED"
            with pytest.raises(RemoteError) as raised:
                await globex.submit("acme:acc-2", bank.Deposit(amount=1))
            assert raised.value.reason == "SUBMIT_DENIED"
        # An administrator makes a tenant's group with the Python client.
        root_token = t.issuer.token("root")
        async with ChronicleClient.connect(t.app.address, token=lambda: root_token) as root:
            made = await root.groups.create("globex-audit", aggregate_types=["Account"], tenant="globex")
            assert made.filter.tenant == "globex"
        async with ChronicleClient.connect(t.app.address, token=lambda: token) as globex:
            assert [g.name for g in await globex.groups.list()] == ["globex-audit"]


async def _subscribed(client: Client, after: int, until: int) -> tuple[list[str], int]:
    """The aggregate ids of the events a subscription after ``after`` hands
    over until the stream has passed position ``until``, and the last
    position the stream said it had passed (an event's or a checkpoint's)."""
    seen: list[str] = []
    passed = after
    stream = client.events.Subscribe(ev.SubscribeRequest(after_position=after))
    async with asyncio.timeout(20):
        async for response in stream:
            kind = response.WhichOneof("kind")
            if kind == "event":
                seen.append(response.event.aggregate_id)
                passed = response.event.position
            elif kind == "checkpoint":
                passed = response.checkpoint.position
            elif kind == "caught_up":
                passed = max(passed, response.caught_up.position)
            if passed >= until:
                break
    stream.cancel()
    return seen, passed


async def test_a_subscription_hands_over_only_its_tenants_events_across_a_resume(site: Site, tmp_path: Path) -> None:
    async with tenants(site, tmp_path) as t, t.acme() as acme, t.globex() as globex:
        for n in range(3):
            await acme.submit(mine(f"acme:acc-{n}", bank.OpenAccount(owner="ann")))
            await globex.submit(mine(f"globex:acc-{n}", bank.OpenAccount(owner="gus")))
        last = await globex.submit(mine("globex:acc-0", bank.Deposit(amount=3)))
        head = last.events[-1].position

        first, passed = await _subscribed(acme, 0, head)
        assert first == ["acme:acc-0", "acme:acc-1", "acme:acc-2"]
        assert passed >= head  # the stream passed over globex's events, so a resume misses none of acme's

        after = await acme.submit(mine("acme:acc-1", bank.Deposit(amount=7)))
        await globex.submit(mine("globex:acc-1", bank.Deposit(amount=7)))
        resumed, _ = await _subscribed(acme, passed, after.events[-1].position)
        assert resumed == ["acme:acc-1"]

        # A filter naming the other tenant's aggregate is refused.
        foreign = acme.events.Subscribe(ev.SubscribeRequest(aggregate_id="globex:acc-0"))
        assert await refusal(_drain(foreign)) == (DENIED, "SUBSCRIBE_DENIED")


async def test_a_tenants_group_delivers_its_events_to_it_alone(site: Site, tmp_path: Path) -> None:
    async with tenants(site, tmp_path) as t, t.acme() as acme, t.globex() as globex, t.root() as root:
        await acme.submit(mine("acme:acc-1", bank.OpenAccount(owner="ann")))
        await globex.submit(mine("globex:acc-1", bank.OpenAccount(owner="gus")))
        await acme.submit(mine("acme:acc-2", bank.OpenAccount(owner="amy")))
        admin = gpb_grpc.SubscriptionGroupServiceStub(root.channel)
        bad = gpb.CreateGroupRequest(name="bad", filter=gpb.GroupFilter(aggregate_types=["Account"], tenant="a:b"))
        assert await refusal(admin.CreateGroup(bad)) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_GROUP_SETTING")
        created = await admin.CreateGroup(
            gpb.CreateGroupRequest(
                name="acme-billing", filter=gpb.GroupFilter(aggregate_types=["Account"], tenant="acme")
            )
        )
        assert created.group.filter.tenant == "acme"
        await admin.CreateGroup(
            gpb.CreateGroupRequest(name="everyone", filter=gpb.GroupFilter(aggregate_types=["Account"]))
        )

        acme_groups = gpb_grpc.SubscriptionGroupServiceStub(acme.channel)
        globex_groups = gpb_grpc.SubscriptionGroupServiceStub(globex.channel)
        assert [g.name for g in (await acme_groups.ListGroups(gpb.ListGroupsRequest())).groups] == ["acme-billing"]
        assert [g.name for g in (await globex_groups.ListGroups(gpb.ListGroupsRequest())).groups] == []

        # globex may not consume acme's group, nor one of every tenant:
        # refused as one that does not exist. (Streams the server ends take
        # the token as call metadata, not through an interceptor.)
        async with connect(t.app.address) as plain:
            groups = gpb_grpc.SubscriptionGroupServiceStub(plain.channel)
            for group in ("acme-billing", "everyone", "no-such-group"):
                stream = groups.Consume(metadata=[("authorization", f"Bearer {t.globex_token()}")])
                await stream.write(gpb.ConsumeRequest(start=gpb.ConsumeStart(group=group, consumer="g")))
                assert await refusal(stream.read()) == (DENIED, "SUBSCRIBE_DENIED")
                stream.cancel()

        stream = acme_groups.Consume()
        await stream.write(gpb.ConsumeRequest(start=gpb.ConsumeStart(group="acme-billing", consumer="a")))
        delivered: list[str] = []
        async with asyncio.timeout(20):
            while len(delivered) < 2:
                response = await stream.read()
                if response.WhichOneof("kind") == "deliveries":
                    for delivery in response.deliveries.deliveries:
                        delivered.append(delivery.event.aggregate_id)
                        ack = gpb.Ack(event_ids=[delivery.event.event_id])
                        await stream.write(gpb.ConsumeRequest(ack=ack))
        assert sorted(delivered) == ["acme:acc-1", "acme:acc-2"]

        # Its checkpoint passes globex's event too: nothing is left behind.
        async def caught_up() -> bool:
            info = (await admin.ListGroups(gpb.ListGroupsRequest())).groups
            lags: dict[str, int] = {g.name: g.lag for g in info}
            return lags["acme-billing"] == 0

        await eventually(caught_up, what="acme-billing's checkpoint at the log's head")
        stream.cancel()


async def test_the_consoles_pages_show_a_tenant_its_own_aggregates_alone(site: Site, tmp_path: Path) -> None:
    async with tenants(site, tmp_path) as t, t.acme() as acme, t.globex() as globex:
        await acme.submit(mine("acme:acc-1", bank.OpenAccount(owner="ann")))
        await globex.submit(mine("globex:acc-1", bank.OpenAccount(owner="gus")))
        address = console(t.app)
        answer = await log_in(address, ACME_KEY)
        assert answer.status == 303, answer.text
        cookie = {"Cookie": session_cookie(answer)}

        listing = await request(address, "GET", "/log", headers=cookie)
        assert listing.status == 200
        assert "acme:acc-1" in listing.text
        assert "globex:acc-1" not in listing.text

        own = await request(address, "GET", "/aggregates/acme:acc-1", headers=cookie)
        assert "ann" in own.text
        other = await request(address, "GET", "/aggregates/globex:acc-1", headers=cookie)
        assert "READ_DENIED" in other.text
        assert "gus" not in other.text

        # The live tail: acme's event, then the caught-up mark past globex's.
        tail = await server_sent(address, "/tail/events?after=0", 2, cookie["Cookie"])
        assert [(name, data["aggregate_id"] if name == "event" else data) for name, data, _ in tail] == [
            ("event", "acme:acc-1"),
            ("checkpoint", 2),
        ]


async def test_a_tenant_scoped_principal_reads_no_projection_documents(site: Site, tmp_path: Path) -> None:
    """A read model's documents are not tied to aggregate ids (the bank's
    balances by owner sum accounts of any tenant): a tenant-scoped read
    grant does not open them, in its own tenant or another's; an unscoped
    read of the projection's types does."""
    async with tenants(site, tmp_path) as t, t.acme() as acme, t.root() as root:
        await acme.submit(mine("acme:acc-1", bank.OpenAccount(owner="ann")))
        request = proj.GetDocumentRequest(projection="bank.balances_by_owner", key="account:acme:acc-1")
        assert await refusal(acme.projections.GetDocument(request)) == (DENIED, "READ_DENIED")
        listing = proj.ListDocumentsRequest(projection="bank.balances_by_owner")
        assert await refusal(acme.projections.ListDocuments(listing)) == (DENIED, "READ_DENIED")
        request.min_position = 1
        found = bank.AccountBalance()
        assert (await root.projections.GetDocument(request)).document.Unpack(found)
        assert found.owner == "ann"


class Seen(Middleware):
    """What a guard sees of each command: its type, aggregate and tenant."""

    name = "seen"

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def before(self, call: CommandCall) -> None:
        self.seen.append((call.command_type, call.aggregate_id, call.tenant))


def guarded(*plugins: Plugin) -> tuple[Registry, Seen]:
    """The bank and ``plugins``, behind the shipped guard (docs/plugins.md),
    and what the guard is shown."""
    seen = Seen()
    tenancy = Plugin("tenancy")
    tenancy.add_middleware(seen)
    tenancy.add_middleware(TenantGuard())
    return Registry([bank_account.plugin, *plugins, tenancy]), seen


async def test_the_bank_refuses_a_transfer_naming_another_tenants_account(site: Site, tmp_path: Path) -> None:
    """The walkthrough's theft: globex asks for a transfer (its own
    aggregate, so the policy lets it) whose source is acme's account, which
    the reaction would debit acting for globex. The bank's TransferMoney
    refuses an account of another tenant than the transfer's, source or
    target, before anything is written: acme's balance is whole."""
    async with tenants(site, tmp_path) as t, t.acme() as acme, t.globex() as globex, t.root() as root:
        await acme.submit(mine("acme:acc-1", bank.OpenAccount(owner="ann")))
        await acme.submit(mine("acme:acc-1", bank.Deposit(amount=1000)))
        await globex.submit(mine("globex:acc-1", bank.OpenAccount(owner="gus")))
        theft = bank.TransferMoney(source_account_id="acme:acc-1", target_account_id="globex:acc-1", amount=1000)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await globex.submit(mine("globex:t-1", theft))
        # The reason only: the details are for callers that may read the
        # aggregate, and the transfer does not exist.
        assert details_of(refused.value).reason == "CROSS_TENANT_TRANSFER"
        gift = bank.TransferMoney(source_account_id="globex:acc-1", target_account_id="acme:acc-1", amount=1)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await root.submit(mine("globex:t-2", gift))  # whoever sends it
        details = details_of(refused.value)
        assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "CROSS_TENANT_TRANSFER")
        assert details.field_violations == ["command.payload.target_account_id"]
        for transfer_id in ("globex:t-1", "globex:t-2"):  # nothing written
            assert await refusal(root.events.GetAggregate(ev.GetAggregateRequest(aggregate_id=transfer_id))) == (
                grpc.StatusCode.NOT_FOUND,
                "AGGREGATE_NOT_FOUND",
            )
        account = bank.Account()
        (await root.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="acme:acc-1"))).state.Unpack(account)
        assert account.balance == 1000


async def test_a_plugin_guard_sees_a_reactions_commands_act_in_their_events_tenant(site: Site, tmp_path: Path) -> None:
    """What a guard (docs/plugins.md) sees: clients' commands carry their
    caller's tenant (acme's from its key, globex's from its token), the
    reaction's the tenant of the event that caused each; a transfer within
    globex passes the guard and completes."""
    registry, guard = guarded()
    async with (
        tenants(site, tmp_path, registry) as t,
        t.acme() as acme,
        t.globex() as globex,
        t.root() as root,
    ):
        await acme.submit(mine("acme:acc-1", bank.OpenAccount(owner="ann")))
        await acme.submit(mine("acme:acc-1", bank.Deposit(amount=100)))
        await globex.submit(mine("globex:acc-1", bank.OpenAccount(owner="gus")))
        await globex.submit(mine("globex:acc-2", bank.OpenAccount(owner="gia")))
        await globex.submit(mine("globex:acc-1", bank.Deposit(amount=10)))
        own = bank.TransferMoney(source_account_id="globex:acc-1", target_account_id="globex:acc-2", amount=4)
        await globex.submit(mine("globex:t-2", own))

        async def completed() -> bool:
            found = await root.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="globex:t-2"))
            state = bank.Transfer()
            found.state.Unpack(state)
            return state.status == bank.TRANSFER_STATUS_COMPLETED

        await eventually(completed, what="globex's own transfer completed")

        async def balance(account_id: str) -> int:
            found = await root.events.GetAggregate(ev.GetAggregateRequest(aggregate_id=account_id))
            account = bank.Account()
            found.state.Unpack(account)
            return int(account.balance)

        assert (await balance("globex:acc-1"), await balance("globex:acc-2")) == (6, 4)
        assert ("bank.v1.Deposit", "acme:acc-1", "acme") in guard.seen
        assert ("bank.v1.TransferMoney", "globex:t-2", "globex") in guard.seen
        assert ("bank.v1.Withdraw", "globex:acc-1", "globex") in guard.seen
        assert ("bank.v1.Deposit", "globex:acc-2", "globex") in guard.seen
        assert ("bank.v1.CompleteTransfer", "globex:t-2", "globex") in guard.seen


# A read model that keeps each account under its own id: keyed by tenant.
keyed = Plugin("tenant-keyed")
owners = keyed.projection("tenants.owners", aggregate_types=["Account"], tenant_keyed=True)


@owners.on(bank.AccountOpened)
def _owner(event: bank.AccountOpened, envelope: ProjectedEvent, documents: Documents) -> None:
    documents.put(envelope.aggregate_id, bank.AccountBalance(owner=event.owner), subject=envelope.aggregate_id)


async def test_a_tenant_keyed_projection_shows_a_tenant_its_own_documents_alone(site: Site, tmp_path: Path) -> None:
    registry = Registry([bank_account.plugin, keyed])
    async with tenants(site, tmp_path, registry) as t, t.acme() as acme, t.globex() as globex:
        await globex.submit(mine("globex:acc-1", bank.OpenAccount(owner="gus")))
        await acme.submit(mine("acme:acc-1", bank.OpenAccount(owner="ann")))
        last = await acme.submit(mine("acme:acc-2", bank.OpenAccount(owner="amy")))
        at = last.events[-1].position

        def get(key: str) -> Any:
            return acme.projections.GetDocument(
                proj.GetDocumentRequest(projection="tenants.owners", key=key, min_position=at)
            )

        found = bank.AccountBalance()
        assert (await get("acme:acc-1")).document.Unpack(found)
        assert found.owner == "ann"
        assert await refusal(get("globex:acc-1")) == (DENIED, "READ_DENIED")
        assert await refusal(get("globex:nope")) == (DENIED, "READ_DENIED")  # alike: no existence oracle
        assert await refusal(get("acme:nope")) == (grpc.StatusCode.NOT_FOUND, "DOCUMENT_NOT_FOUND")

        async def keys(prefix: str) -> list[str]:
            request = proj.ListDocumentsRequest(projection="tenants.owners", key_prefix=prefix, min_position=at)
            return [d.key for d in (await acme.projections.ListDocuments(request)).documents]

        assert await keys("") == ["acme:acc-1", "acme:acc-2"]
        assert await keys("acme:acc-2") == ["acme:acc-2"]
        for other in ("globex:", "g"):
            listing = proj.ListDocumentsRequest(projection="tenants.owners", key_prefix=other)
            assert await refusal(acme.projections.ListDocuments(listing)) == (DENIED, "READ_DENIED")


async def test_a_tenant_reads_and_counts_its_documents_and_one_key_of_another_refuses_the_call(
    site: Site, tmp_path: Path
) -> None:
    registry = Registry([bank_account.plugin, keyed])
    async with tenants(site, tmp_path, registry) as t, t.acme() as acme, t.globex() as globex:
        await globex.submit(mine("globex:acc-1", bank.OpenAccount(owner="gus")))
        last = await acme.submit(mine("acme:acc-1", bank.OpenAccount(owner="ann")))
        at = last.events[-1].position

        def get(*keys: str) -> Any:
            return acme.projections.GetDocuments(
                proj.GetDocumentsRequest(projection="tenants.owners", keys=keys, min_position=at)
            )

        mine_only = await get("acme:acc-1", "acme:nope")
        assert [d.key for d in mine_only.documents] == ["acme:acc-1"]
        assert list(mine_only.missing_keys) == ["acme:nope"]
        # The whole call, whether the other tenant's key holds a document or not.
        assert await refusal(get("acme:acc-1", "globex:acc-1")) == (DENIED, "READ_DENIED")
        assert await refusal(get("acme:acc-1", "globex:nope")) == (DENIED, "READ_DENIED")

        def count(prefix: str) -> Any:
            request = proj.CountDocumentsRequest(projection="tenants.owners", key_prefix=prefix, min_position=at)
            return acme.projections.CountDocuments(request)

        assert (await count("")).count == 1  # narrowed to acme's: globex's is not counted
        assert (await count("acme:acc")).count == 1
        for other in ("globex:", "g"):
            assert await refusal(count(other)) == (DENIED, "READ_DENIED")


# A tenant-keyed read model whose handler fails on globex's account,
# quoting the account's owner (a payload) in its error.
poisoned = Plugin("tenant-keyed-poisoned")
poisoned_owners = poisoned.projection("tenants.poisoned", aggregate_types=["Account"], tenant_keyed=True)


@poisoned_owners.on(bank.AccountOpened)
def _poisoned_owner(event: bank.AccountOpened, envelope: ProjectedEvent, documents: Documents) -> None:
    if envelope.aggregate_id.startswith("globex:"):
        raise RuntimeError(f"cannot file the account of {event.owner}")
    documents.put(envelope.aggregate_id, bank.AccountBalance(owner=event.owner), subject=envelope.aggregate_id)


async def test_a_tenant_reader_is_told_a_projection_failed_but_not_another_tenants_error(
    site: Site, tmp_path: Path
) -> None:
    """A read-your-writes read past the event a handler failed on is refused
    PROJECTION_FAILED; to a tenant-scoped reader without the error's text,
    which quotes another tenant's payload (security.md, Tenants)."""
    registry = Registry([bank_account.plugin, poisoned])
    async with tenants(site, tmp_path, registry) as t, t.acme() as acme, t.globex() as globex:
        failing = await globex.submit(mine("globex:acc-1", bank.OpenAccount(owner="SECRET-gus")))
        last = await acme.submit(mine("acme:acc-1", bank.OpenAccount(owner="ann")))
        read = proj.GetDocumentRequest(
            projection="tenants.poisoned", key="acme:acc-1", min_position=last.events[-1].position
        )
        listing = proj.ListDocumentsRequest(projection="tenants.poisoned", min_position=last.events[-1].position)
        failed_at = str(failing.events[-1].position)
        for call in (acme.projections.GetDocument(read), acme.projections.ListDocuments(listing)):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call
            details = details_of(raised.value)
            assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PROJECTION_FAILED")
            assert details.metadata["failed_at"] == failed_at
            assert "SECRET" not in details.message and "RuntimeError" not in details.message
            assert "error" not in details.metadata
            assert "SECRET" not in str(details.metadata)
        # One who may read the projection's status is told what failed.
        async with t.root() as root:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await root.projections.GetDocument(read)
            details = details_of(raised.value)
            assert details.reason == "PROJECTION_FAILED"
            assert "SECRET-gus" in details.metadata["error"] and "SECRET-gus" in details.message


async def test_command_streams_and_dry_runs_are_held_to_the_tenant(site: Site, tmp_path: Path) -> None:
    async with tenants(site, tmp_path) as t, t.acme() as acme, t.globex() as globex:
        await acme.submit(mine("acme:acc-1", bank.OpenAccount(owner="ann")))
        await globex.submit(mine("globex:acc-1", bank.OpenAccount(owner="gus")))
        dry = cs.SubmitRequest(command=mine("acme:acc-1", bank.Deposit(amount=1)), dry_run=True)
        assert await refusal(globex.commands.Submit(dry)) == (DENIED, "SUBMIT_DENIED")
        # A request stream takes its token as call metadata (see bearer()).
        async with connect(t.app.address) as plain:
            stream = plain.commands.SubmitStream(metadata=[("authorization", f"Bearer {t.globex_token()}")])
            await stream.write(cs.SubmitRequest(command=mine("globex:acc-1", bank.Deposit(amount=2))))
            await stream.write(cs.SubmitRequest(command=mine("acme:acc-1", bank.Deposit(amount=3))))
            await stream.done_writing()
            answers = [answer async for answer in stream]
        assert [a.WhichOneof("result") for a in answers] == ["ok", "error"]
        assert (answers[1].error.code, answers[1].error.reason) == (DENIED.value[0], "SUBMIT_DENIED")
        async with t.root() as root:
            untouched = await root.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="acme:acc-1"))
            assert untouched.version == 1


async def test_a_stream_ends_when_its_tenant_or_its_scoped_grants_change(site: Site, tmp_path: Path) -> None:
    """A stream lives only as long as what admitted it (security.md): acme's
    subscription ends CREDENTIALS_CHANGED when the key file, read again,
    names another tenant for its key; and when the policy changes what its
    tenant-scoped role grants (which its unscoped grants, unchanged, would
    not tell)."""
    async with tenants(site, tmp_path, auth_reload_seconds=0.2) as t, t.acme() as acme:
        await acme.submit(mine("acme:acc-1", bank.OpenAccount(owner="ann")))

        async def ends_after(change: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
            stream = acme.events.Subscribe(ev.SubscribeRequest())
            assert (await stream.read()).event.aggregate_id == "acme:acc-1"
            change()

            async def ended() -> None:
                async with asyncio.timeout(20):
                    while True:
                        await stream.read()

            return await refusal(ended())

        keys, policy = tmp_path / "keys.toml", tmp_path / "policy.toml"
        original = keys.read_text()
        moved = ends_after(lambda: write(keys, original.replace('tenant = "acme"', 'tenant = "globex"')))
        assert await moved == (grpc.StatusCode.UNAVAILABLE, "CREDENTIALS_CHANGED")
        write(keys, original)
        await asyncio.sleep(0.5)  # read again: acme's once more
        widened = policy.read_text().replace('subscribe = ["Account"]', 'subscribe = ["Account", "Transfer"]', 1)
        assert await ends_after(lambda: write(policy, widened)) == (grpc.StatusCode.UNAVAILABLE, "CREDENTIALS_CHANGED")


# A reaction that, for each account acme opens, credits globex's account:
# refused by the guard, and with nothing to compensate, parked.
leaky = Plugin("tenant-leaky")
bonus = leaky.reaction("leaky.bonus", aggregate_types=["Account"])


@bonus.on(bank.AccountOpened)
def _bonus(event: bank.AccountOpened, envelope: ProjectedEvent, state: None) -> Send | None:
    if not envelope.aggregate_id.startswith("acme:"):
        return None
    return Send("globex:acc-1", bank.Deposit(amount=1))


async def test_a_parked_command_replayed_acts_in_its_events_tenant_again(site: Site, tmp_path: Path) -> None:
    """A parked command an administrator replays carries the tenant of the
    event that caused it, as its first sending did: the guard refuses it
    again (with no tenant it would let it through)."""
    registry, guard = guarded(leaky)
    async with tenants(site, tmp_path, registry) as t, t.acme() as acme, t.globex() as globex, t.root() as root:
        await globex.submit(mine("globex:acc-1", bank.OpenAccount(owner="gus")))
        await acme.submit(mine("acme:acc-1", bank.OpenAccount(owner="ann")))

        async def parked() -> list[rpb.ParkedCommand]:
            listing = await root.reactions.ListParkedCommands(rpb.ListParkedCommandsRequest(reaction="leaky.bonus"))
            return list(listing.commands)

        async def one_parked() -> bool:
            return len(await parked()) == 1

        await eventually(one_parked, what="the cross-tenant bonus parked")
        (entry,) = await parked()
        assert entry.reason == "CROSS_TENANT"
        replayed = await root.reactions.ReplayParkedCommand(
            rpb.ReplayParkedCommandRequest(reaction="leaky.bonus", command_id=entry.command_id)
        )
        assert (replayed.accepted, replayed.reason) == (False, "CROSS_TENANT")
        assert [seen for seen in guard.seen if seen[1] == "globex:acc-1" and seen[0] == "bank.v1.Deposit"] == [
            ("bank.v1.Deposit", "globex:acc-1", "acme"),
            ("bank.v1.Deposit", "globex:acc-1", "acme"),
        ]
        account = await root.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="globex:acc-1"))
        assert account.version == 1  # opened, never credited


async def test_refusal_details_go_to_who_may_read_the_aggregate_in_its_tenant(site: Site, tmp_path: Path) -> None:
    """No reads through refusals (security.md), by id: acme's scoped read
    of its own account hears a wrong expected version's current version; a
    cashier of acme that may deposit there but read nothing hears the reason
    alone."""
    async with tenants(site, tmp_path) as t, t.acme() as acme:
        await acme.submit(mine("acme:acc-1", bank.OpenAccount(owner="ann")))
        stale = command("acme:acc-1", bank.Deposit(amount=1), user_id="", expected_version=5)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await acme.submit(stale)
        told = details_of(raised.value)
        assert (told.reason, told.metadata.get("current_version")) == ("WRONG_EXPECTED_VERSION", "1")
        cashier_token = t.issuer.token("acme-till", roles=["tenant-cashier"], tenant="acme")
        async with connect(t.app.address, interceptors=bearer(cashier_token)) as cashier:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await cashier.submit(stale)
        withheld = details_of(raised.value)
        assert withheld.reason == "WRONG_EXPECTED_VERSION"
        assert "current_version" not in withheld.metadata
        assert "at version 1" not in withheld.message
