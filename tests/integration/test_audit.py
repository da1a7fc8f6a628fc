"""The audit log over a real socket, on every store: accepted commands and
refusals at every stage, read back through AdminService.QueryAudit."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import command_service_pb2 as cs
from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import projection_service_pb2 as pj
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.store.base import StoreAdapter
from tests.support.grpc_client import Client, command, connect, details_of, running_server, with_jwt_auth
from tests.support.security import JwtIssuer, bearer
from tests.support.waiting import eventually


@dataclass
class Audited:
    app: Application
    issuer: JwtIssuer

    def as_(self, subject: str) -> AbstractAsyncContextManager[Client]:
        return connect(self.app.address, interceptors=bearer(self.issuer.token(subject)))

    async def entries(self, **fields: object) -> list[admin.AuditEntry]:
        async with self.as_("root") as root:
            response = await root.admin.QueryAudit(admin.QueryAuditRequest(**fields))  # type: ignore[arg-type]
        return list(response.entries)


@pytest.fixture
async def audited(store: StoreAdapter, tmp_path: Path) -> AsyncIterator[Audited]:
    issuer = JwtIssuer()
    async with running_server(
        store,
        settings=with_jwt_auth(tmp_path, issuer),
    ) as (app, _):
        yield Audited(app, issuer)


async def attempt(client: Client, sent: object) -> None:
    with contextlib.suppress(grpc.aio.AioRpcError):
        await client.submit(sent)  # type: ignore[arg-type]


async def test_an_accepted_command_is_audited_with_its_principal(audited: Audited) -> None:
    sent = command("acc-1", bank.OpenAccount(owner="ann"), user_id="", origin="web")
    async with audited.as_("alice") as alice:
        await alice.submit(sent)
    (entry,) = await audited.entries()
    assert entry.outcome == admin.AUDIT_OUTCOME_ACCEPTED
    assert (entry.command_id, entry.command_type, entry.aggregate_id) == (
        sent.command_id,
        "bank.v1.OpenAccount",
        "acc-1",
    )
    assert (entry.principal, entry.user_id, entry.origin) == ("alice", "alice", "web")
    assert entry.time.seconds > 0


async def test_a_refusal_by_a_handler_is_audited_once_with_its_reason(audited: Audited) -> None:
    refused = command("acc-1", bank.Withdraw(amount=5), user_id="")
    async with audited.as_("alice") as alice:
        await alice.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id=""))
        await attempt(alice, refused)
        await attempt(alice, refused)  # a retry replays the refusal; it is not a new entry
    (entry,) = await audited.entries(command_id=refused.command_id)
    assert (entry.outcome, entry.reason, entry.principal) == (
        admin.AUDIT_OUTCOME_REFUSED,
        "INSUFFICIENT_FUNDS",
        "alice",
    )


async def test_a_refusal_by_the_policy_is_audited(audited: Audited) -> None:
    refused = command("acc-1", bank.OpenAccount(owner="bob"), user_id="")
    async with audited.as_("bob") as bob:
        await attempt(bob, refused)
    (entry,) = await audited.entries(outcome=admin.AUDIT_OUTCOME_REFUSED)
    assert (entry.command_id, entry.command_type, entry.aggregate_id) == (
        refused.command_id,
        "bank.v1.OpenAccount",
        "acc-1",
    )
    assert (entry.principal, entry.reason) == ("bob", "SUBMIT_DENIED")


async def test_a_command_without_credentials_is_audited(audited: Audited) -> None:
    refused = command("acc-1", bank.OpenAccount(owner="ann"))
    async with connect(audited.app.address) as anonymous:
        await attempt(anonymous, refused)
    (entry,) = await audited.entries()
    assert (entry.command_id, entry.principal, entry.reason) == (refused.command_id, "", "NO_CREDENTIALS")
    assert entry.outcome == admin.AUDIT_OUTCOME_REFUSED


async def test_a_malformed_command_is_audited(audited: Audited) -> None:
    refused = command("acc-1", bank.OpenAccount(owner="ann"), user_id="")
    refused.payload.CopyFrom(any_pb2.Any(type_url="type.googleapis.com/nobody.v1.Knows", value=b""))
    async with audited.as_("alice") as alice:
        await attempt(alice, refused)
    (entry,) = await audited.entries()
    assert (entry.command_type, entry.principal, entry.reason) == ("nobody.v1.Knows", "alice", "UNKNOWN_COMMAND_TYPE")


async def test_a_command_refused_as_it_is_decoded_names_its_user_as_a_refusal_in_the_pipeline_does(
    audited: Audited,
) -> None:
    """A command that names no user acts as its principal: the entry of one
    refused for its id (not a UUID) or its type (none registered) names
    that user, as the entry of one the handler refused does; on each
    command RPC. (They had no user id.)"""
    unknown_type = command("acc-1", bank.Deposit(amount=1), user_id="")
    unknown_type.payload.CopyFrom(any_pb2.Any(type_url="type.googleapis.com/nobody.v1.Knows", value=b""))
    refused = {
        "submit": command("acc-1", bank.Deposit(amount=1), user_id="", command_id="fixed-cmd-1"),
        "batch": command("acc-1", bank.Deposit(amount=1), user_id="", command_id="fixed-cmd-2"),
        "stream": command("acc-1", bank.Deposit(amount=1), user_id="", command_id="fixed-cmd-3"),
        "pages": command("acc-1", bank.Deposit(amount=1), user_id="", command_id="fixed-cmd-4"),
    }
    in_pipeline = command("acc-1", bank.Withdraw(amount=10**6), user_id="")
    async with audited.as_("alice") as alice:
        await alice.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id=""))
        await attempt(alice, in_pipeline)  # INSUFFICIENT_FUNDS, recorded with the command
        await attempt(alice, refused["submit"])
        await attempt(alice, unknown_type)
        with pytest.raises(grpc.aio.AioRpcError):
            await alice.commands.SubmitBatch(cs.SubmitBatchRequest(commands=[refused["batch"]]))
        async for _ in alice.commands.SubmitStream(iter([cs.SubmitRequest(command=refused["stream"])])):
            pass
        page = cs.SubmitPage(requests=[cs.SubmitRequest(command=refused["pages"])])
        async for _ in alice.commands.SubmitStreamPages(iter([page])):
            pass
    entries = await audited.entries(outcome=admin.AUDIT_OUTCOME_REFUSED)
    assert sorted((e.reason, e.principal, e.user_id) for e in entries) == sorted(
        [("INSUFFICIENT_FUNDS", "alice", "alice"), ("UNKNOWN_COMMAND_TYPE", "alice", "alice")]
        + [("INVALID_COMMAND_ID", "alice", "alice")] * 4
    )


async def test_a_user_the_refused_command_names_is_recorded_beside_its_principal(audited: Audited) -> None:
    claimed = command("acc-1", bank.Deposit(amount=1), user_id="carol", command_id="not-a-uuid")
    async with audited.as_("gateway") as gateway:
        await attempt(gateway, claimed)
    (entry,) = await audited.entries()
    assert (entry.reason, entry.principal, entry.user_id) == ("INVALID_COMMAND_ID", "gateway", "carol")


async def test_a_command_refused_for_a_nul_in_its_aggregate_id_is_audited_on_every_store(audited: Audited) -> None:
    # PostgreSQL's text columns refuse NUL: the entry keeps the id with the
    # NUL replaced, rather than being lost.
    async with audited.as_("alice") as alice:
        await attempt(alice, command("acc\x001", bank.OpenAccount(owner="ann"), user_id=""))
    (entry,) = await audited.entries()
    assert (entry.aggregate_id, entry.reason) == ("acc\N{REPLACEMENT CHARACTER}1", "INVALID_AGGREGATE_ID")


async def test_submit_and_submit_batch_attach_and_audit_the_principal_alike(audited: Audited) -> None:
    single = command("acc-1", bank.OpenAccount(owner="ann"), user_id="")
    batched = [command("acc-2", bank.OpenAccount(owner="ann"), user_id=""), command("acc-2", bank.Deposit(amount=5))]
    batched[1].user_id = ""
    async with audited.as_("alice") as alice:
        await alice.submit(single)
        await alice.commands.SubmitBatch(cs.SubmitBatchRequest(commands=batched))
        read = [event async for event in alice.events.ReadAggregate(ev.ReadAggregateRequest(aggregate_id="acc-2"))]
    # the events of a batch are the caller's, as a single command's are
    assert [event.user_id for event in read] == ["alice", "alice"]
    entries = await audited.entries(outcome=admin.AUDIT_OUTCOME_ACCEPTED)
    assert sorted((e.command_id, e.principal, e.user_id) for e in entries) == sorted(
        (c.command_id, "alice", "alice") for c in [single, *batched]
    )


async def test_a_malformed_batch_is_audited_once_per_command_as_its_sender(audited: Audited) -> None:
    good = command("acc-3", bank.OpenAccount(owner="ann"), user_id="")
    unknown = command("acc-3", bank.Deposit(amount=1), user_id="")
    unknown.payload.CopyFrom(any_pb2.Any(type_url="type.googleapis.com/nobody.v1.Knows", value=b""))
    async with audited.as_("alice") as alice:
        with pytest.raises(grpc.aio.AioRpcError):
            await alice.commands.SubmitBatch(cs.SubmitBatchRequest(commands=[good, unknown]))
    entries = await audited.entries(outcome=admin.AUDIT_OUTCOME_REFUSED)
    assert sorted((e.command_id, e.principal, e.reason) for e in entries) == sorted(
        (c.command_id, "alice", "UNKNOWN_COMMAND_TYPE") for c in (good, unknown)
    )


async def test_the_audit_log_filters_by_principal_and_aggregate(audited: Audited) -> None:
    async with audited.as_("alice") as alice:
        await alice.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id=""))
        await alice.submit(command("acc-2", bank.OpenAccount(owner="ann"), user_id=""))
    async with audited.as_("bob") as bob:
        await attempt(bob, command("acc-1", bank.Deposit(amount=1), user_id=""))
    assert [e.principal for e in await audited.entries(aggregate_id="acc-1")] == ["bob", "alice"]
    assert [e.aggregate_id for e in await audited.entries(principal="alice")] == ["acc-2", "acc-1"]
    assert len(await audited.entries(limit=1)) == 1


async def test_the_audit_log_filters_by_command_type_or_administrators_action(audited: Audited) -> None:
    async with audited.as_("alice") as alice:
        await alice.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id=""))
        await alice.submit(command("acc-1", bank.Deposit(amount=1), user_id=""))
        with pytest.raises(grpc.aio.AioRpcError):  # alice administers nothing: an action refused
            await alice.admin.QueryAudit(admin.QueryAuditRequest())
    deposits = await audited.entries(command_type="bank.v1.Deposit")
    refused_reads = await audited.entries(command_type="chronicle.v1.AdminService/QueryAudit")
    assert [(e.command_type, e.principal) for e in deposits] == [("bank.v1.Deposit", "alice")]
    assert [(e.principal, e.reason) for e in refused_reads] == [("alice", "ADMIN_DENIED")]
    assert await audited.entries(command_type="bank.v1.Withdraw") == []
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await audited.entries(command_type="bank.v1.\x01Deposit")
    details = details_of(refused.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FILTER")


async def test_a_command_record_keeps_when_the_command_was_issued(audited: Audited) -> None:
    stamped = command("acc-1", bank.OpenAccount(owner="ann"), user_id="")
    stamped.timestamp.FromMicroseconds(1_767_225_600_123_456)  # the client's clock: 2026-01-01
    unstamped = command("acc-1", bank.Deposit(amount=5), user_id="")
    async with audited.as_("alice") as alice:
        await alice.submit(stamped)
        before = time.time_ns() // 1000
        await alice.submit(unstamped)
        after = time.time_ns() // 1000
    entries = {e.command_id: e for e in await audited.entries()}
    assert entries[stamped.command_id].issued_at.ToMicroseconds() == 1_767_225_600_123_456
    # Without one, the server's receipt.
    assert before <= entries[unstamped.command_id].issued_at.ToMicroseconds() <= after


# -- every RPC, with the caller's address; floods sampled -------------------------


async def test_failed_authentication_on_every_rpc_is_audited_with_the_callers_address(audited: Audited) -> None:
    async with connect(audited.app.address) as anonymous:
        calls = [
            anonymous.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="acc-9")),
            anonymous.events.ReadAggregate(ev.ReadAggregateRequest(aggregate_id="acc-9")).read(),
            anonymous.events.Subscribe(ev.SubscribeRequest()).read(),
            anonymous.admin.QueryAudit(admin.QueryAuditRequest()),
            anonymous.projections.GetDocument(pj.GetDocumentRequest(projection="bank.balances_by_owner", key="k")),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # A user id the caller claims is not its identity: it is not recorded.
        await attempt(anonymous, command("acc-1", bank.OpenAccount(owner="ann"), user_id="root"))
    entries = await audited.entries()
    assert sorted(e.command_type for e in entries) == [
        "bank.v1.OpenAccount",
        "chronicle.v1.AdminService/QueryAudit",
        "chronicle.v1.EventService/GetAggregate",
        "chronicle.v1.EventService/ReadAggregate",
        "chronicle.v1.EventService/Subscribe",
        "chronicle.v1.ProjectionService/GetDocument",
    ]
    assert {(e.reason, e.principal, e.user_id, e.outcome) for e in entries} == {
        ("NO_CREDENTIALS", "", "", admin.AUDIT_OUTCOME_REFUSED)
    }
    assert {e.aggregate_id for e in entries if "Aggregate" in e.command_type} == {"acc-9"}
    assert all(e.peer.startswith("ipv4:127.0.0.1:") for e in entries), [e.peer for e in entries]


async def test_denied_reads_and_subscriptions_are_audited_with_the_callers_address(audited: Audited) -> None:
    async with audited.as_("alice") as alice:
        await alice.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id=""))
        subscribe = alice.events.Subscribe(ev.SubscribeRequest(aggregate_types=["Box"]))
        with pytest.raises(grpc.aio.AioRpcError):
            await subscribe.read()
    async with audited.as_("bob") as bob:
        with pytest.raises(grpc.aio.AioRpcError):
            await bob.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="acc-1"))
        with pytest.raises(grpc.aio.AioRpcError):
            await bob.projections.GetDocument(pj.GetDocumentRequest(projection="bank.balances_by_owner", key="k"))
    denied = await audited.entries(outcome=admin.AUDIT_OUTCOME_REFUSED)
    assert sorted((e.principal, e.command_type, e.reason, e.aggregate_id) for e in denied) == [
        ("alice", "chronicle.v1.EventService/Subscribe", "SUBSCRIBE_DENIED", ""),
        ("bob", "chronicle.v1.EventService/GetAggregate", "READ_DENIED", "acc-1"),
        ("bob", "chronicle.v1.ProjectionService/GetDocument", "READ_DENIED", ""),
    ]
    assert all(e.peer.startswith("ipv4:127.0.0.1:") for e in denied)


async def test_an_unauthenticated_flood_is_sampled_into_entries_that_count_it(audited: Audited) -> None:
    flood = 400
    async with connect(audited.app.address) as anonymous:
        for _ in range(flood // 50):
            calls = [anonymous.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="x")) for _ in range(50)]
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            assert all(isinstance(o, grpc.aio.AioRpcError) for o in outcomes)

    async def counted() -> list[admin.AuditEntry]:
        return await audited.entries(limit=1000)

    await eventually(lambda: _occurrences(counted()), what="the sampled refusals' count recorded")
    entries = await counted()
    assert sum(e.occurrences for e in entries) == flood
    # 50 at once, then 10 a second, and one entry a second for the rest.
    assert len(entries) < flood // 4
    assert max(e.occurrences for e in entries) > 1


async def _occurrences(entries: Awaitable[list[admin.AuditEntry]]) -> bool:
    return sum(e.occurrences for e in await entries) >= 400


# -- a reaction's commands: the server's own, on the event's user's behalf -----------

PAYERS = """
[roles.payer]
submit = ["bank.v1.OpenAccount", "bank.v1.Deposit", "bank.v1.TransferMoney"]
read = ["Account", "Transfer"]

[roles.operator]
read = ["*"]
admin = true

[principals."carol"]
roles = ["payer"]

[principals."root"]
roles = ["operator"]
"""


async def test_a_reactions_commands_pass_the_policy_as_the_servers_own_and_are_audited_as_such(
    store: StoreAdapter, tmp_path: Path
) -> None:
    issuer = JwtIssuer()
    async with running_server(
        store,
        settings=with_jwt_auth(tmp_path, issuer, PAYERS),
        poll_seconds=0.05,
    ) as (app, _):
        audited = Audited(app, issuer)
        async with audited.as_("carol") as carol:
            for account in ("acc-a", "acc-b"):
                await carol.submit(command(account, bank.OpenAccount(owner="carol"), user_id=""))
            await carol.submit(command("acc-a", bank.Deposit(amount=50), user_id=""))
            # Carol may not withdraw: the policy says so to her.
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await carol.submit(command("acc-a", bank.Withdraw(amount=1), user_id=""))
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            transfer = bank.TransferMoney(source_account_id="acc-a", target_account_id="acc-b", amount=20)
            await carol.submit(command("t-1", transfer, user_id=""))

            async def completed() -> bool:
                response = await carol.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="t-1"))
                state = bank.Transfer()
                response.state.Unpack(state)
                return bool(state.status == bank.TRANSFER_STATUS_COMPLETED)

            await eventually(completed, what="the transfer completed")
        # The reaction's debit is a Withdraw, which the policy denies carol:
        # the reaction is part of the server, acting on her behalf.
        sent = [e for e in await audited.entries() if e.principal == "reaction:bank.transfers"]
        assert sorted((e.command_type, e.aggregate_id, e.outcome) for e in sent) == [
            ("bank.v1.CompleteTransfer", "t-1", admin.AUDIT_OUTCOME_ACCEPTED),
            ("bank.v1.Deposit", "acc-b", admin.AUDIT_OUTCOME_ACCEPTED),
            ("bank.v1.Withdraw", "acc-a", admin.AUDIT_OUTCOME_ACCEPTED),
        ]
        assert {(e.user_id, e.origin) for e in sent} == {("carol", "reaction:bank.transfers")}
