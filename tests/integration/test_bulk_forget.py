"""A tenant leaving: its aggregates listed by id prefix (ListAggregates) and
forgotten by prefix (ForgetAggregates), over a real server with encryption
at rest on SQLite and PostgreSQL, a real gRPC client. After the forget the
data at rest (the SQLite directory, a ``pg_dump``) no longer holds any of
the tenant's wrapped keys, its events read redacted, its read-model
documents are gone; another tenant whose prefix starts alike (``acme2:``)
is untouched. A confirmation that does not match does nothing; a call cut
short by a store failure after its first batch leaves that batch
forgotten, and a call again finishes the rest."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import projection_service_pb2 as projections
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.errors import StoreUnavailable
from service.store.encryption import new_master_key
from service.store.postgres import PostgresStore
from service.store.records import ACCEPTED, AuditEntry, Forgetting
from tests.support.at_rest import Site, site_for
from tests.support.events import new_event
from tests.support.failing_deletes import fail_inserting, heal_deleting
from tests.support.grpc_client import Client, command, details_of, running_server
from tests.support.security import write
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

TENANT = [f"acme:acc-{n}" for n in range(7)]
OTHERS = ["acme2:acc-0", "acme", "acmf:acc-0"]


def owner(aggregate_id: str) -> str:
    return f"Owner of {aggregate_id}"


@pytest.fixture(params=["sqlite", "postgres"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    return site_for(request, tmp_path)


@pytest.fixture
async def client(site: Site, tmp_path: Path) -> AsyncIterator[Client]:
    keys = write(tmp_path / "master.keys", f"k1:{new_master_key()}\n")
    async with running_server(site.store, master_key_file=keys, anonymous_admin=True) as (_, connected):
        for aggregate_id in TENANT + OTHERS:
            await connected.submit(command(aggregate_id, bank.OpenAccount(owner=owner(aggregate_id))))
        await eventually(lambda: caught_up(connected))  # its documents written, for the forget to count
        yield connected


async def caught_up(client: Client) -> bool:
    status = await client.projections.GetProjection(projections.GetProjectionRequest(name="bank.balances_by_owner"))
    return bool(status.position == status.log_head)


async def refusal(call: object) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    details = details_of(raised.value)
    return details.code, details.reason, details.metadata


async def listed(client: Client, prefix: str, **options: object) -> list[admin.ListedAggregate]:
    found: list[admin.ListedAggregate] = []
    token = ""
    while True:
        page = await client.admin.ListAggregates(
            admin.ListAggregatesRequest(prefix=prefix, page_token=token, **options)  # type: ignore[arg-type]
        )
        found += page.aggregates
        token = page.next_page_token
        if not token:
            return found


async def payloads(client: Client, aggregate_id: str) -> list[tuple[bool, bytes]]:
    read = client.events.ReadAggregate(ev.ReadAggregateRequest(aggregate_id=aggregate_id))
    return [(event.redacted, event.payload.value) async for event in read]


async def test_a_tenant_is_listed_by_prefix_a_page_at_a_time(client: Client) -> None:
    tenant = await listed(client, "acme:", page_size=3)
    assert [a.aggregate_id for a in tenant] == TENANT
    assert {(a.aggregate_type, a.version, a.has_key, a.forgotten, a.deleted) for a in tenant} == {
        ("Account", 1, True, False, False)
    }
    assert [a.aggregate_id for a in await listed(client, "acme")] == ["acme", "acme2:acc-0", *TENANT]
    assert await listed(client, "acme:", aggregate_type="User") == []
    first = await client.admin.ListAggregates(admin.ListAggregatesRequest(prefix="acme:", page_size=3))
    assert await refusal(
        client.admin.ListAggregates(admin.ListAggregatesRequest(prefix="acmf:", page_token=first.next_page_token))
    ) == (grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_MISMATCH", {})
    # Said in the listing's own terms (before: "pass it with the projection, ...", which a listing has none of).
    with pytest.raises(grpc.aio.AioRpcError) as mismatch:
        await client.admin.ListAggregates(admin.ListAggregatesRequest(prefix="acmf:", page_token=first.next_page_token))
    said = mismatch.value.details() or ""
    assert "pass it with the prefix and aggregate type of the request it came from" in said
    assert "projection" not in said


async def test_a_listing_with_bad_input_is_refused_with_its_reason_and_field(client: Client) -> None:
    """Each field ListAggregates takes, out of bounds: refused with the
    field named, nothing listed."""
    cases = [
        (admin.ListAggregatesRequest(prefix="a" * 201), "INVALID_FILTER", "prefix"),
        (admin.ListAggregatesRequest(aggregate_type="Acc\nount"), "INVALID_FILTER", "aggregate_type"),
        (admin.ListAggregatesRequest(page_size=1001), "PAGE_SIZE_TOO_LARGE", "page_size"),
        (admin.ListAggregatesRequest(page_token="not-a-token"), "INVALID_PAGE_TOKEN", "page_token"),
    ]
    for request, reason, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.admin.ListAggregates(request)
        details = details_of(raised.value)
        assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason), request
        assert field in details.field_violations, (request, details.field_violations)


async def test_forgetting_a_tenant_by_prefix_shreds_it_and_no_one_else(client: Client, site: Site) -> None:
    wrapped: dict[str, bytes] = {}
    for aggregate_id in TENANT + OTHERS:
        key = site.at_rest.read_wrapped_key(aggregate_id)
        assert key is not None
        wrapped[aggregate_id] = key
    # "acme" would match "acme2:" too: refused, as is no confirmation or a wrong one; nothing done.
    assert (await refusal(client.admin.ForgetAggregates(admin.ForgetAggregatesRequest(prefix="acme", confirm=9))))[
        :2
    ] == (grpc.StatusCode.INVALID_ARGUMENT, "PREFIX_NOT_SEPARATED")
    assert await refusal(client.admin.ForgetAggregates(admin.ForgetAggregatesRequest(prefix="acme:"))) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "CONFIRMATION_REQUIRED",
        {"matching": "7"},
    )
    assert await refusal(client.admin.ForgetAggregates(admin.ForgetAggregatesRequest(prefix="acme:", confirm=6))) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "CONFIRMATION_MISMATCH",
        {"matching": "7", "confirm": "6"},
    )
    assert not any(a.forgotten for a in await listed(client, ""))

    done = await client.admin.ForgetAggregates(admin.ForgetAggregatesRequest(prefix="acme:", confirm=7, batch_size=3))
    assert (done.forgotten, done.remaining, done.not_encrypted, done.without_key) == (7, 0, 0, 0)
    # Each account's balance documents (two per owner), all named in one entry.
    assert [(d.name, d.documents) for d in done.deleted_documents] == [("bank.balances_by_owner", 14)]

    at_rest = site.at_rest.read_bytes()
    for aggregate_id in TENANT:
        assert site.at_rest.read_wrapped_key(aggregate_id) is None
        assert wrapped[aggregate_id] not in at_rest  # the key is gone from the files, not only from the row
        assert await payloads(client, aggregate_id) == [(True, b"")]
    for aggregate_id in OTHERS:
        assert site.at_rest.read_wrapped_key(aggregate_id) == wrapped[aggregate_id]
        [(redacted, payload)] = await payloads(client, aggregate_id)
        assert not redacted and owner(aggregate_id).encode() in payload
    assert {a.aggregate_id for a in await listed(client, "") if a.forgotten} == set(TENANT)
    again = await client.admin.ForgetAggregates(admin.ForgetAggregatesRequest(prefix="acme:", confirm=0))
    assert (again.forgotten, again.remaining) == (0, 0)
    audit = await client.admin.QueryAudit(admin.QueryAuditRequest(aggregate_id="acme:"))
    entries = [(e.command_type.rsplit("/")[-1], e.reason, e.message.split(";")[0]) for e in reversed(audit.entries)]
    assert entries == [
        ("ForgetAggregates", "CONFIRMATION_REQUIRED", "7 aggregates match (prefix 'acme:'): nothing was forgotten"),
        (
            "ForgetAggregates",
            "CONFIRMATION_MISMATCH",
            "7 aggregates match (prefix 'acme:'), not 6: nothing was forgotten",
        ),
        ("ForgetAggregates", "", "batch: 3 aggregates forgotten (prefix 'acme:'), acme:acc-0 to acme:acc-2"),
        ("ForgetAggregates", "", "batch: 3 aggregates forgotten (prefix 'acme:'), acme:acc-3 to acme:acc-5"),
        ("ForgetAggregates", "", "batch: 1 aggregate forgotten (prefix 'acme:'), acme:acc-6 to acme:acc-6"),
        ("ForgetAggregates", "", "7 aggregates forgotten (prefix 'acme:'), 0 remaining"),
        ("ForgetAggregates", "", "0 aggregates forgotten (prefix 'acme:'), 0 remaining"),
    ]
    # What the batches deleted beside the keys: in the call's entry, summed.
    assert [e.message for e in audit.entries if e.message.startswith("7 aggregates forgotten")] == [
        "7 aggregates forgotten (prefix 'acme:'), 0 remaining; deleted: bank.balances_by_owner: 14 documents"
    ]


async def test_a_bulk_forget_cut_short_leaves_its_batches_forgotten_and_a_call_again_finishes(
    client: Client, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = site.store
    batches: list[list[str]] = []
    forget_all = store.forget_aggregates_data

    async def failing_after_one(aggregate_ids: list[str], *, audit: AuditEntry | None = None) -> list[Forgetting]:
        if batches:  # the store goes away after the first batch committed
            raise StoreUnavailable("the store went away")
        batches.append(list(aggregate_ids))
        return await forget_all(aggregate_ids, audit=audit)

    monkeypatch.setattr(store, "forget_aggregates_data", failing_after_one)
    code, _, _ = await refusal(
        client.admin.ForgetAggregates(admin.ForgetAggregatesRequest(prefix="acme:", confirm=7, batch_size=3))
    )
    assert code == grpc.StatusCode.UNAVAILABLE
    assert batches == [TENANT[:3]]
    assert [a.aggregate_id for a in await listed(client, "acme:") if a.forgotten] == TENANT[:3]
    # The batch that was done is in the audit, written with it.
    assert await batch_entries(client) == ["batch: 3 aggregates forgotten (prefix 'acme:'), acme:acc-0 to acme:acc-2"]
    monkeypatch.setattr(store, "forget_aggregates_data", forget_all)
    # Still 7? No: 4 remain, and only 4 are confirmed.
    assert (await refusal(client.admin.ForgetAggregates(admin.ForgetAggregatesRequest(prefix="acme:", confirm=7))))[
        2
    ] == {"matching": "4", "confirm": "7"}
    rest = await client.admin.ForgetAggregates(admin.ForgetAggregatesRequest(prefix="acme:", confirm=4))
    assert (rest.forgotten, rest.remaining) == (4, 0)
    assert all(site.at_rest.read_wrapped_key(i) is None for i in TENANT)
    assert all(site.at_rest.read_wrapped_key(i) is not None for i in OTHERS)


async def test_a_batch_whose_audit_entry_cannot_be_written_is_not_forgotten_either(
    client: Client, site: Site, request: pytest.FixtureRequest
) -> None:
    """A batch's entry is written in the batch's own transaction, after its
    forget's statements: a store that fails there (the entry's insertion
    refused, as a full disk would refuse it) forgets nothing of the batch,
    and files no entry. The entry was written once the batch had
    committed: that left the batch forgotten with no entry. Once the store
    heals, the call again forgets every batch, each with its entry."""
    url = request.getfixturevalue("postgres_url") if isinstance(site.store, PostgresStore) else ""
    wrapped = {aggregate_id: site.at_rest.read_wrapped_key(aggregate_id) for aggregate_id in TENANT}
    await fail_inserting(site.store, url, table="refusals", column="outcome", value=ACCEPTED)
    try:
        code, reason, _ = await refusal(
            client.admin.ForgetAggregates(admin.ForgetAggregatesRequest(prefix="acme:", confirm=7, batch_size=3))
        )
    finally:
        await heal_deleting(site.store, url, table="refusals")
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
    assert not any(a.forgotten for a in await listed(client, "acme:"))
    assert {i: site.at_rest.read_wrapped_key(i) for i in TENANT} == wrapped
    assert await batch_entries(client) == []

    done = await client.admin.ForgetAggregates(admin.ForgetAggregatesRequest(prefix="acme:", confirm=7, batch_size=4))
    assert (done.forgotten, done.remaining) == (7, 0)
    assert await batch_entries(client) == [
        "batch: 4 aggregates forgotten (prefix 'acme:'), acme:acc-0 to acme:acc-3",
        "batch: 3 aggregates forgotten (prefix 'acme:'), acme:acc-4 to acme:acc-6",
    ]


async def test_a_single_forget_whose_audit_entry_cannot_be_written_is_not_forgotten_either(
    client: Client, site: Site, request: pytest.FixtureRequest
) -> None:
    """ForgetAggregate's entry is written in the forget's transaction too, as
    a batch's: a store that refuses the entry forgets nothing. It was written
    once the forget had committed: that left the aggregate forgotten with no
    entry. Once the store heals, forgetting again leaves one entry."""
    url = request.getfixturevalue("postgres_url") if isinstance(site.store, PostgresStore) else ""
    wrapped = site.at_rest.read_wrapped_key(TENANT[0])
    await fail_inserting(site.store, url, table="refusals", column="outcome", value=ACCEPTED)
    try:
        code, reason, _ = await refusal(
            client.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id=TENANT[0]))
        )
    finally:
        await heal_deleting(site.store, url, table="refusals")
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
    assert site.at_rest.read_wrapped_key(TENANT[0]) == wrapped

    await client.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id=TENANT[0]))
    assert site.at_rest.read_wrapped_key(TENANT[0]) is None
    audit = await client.admin.QueryAudit(admin.QueryAuditRequest(aggregate_id=TENANT[0]))
    done = [
        e
        for e in audit.entries
        if e.command_type.endswith("/ForgetAggregate") and e.outcome == admin.AUDIT_OUTCOME_ACCEPTED
    ]
    assert len(done) == 1


async def batch_entries(client: Client) -> list[str]:
    """The messages of the batch entries of ForgetAggregates calls, oldest first."""
    audit = await client.admin.QueryAudit(admin.QueryAuditRequest(aggregate_id="acme:"))
    return [e.message for e in reversed(audit.entries) if e.message.startswith("batch: ")]


async def test_what_payloads_in_the_clear_keep_readable_is_left_and_said(client: Client, site: Site) -> None:
    """An aggregate begun before encryption was on (its first event in the
    clear, its key made by a command since) and one written wholly in the
    clear (no key) are not forgotten, and the answer says so."""
    opened = bank.AccountOpened(owner="Old Owner").SerializeToString()
    for aggregate_id in ("acme:old", "acme:bare"):
        await site.store.append(
            aggregate_id, [new_event("bank.v1.AccountOpened", aggregate_type="Account", payload=opened)], 0
        )
    await client.submit(command("acme:old", bank.Deposit(amount=5)))  # makes its key: sealed from now on
    done = await client.admin.ForgetAggregates(admin.ForgetAggregatesRequest(prefix="acme:", confirm=8))
    assert (done.forgotten, done.remaining, done.not_encrypted, list(done.not_encrypted_ids), done.without_key) == (
        7,
        1,
        1,
        ["acme:old"],
        1,
    )
    assert [r for r, _ in await payloads(client, "acme:old")] == [False, False]  # still readable: it was left
    listed_now = {a.aggregate_id: (a.has_key, a.forgotten) for a in await listed(client, "acme:")}
    assert (listed_now["acme:old"], listed_now["acme:bare"]) == ((True, False), (False, False))
