"""AdminService.DeleteAggregate over a real socket, on SQLite and PostgreSQL:
the events, snapshots and claims go, a tombstone stands at the next
version and a new position where readers and subscribers see it, commands
and retries are refused, a read model handling deletions forgets the
aggregate, and appends racing the deletion are never lost silently."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import event_pb2
from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import projection_service_pb2 as proj
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.users.protos.users.v1 import users_pb2 as users
from service.client import ChronicleClient
from service.plugins import AggregateDeleted
from service.store.base import StoreAdapter
from tests.support.contents import at_rest
from tests.support.grpc_client import Client, command, details_of, running_server
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres


@pytest.fixture(params=["sqlite", "postgres"])
def sql_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreAdapter:
    if request.param == "sqlite":
        from service.store.sqlite import SqliteStore

        return SqliteStore(tmp_path / "events.db")
    from service.store.postgres import PostgresStore

    return PostgresStore(request.getfixturevalue("postgres_url"), pool_size=4)


async def refused(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    details = details_of(error.value)
    return details.code, details.reason


async def subscribed_until_deleted(
    client: Client, aggregate_id: str, caught_up: asyncio.Event
) -> list[event_pb2.Event]:
    """Every event from the log's start until ``aggregate_id``'s tombstone;
    ``caught_up`` is set once the past was read."""
    seen: list[event_pb2.Event] = []
    call = client.events.Subscribe(ev.SubscribeRequest(after_position=0))
    try:
        async for response in call:
            if response.HasField("caught_up"):
                caught_up.set()
            if response.HasField("event"):
                seen.append(response.event)
                if response.event.deleted and response.event.aggregate_id == aggregate_id:
                    return seen
    finally:
        call.cancel()
    return seen


async def test_a_deleted_aggregate_is_a_tombstone_to_readers_subscribers_and_commands(sql_store: StoreAdapter) -> None:
    async with running_server(sql_store, anonymous_admin=True) as (app, client):
        deposit = command("acc-1", bank.Deposit(amount=10))
        for built in (
            command("acc-1", bank.OpenAccount(owner="ann")),
            deposit,
            command("acc-1", bank.Deposit(amount=20)),
            command("acc-2", bank.OpenAccount(owner="ann")),
            command("acc-2", bank.Deposit(amount=5)),
        ):
            await client.submit(built)
        caught_up = asyncio.Event()
        subscriber = asyncio.ensure_future(subscribed_until_deleted(client, "acc-1", caught_up))
        await asyncio.wait_for(caught_up.wait(), timeout=30)  # a live subscriber, then the deletion

        deleted = await client.admin.DeleteAggregate(
            admin.DeleteAggregateRequest(aggregate_id="acc-1", reason="the customer asked")
        )
        tombstone = deleted.tombstone
        assert (deleted.already_deleted, deleted.events_deleted) == (False, 3)
        assert (tombstone.deleted, tombstone.version, tombstone.event_type) == (
            True,
            4,
            "chronicle.v1.AggregateDeleted",
        )
        said = event_pb2.AggregateDeleted()
        assert tombstone.payload.Unpack(said)
        assert (said.reason, said.deleted_at.seconds > 0, tombstone.aggregate_type) == (
            "the customer asked",
            True,
            "Account",
        )

        # Readers: the tombstone alone, at its position.
        read = [e async for e in client.events.ReadAggregate(ev.ReadAggregateRequest(aggregate_id="acc-1"))]
        assert read == [tombstone]
        async with ChronicleClient.connect(app.address) as typed:  # the Python client says so too
            (typed_tombstone,) = await typed.read_all("acc-1")
        assert typed_tombstone.deleted and typed_tombstone.payload_as(AggregateDeleted).reason == "the customer asked"
        # Subscribers: the aggregate's events, then its tombstone, in log order.
        seen = await asyncio.wait_for(subscriber, timeout=30)
        mine = [(e.version, e.deleted) for e in seen if e.aggregate_id == "acc-1"]
        assert mine == [(1, False), (2, False), (3, False), (4, True)]
        assert [e.position for e in seen] == sorted(e.position for e in seen)

        # Commands, retries, state: refused.
        assert await refused(client.submit(command("acc-1", bank.Deposit(amount=1)))) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "AGGREGATE_DELETED",
        )
        assert (await refused(client.submit(command("acc-1", bank.OpenAccount(owner="bob")))))[1] == (
            "AGGREGATE_DELETED"
        )
        assert (await refused(client.submit(deposit)))[1] == "AGGREGATE_DELETED"
        for request in (
            ev.GetAggregateRequest(aggregate_id="acc-1"),
            ev.GetAggregateRequest(aggregate_id="acc-1", at_version=2),
        ):
            assert (await refused(client.events.GetAggregate(request)))[1] == "AGGREGATE_DELETED"

        # The read model handles deletions: acc-1 no longer counts for ann.
        async def forgotten_by_the_read_model() -> bool:
            try:
                found = await client.projections.GetDocument(
                    proj.GetDocumentRequest(projection="bank.balances_by_owner", key="owner:ann")
                )
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    return False  # the read model has not got that far yet
                raise
            holder = bank.OwnerBalance()
            found.document.Unpack(holder)
            return list(holder.account_ids) == ["acc-2"] and holder.balance == 5

        await eventually(forgotten_by_the_read_model, what="the read model forgetting acc-1")

        again = await client.admin.DeleteAggregate(admin.DeleteAggregateRequest(aggregate_id="acc-1"))
        assert (again.already_deleted, again.events_deleted, again.tombstone) == (True, 0, tombstone)
        assert await sql_store.load_snapshot("acc-1") is None


async def test_deleting_releases_claims_and_bad_requests_change_nothing(sql_store: StoreAdapter) -> None:
    async with running_server(sql_store, anonymous_admin=True) as (_, client):
        await client.submit(command("u-1", users.RegisterUser(email="ann@example.com", name="Ann")))
        before = await at_rest(sql_store)
        cases = [
            (admin.DeleteAggregateRequest(aggregate_id="nobody"), grpc.StatusCode.NOT_FOUND, "AGGREGATE_NOT_FOUND"),
            (
                admin.DeleteAggregateRequest(aggregate_id="u-1", expected_version=7),
                grpc.StatusCode.FAILED_PRECONDITION,
                "WRONG_EXPECTED_VERSION",
            ),
            (admin.DeleteAggregateRequest(aggregate_id=" "), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_AGGREGATE_ID"),
            (
                admin.DeleteAggregateRequest(aggregate_id="u-1", reason="x" * 1001),
                grpc.StatusCode.INVALID_ARGUMENT,
                "TEXT_TOO_LONG",
            ),
        ]
        for request, code, reason in cases:
            assert await refused(client.admin.DeleteAggregate(request)) == (code, reason)
        changes = (await at_rest(sql_store)).changes_since(before)
        assert set(changes) == {"refusals"} and len(changes["refusals"].added) == len(cases)  # audited, no more

        await client.admin.DeleteAggregate(admin.DeleteAggregateRequest(aggregate_id="u-1", expected_version=1))
        await client.submit(command("u-2", users.RegisterUser(email="ann@example.com", name="Another Ann")))
        audit = await client.admin.QueryAudit(admin.QueryAuditRequest(aggregate_id="u-1"))
        done = [e for e in audit.entries if e.command_type.endswith("/DeleteAggregate")]
        assert [(e.outcome, e.reason or e.message) for e in done] == [  # newest first
            (admin.AUDIT_OUTCOME_ACCEPTED, "1 events deleted"),
            (admin.AUDIT_OUTCOME_REFUSED, "TEXT_TOO_LONG"),
            (admin.AUDIT_OUTCOME_REFUSED, "WRONG_EXPECTED_VERSION"),
        ]


async def test_deleting_needs_the_admin_grant(sql_store: StoreAdapter) -> None:
    async with running_server(sql_store) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        assert await refused(client.admin.DeleteAggregate(admin.DeleteAggregateRequest(aggregate_id="acc-1"))) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "ANONYMOUS_ADMIN_DENIED",
        )
        assert len(await sql_store.read_aggregate("acc-1")) == 1


async def test_no_append_racing_a_deletion_is_lost(sql_store: StoreAdapter) -> None:
    """Deposits from several clients while the account is deleted: each one
    acknowledged is one the tombstone counts (deleted with the rest), each
    one after it is refused; none is acknowledged and then missing."""
    async with running_server(sql_store, anonymous_admin=True) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        acknowledged: list[int] = []
        refusals: list[str] = []
        started = asyncio.Event()

        async def depositor() -> None:
            while True:
                try:
                    response = await client.submit(command("acc-1", bank.Deposit(amount=1)))
                except grpc.aio.AioRpcError as error:
                    reason = details_of(error).reason
                    if reason == "AGGREGATE_DELETED":
                        refusals.append(reason)
                        return
                    if error.code() not in (grpc.StatusCode.ABORTED, grpc.StatusCode.RESOURCE_EXHAUSTED):
                        raise
                    continue
                acknowledged.append(response.version)
                if len(acknowledged) >= 20:
                    started.set()

        depositors = [asyncio.ensure_future(depositor()) for _ in range(4)]
        await asyncio.wait_for(started.wait(), timeout=30)
        deleted = await client.admin.DeleteAggregate(admin.DeleteAggregateRequest(aggregate_id="acc-1"))
        await asyncio.wait_for(asyncio.gather(*depositors), timeout=30)
        last_version = deleted.tombstone.version - 1
        assert deleted.events_deleted == last_version == max(acknowledged)
        assert sorted(acknowledged) == list(range(2, last_version + 1))
        assert len(refusals) == 4
