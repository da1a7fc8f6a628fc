"""A tenant's own administration, as docs/security.md ("Tenant
administration") promises it, over a real socket on SQLite and PostgreSQL
with encryption at rest: acme's support principal (a ``scope = "tenant"``
role granting ``tenant_admin``) lists, forgets and reads the audit of
acme's aggregates; globex's ids are answered as ids that do not exist (a
globex aggregate that exists and one that does not, alike), a prefix
outside acme is refused ``ADMIN_DENIED``, and every other administration
(keys, exports, deletion) stays refused with its reason."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import projection_service_pb2 as projection
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.audit import AuditLog
from service.client import ChronicleClient
from service.client.errors import RemoteError
from service.store.base import AuditQuery
from service.store.encryption import new_master_key
from service.store.records import AuditEntry
from tests.support.at_rest import Site, site_for
from tests.support.console import console, log_in, session_cookie
from tests.support.grpc_client import Client, command, connect, details_of, running_server, with_jwt_auth
from tests.support.http import request
from tests.support.security import JwtIssuer, bearer, write

pytestmark = pytest.mark.postgres

POLICY = """
[roles.tenant-support]
scope = "tenant"
tenant_admin = true

[roles.tenant-banker]
scope = "tenant"
submit = ["bank.v1.OpenAccount"]
read = ["Account"]

[roles.operator]
submit = ["*"]
read = ["*"]
impersonate = true  # the test commands name a user
admin = true

[principals."root"]
roles = ["operator"]

[principals."acme-support"]
roles = ["tenant-support"]
tenant = "acme"

[principals."acme-app"]
roles = ["tenant-banker"]
tenant = "acme"
"""

AUDIT_LINK = '<a href="/audit">Audit</a>'
ACME = ["acme:acc-0", "acme:acc-1", "acme:acc-2"]
GLOBEX = ["globex:acc-0", "globex:acc-1"]
# Ids a prefix match must tell from acme's: another tenant whose name
# begins alike, and an aggregate of no tenant.
ALIKE = ["acme2:acc-0", "acme-acc-0"]


@pytest.fixture(params=["sqlite", "postgres"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    return site_for(request, tmp_path)


class Callers:
    def __init__(
        self, root: Client, support: Client, app: Client, address: str, console: str, issuer: JwtIssuer
    ) -> None:
        self.root, self.support, self.app = root, support, app
        self.address, self.console, self.issuer = address, console, issuer
        self.support_token = issuer.token("acme-support")


@pytest.fixture
async def callers(site: Site, tmp_path: Path) -> AsyncIterator[Callers]:
    issuer = JwtIssuer()
    settings = replace(
        with_jwt_auth(tmp_path, issuer, POLICY),
        master_key_file=write(tmp_path / "master.keys", f"k1:{new_master_key()}\n"),
        console_listen="127.0.0.1:0",
    )
    async with running_server(site.store, settings=settings) as (server, _), AsyncExitStack() as stack:
        root, support, app = [
            await stack.enter_async_context(connect(server.address, interceptors=bearer(issuer.token(name))))
            for name in ("root", "acme-support", "acme-app")
        ]
        for aggregate_id in ACME + GLOBEX + ALIKE:
            await root.submit(command(aggregate_id, bank.OpenAccount(owner=f"Owner of {aggregate_id}")))
        yield Callers(root, support, app, server.address, console(server), issuer)


async def refusal(call: object) -> tuple[grpc.StatusCode, str, dict[str, str], str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    details = details_of(raised.value)
    return details.code, details.reason, details.metadata, raised.value.details() or ""


async def listed(client: Client, prefix: str = "", page_size: int = 0) -> list[admin.ListedAggregate]:
    found: list[admin.ListedAggregate] = []
    token = ""
    while True:
        page = await client.admin.ListAggregates(
            admin.ListAggregatesRequest(prefix=prefix, page_token=token, page_size=page_size)
        )
        found += page.aggregates
        token = page.next_page_token
        if not token:
            return found


async def forgotten(client: Client, aggregate_id: str) -> bool:
    events = [e async for e in client.events.ReadAggregate(ev.ReadAggregateRequest(aggregate_id=aggregate_id))]
    return all(event.redacted for event in events)


async def test_a_tenants_administrator_lists_its_own_aggregates_only(callers: Callers) -> None:
    # No prefix: its tenant's, a page at a time (the token bound to the tenant's listing).
    assert [a.aggregate_id for a in await listed(callers.support, page_size=2)] == ACME
    assert [a.aggregate_id for a in await listed(callers.support, "acme:acc-1")] == ["acme:acc-1"]
    for outside in ["globex:", "globex:acc-0", "acme", "acme2:", "a", "zzz:"]:
        code, reason, metadata, _ = await refusal(
            callers.support.admin.ListAggregates(admin.ListAggregatesRequest(prefix=outside))
        )
        assert (code, reason, metadata["tenant"], metadata["prefix"]) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "ADMIN_DENIED",
            "acme",
            outside,
        )
    # Every tenant's administrator still lists every tenant.
    assert {a.aggregate_id for a in await listed(callers.root)} == set(ACME + GLOBEX + ALIKE)


async def test_a_tenants_administrator_forgets_its_own_aggregate_and_another_tenants_reads_as_missing(
    callers: Callers,
) -> None:
    answer = await callers.support.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id="acme:acc-0"))
    assert not answer.already_forgotten
    assert await forgotten(callers.root, "acme:acc-0")

    # globex:acc-0 exists, globex:acc-9 and acme:acc-9 do not: one answer for all three.
    answers = {
        aggregate_id: await refusal(
            callers.support.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id=aggregate_id))
        )
        for aggregate_id in ["globex:acc-0", "globex:acc-9", "acme:acc-9", "acme2:acc-0"]
    }
    for aggregate_id, (code, reason, metadata, message) in answers.items():
        assert (code, reason, metadata) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "NOT_ENCRYPTED",
            {"aggregate_id": aggregate_id},
        )
        assert message.replace(aggregate_id, "ID") == answers["acme:acc-9"][3].replace("acme:acc-9", "ID")
    assert not await forgotten(callers.root, "globex:acc-0")
    assert not await forgotten(callers.root, "acme2:acc-0")


async def test_a_tenants_administrator_forgets_by_its_prefix_and_its_ids_only(callers: Callers) -> None:
    for outside in ["globex:", "acme-", "a:"]:
        code, reason, metadata, _ = await refusal(
            callers.support.admin.ForgetAggregates(admin.ForgetAggregatesRequest(prefix=outside, confirm=2))
        )
        assert (code, reason, metadata["tenant"]) == (grpc.StatusCode.PERMISSION_DENIED, "ADMIN_DENIED", "acme")

    # By ids: another tenant's (existing or not) match nothing, as ids that do not exist.
    ids = ["acme:acc-1", "globex:acc-0", "globex:acc-9", "acme2:acc-0"]
    code, reason, metadata, _ = await refusal(
        callers.support.admin.ForgetAggregates(admin.ForgetAggregatesRequest(aggregate_ids=ids))
    )
    assert (code, reason, metadata["matching"]) == (grpc.StatusCode.FAILED_PRECONDITION, "CONFIRMATION_REQUIRED", "1")
    done = await callers.support.admin.ForgetAggregates(admin.ForgetAggregatesRequest(aggregate_ids=ids, confirm=1))
    assert (done.forgotten, done.remaining) == (1, 0)
    assert await forgotten(callers.root, "acme:acc-1")
    assert not await forgotten(callers.root, "globex:acc-0")
    assert not await forgotten(callers.root, "acme2:acc-0")

    # By its prefix: what remains of acme, nothing of acme2 or globex.
    done = await callers.support.admin.ForgetAggregates(admin.ForgetAggregatesRequest(prefix="acme:", confirm=2))
    assert (done.forgotten, done.remaining) == (2, 0)
    assert {a.aggregate_id for a in await listed(callers.root) if a.forgotten} == set(ACME)


async def test_a_tenants_administrator_reads_the_audit_of_its_own_aggregates_only(callers: Callers) -> None:
    await callers.support.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id="acme:acc-0"))
    # Refusals filed under another tenant's id and under an id of no tenant.
    for aggregate_id in ["globex:acc-7", "acc-7"]:
        await refusal(callers.app.submit(command(aggregate_id, bank.OpenAccount(owner="x"), user_id="")))
    await refusal(callers.support.admin.RewrapKeys(admin.RewrapKeysRequest()))

    everything = (await callers.root.admin.QueryAudit(admin.QueryAuditRequest(limit=1000))).entries
    ids_of_all = {e.aggregate_id for e in everything}
    assert {"globex:acc-0", "globex:acc-7", "acc-7", ""} <= ids_of_all

    own = (await callers.support.admin.QueryAudit(admin.QueryAuditRequest(limit=1000))).entries
    assert {e.aggregate_id for e in own} == set(ACME)
    assert [e for e in everything if e.aggregate_id.startswith("acme:")] == list(own)
    (forget,) = [e for e in own if e.command_type == "chronicle.v1.AdminService/ForgetAggregate"]
    assert (forget.aggregate_id, forget.principal, forget.origin) == ("acme:acc-0", "acme-support", "tenant-admin:acme")

    # Another tenant's id, audited or not: no entries, as an id never audited.
    for aggregate_id in ["globex:acc-0", "globex:acc-9"]:
        asked = admin.QueryAuditRequest(aggregate_id=aggregate_id)
        assert (await callers.support.admin.QueryAudit(asked)).entries == []
    assert (await callers.root.admin.QueryAudit(admin.QueryAuditRequest(aggregate_id="globex:acc-0"))).entries

    # Its refusal of a global call names it, as acme's administrator (no aggregate: not in acme's view).
    (rewrap,) = [e for e in everything if e.command_type == "chronicle.v1.AdminService/RewrapKeys"]
    assert (rewrap.principal, rewrap.origin, rewrap.reason) == ("acme-support", "tenant-admin:acme", "ADMIN_DENIED")


async def test_every_other_administration_stays_every_tenants(callers: Callers) -> None:
    support = callers.support.admin
    calls = {
        "rewrap keys": support.RewrapKeys(admin.RewrapKeysRequest()),
        "delete aggregates": support.DeleteAggregate(admin.DeleteAggregateRequest(aggregate_id="acme:acc-0")),
        "export the store": anext(aiter(support.ExportLog(admin.ExportLogRequest()))),
    }
    for action, call in calls.items():
        code, reason, metadata, message = await refusal(call)
        assert (code, reason, metadata["action"], metadata["tenant"]) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "ADMIN_DENIED",
            action,
            "acme",
        )
        assert "tenant_admin" in message
    assert not await forgotten(callers.root, "acme:acc-0")

    # A tenant-scoped role without tenant_admin administers nothing, its own tenant included.
    code, reason, _, _ = await refusal(callers.app.admin.ListAggregates(admin.ListAggregatesRequest(prefix="acme:")))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "ADMIN_DENIED")


async def test_the_consoles_audit_page_shows_a_tenants_administrator_its_own_entries(callers: Callers) -> None:
    """The page is QueryAudit itself: narrowed as the RPC is."""
    cookie = {"Cookie": session_cookie(await log_in(callers.console, callers.support_token))}
    page = await request(callers.console, "GET", "/audit", headers=cookie)
    assert page.status == 200
    assert "acme:acc-0" in page.text and "globex:acc-0" not in page.text and "acme2:acc-0" not in page.text
    asked = await request(callers.console, "GET", "/audit?aggregate=globex:acc-0", headers=cookie)
    assert asked.status == 200 and "globex:acc-0" in asked.text  # in the filter's field, not an entry
    assert "acme:acc-0" not in asked.text


async def test_the_console_links_the_audit_for_a_tenants_administrator_and_reads_it_once(
    callers: Callers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: no Audit link for acme's support (the admin grant alone
    showed it) though the page works for it, and opening the page ran a
    whole narrowed QueryAudit to learn that it may, before the page's own."""
    reads: list[AuditQuery] = []
    query = AuditLog.query

    async def counted(self: AuditLog, asked: AuditQuery) -> list[AuditEntry]:
        reads.append(asked)
        return await query(self, asked)

    monkeypatch.setattr(AuditLog, "query", counted)
    cookie = {"Cookie": session_cookie(await log_in(callers.console, callers.support_token))}
    other_page = await request(callers.console, "GET", "/cluster", headers=cookie)
    assert other_page.status == 200 and AUDIT_LINK in other_page.text
    assert reads == []  # the link is the policy's answer, not a query's
    audit_page = await request(callers.console, "GET", "/audit", headers=cookie)
    assert audit_page.status == 200 and "acme:acc-0" in audit_page.text
    assert [read.aggregate_id_prefix for read in reads] == ["acme:"]  # the page's own read, narrowed

    # A tenant-scoped role without tenant_admin: no link, and the page refused as before.
    app_cookie = {"Cookie": session_cookie(await log_in(callers.console, callers.issuer.token("acme-app")))}
    assert AUDIT_LINK not in (await request(callers.console, "GET", "/cluster", headers=app_cookie)).text
    assert (await request(callers.console, "GET", "/audit", headers=app_cookie)).status == 403


async def test_the_python_clients_admin_part_works_for_a_tenants_administrator(callers: Callers) -> None:
    async with ChronicleClient.connect(callers.address, token=lambda: callers.support_token) as support:
        assert [a.aggregate_id async for a in support.admin.aggregates()] == ACME
        assert await support.admin.count_to_forget(prefix="acme:") == 3
        assert await support.admin.count_to_forget(aggregate_ids=["globex:acc-0", "acme:acc-2"]) == 1
        with pytest.raises(RemoteError) as refused:
            await support.admin.count_to_forget(prefix="globex:")
        assert refused.value.reason == "ADMIN_DENIED"
        done = await support.admin.forget_aggregates(aggregate_ids=["acme:acc-2"], confirm=1)
        assert done.forgotten == 1
    assert await forgotten(callers.root, "acme:acc-2")


BALANCES = "bank.balances_by_owner"


async def owners_document(client: Client, owner: str, position: int) -> bank.OwnerBalance | None:
    """The read model's document of ``owner`` once it has seen ``position``;
    None if it has none."""
    request = projection.GetDocumentRequest(projection=BALANCES, key=f"owner:{owner}", min_position=position)
    try:
        found = await client.projections.GetDocument(request, timeout=10)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise
    document = bank.OwnerBalance()
    assert found.document.Unpack(document)
    return document


async def test_a_forget_says_which_other_aggregates_lost_a_shared_document_and_a_tenant_admin_how_many(
    callers: Callers,
) -> None:
    """The bank's read model keeps one document per owner naming each of
    the owner's accounts: acme's ``acme:evil``, opened with the owner of
    globex's account, shares it with globex's. Forgetting ``acme:evil``
    deletes that document with it (derived data of the forgotten), so the
    answer says so: to acme's administrator, one other aggregate of another
    tenant, not named (before: no other aggregate at all); to an
    administrator of every tenant, by id. Globex's next event writes its
    document again."""
    await callers.root.submit(command("globex:acc-9", bank.OpenAccount(owner="Shared Owner")))
    await callers.root.submit(command("acme:acc-9", bank.OpenAccount(owner="Shared Owner")))
    opened = await callers.root.submit(command("acme:evil", bank.OpenAccount(owner="Shared Owner")))
    shared = await owners_document(callers.root, "Shared Owner", opened.events[-1].position)
    assert shared is not None and list(shared.account_ids) == ["acme:acc-9", "acme:evil", "globex:acc-9"]

    answer = await callers.support.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id="acme:evil"))
    (deleted,) = answer.deleted_documents
    assert (deleted.name, deleted.documents) == (BALANCES, 2)  # its account: document and the owner's
    assert (list(deleted.other_subjects), deleted.other_subjects_withheld, deleted.other_subjects_omitted) == (
        ["acme:acc-9"],
        1,
        0,
    )
    assert "globex" not in str(answer)

    deposited = await callers.root.submit(command("globex:acc-9", bank.Deposit(amount=7)))
    back = await owners_document(callers.root, "Shared Owner", deposited.events[-1].position)
    assert back is not None and (list(back.account_ids), back.balance) == (["globex:acc-9"], 7)

    await callers.root.submit(command("globex:acc-8", bank.OpenAccount(owner="Second Owner")))
    opened = await callers.root.submit(command("acme:evil2", bank.OpenAccount(owner="Second Owner")))
    assert await owners_document(callers.root, "Second Owner", opened.events[-1].position) is not None
    answer = await callers.root.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id="acme:evil2"))
    (deleted,) = answer.deleted_documents
    assert (list(deleted.other_subjects), deleted.other_subjects_withheld) == (["globex:acc-8"], 0)
