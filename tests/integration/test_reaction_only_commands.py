"""Commands only reactions send (``command(..., sent_by_reactions=...)``),
over a real socket with raw stubs: the bank's CompleteTransfer,
FailTransfer and RecordRefund end a transfer, and only its
``bank.transfers`` reaction may send them, after it moved the money. A
client's is refused PERMISSION_DENIED, COMMAND_INTERNAL, before the handler
runs (a transfer that is over would say TRANSFER_OVER), whatever the
client is granted and with authentication off too, through Submit,
SubmitBatch, SubmitStream, SubmitStreamPages and a dry run; each refusal
is audited as the policy's are. The reaction's own still go through: the
transfer attacked completes, with the money moved. ListTypes lists them
apart, and a grant to submit one alone shows no aggregate type. A
reaction the plugin does not name that sends one stops at that event."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import command_service_pb2 as cs
from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import reaction_service_pb2 as rx
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins import CommandContext, Plugin, ProjectedEvent, Send
from service.plugins.registry import Registry
from service.store.memory import MemoryStore
from tests.support.grpc_client import Client, command, connect, details_of, running_server, with_jwt_auth
from tests.support.security import JwtIssuer, bearer
from tests.support.waiting import eventually

DENIED = grpc.StatusCode.PERMISSION_DENIED
ENDINGS = (bank.CompleteTransfer(), bank.FailTransfer(reason="EVE"), bank.RecordRefund(reason="EVE"))
# mallory may submit and read everything, and administer: still no ending.
# ender is granted CompleteTransfer alone, which no client may send.
POLICY = """
[roles.everything]
submit = ["*"]
read = ["*"]
admin = true
impersonate = true

[roles.ender]
submit = ["bank.v1.CompleteTransfer"]

[principals."mallory"]
roles = ["everything"]

[principals."ender"]
roles = ["ender"]
"""


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[JwtIssuer, str]]:
    issuer = JwtIssuer()
    async with running_server(MemoryStore(), settings=with_jwt_auth(tmp_path, issuer, POLICY)) as (app, _):
        yield issuer, app.address


async def _refused(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    details = details_of(raised.value)
    return details.code, details.reason


async def _transfer_status(client: Client, transfer_id: str) -> tuple[int, list[str]]:
    request = ev.ReadAggregateRequest(aggregate_id=transfer_id)
    types = [event.event_type async for event in client.events.ReadAggregate(request, timeout=10)]
    status = {
        "bank.v1.TransferCompleted": bank.TRANSFER_STATUS_COMPLETED,
        "bank.v1.TransferFailed": bank.TRANSFER_STATUS_FAILED,
        "bank.v1.TransferRefunded": bank.TRANSFER_STATUS_REFUNDED,
    }
    return next((status[t] for t in types if t in status), bank.TRANSFER_STATUS_PENDING), types


async def _every_way_refused(client: Client, transfer_id: str) -> None:
    """Each ending, sent every way a client can: each refused
    COMMAND_INTERNAL, with nothing written."""
    for ending in ENDINGS:
        assert await _refused(client.submit(command(transfer_id, ending))) == (DENIED, "COMMAND_INTERNAL")
        dry = cs.SubmitRequest(command=command(transfer_id, ending), dry_run=True)
        assert await _refused(client.commands.Submit(dry, timeout=10)) == (DENIED, "COMMAND_INTERNAL")
        batch = cs.SubmitBatchRequest(commands=[command(transfer_id, ending)])
        assert await _refused(client.commands.SubmitBatch(batch, timeout=10)) == (DENIED, "COMMAND_INTERNAL")
        stream = [cs.SubmitRequest(command=command(transfer_id, ending), dry_run=dry) for dry in (False, True)]
        answers = [a async for a in client.commands.SubmitStream(iter(stream), timeout=10)]
        assert [(a.error.code, a.error.reason) for a in answers] == [(DENIED.value[0], "COMMAND_INTERNAL")] * 2
        page = cs.SubmitPage(requests=[cs.SubmitRequest(command=command(transfer_id, ending))])
        (answers,) = [p async for p in client.commands.SubmitStreamPages(iter([page]), timeout=10)]
        assert [(a.error.code, a.error.reason) for a in answers.results] == [(DENIED.value[0], "COMMAND_INTERNAL")]


async def test_no_client_ends_a_transfer_and_the_reaction_still_does(served: tuple[JwtIssuer, str]) -> None:
    issuer, address = served
    async with connect(address, interceptors=bearer(issuer.token("mallory"))) as mallory:
        for account, opening in (("acc-1", 100), ("acc-2", 0)):
            await mallory.submit(command(account, bank.OpenAccount(owner=account)))
            if opening:
                await mallory.submit(command(account, bank.Deposit(amount=opening)))
        # The request and its end in one batch: one decision, before the
        # reaction can act. Refused whole: not even the request is written.
        requested = command("t-0", bank.TransferMoney(source_account_id="acc-1", target_account_id="acc-2", amount=5))
        both = cs.SubmitBatchRequest(commands=[requested, command("t-0", bank.CompleteTransfer())])
        assert await _refused(mallory.commands.SubmitBatch(both, timeout=10)) == (DENIED, "COMMAND_INTERNAL")
        assert await _transfer_status(mallory, "t-0") == (bank.TRANSFER_STATUS_PENDING, [])

        # Ended by a client while it is under way (and once it is over: still
        # COMMAND_INTERNAL, not the handler's TRANSFER_OVER).
        await mallory.submit(
            command("t-1", bank.TransferMoney(source_account_id="acc-1", target_account_id="acc-2", amount=30))
        )
        await _every_way_refused(mallory, "t-1")

        async def over() -> bool:
            return (await _transfer_status(mallory, "t-1"))[0] != bank.TRANSFER_STATUS_PENDING

        # The reaction's own CompleteTransfer went through: the money moved.
        await eventually(over, what="the transfer ends")
        assert await _transfer_status(mallory, "t-1") == (
            bank.TRANSFER_STATUS_COMPLETED,
            ["bank.v1.TransferRequested", "bank.v1.TransferCompleted"],
        )
        await _every_way_refused(mallory, "t-1")
        for account, balance in (("acc-1", 70), ("acc-2", 30)):
            got = await mallory.events.GetAggregate(ev.GetAggregateRequest(aggregate_id=account), timeout=10)
            state = bank.Account()
            assert got.state.Unpack(state) and state.balance == balance

        # Audited as a policy's refusal is: per command refused (the batch's
        # two, a dry run's own entry), each with the principal and reason.
        entries = (await mallory.admin.QueryAudit(admin.QueryAuditRequest(limit=1000), timeout=10)).entries
        internal = [e for e in entries if e.reason == "COMMAND_INTERNAL"]
        ending_types = {f"bank.v1.{type(e).__name__}" for e in ENDINGS}
        assert {e.command_type for e in internal} == ending_types | {"bank.v1.TransferMoney"}
        assert {e.principal for e in internal} == {"mallory"}
        # Per ending and attack round: Submit, the dry run, SubmitBatch, the
        # stream's (its dry run and its command), the page's: 6; 2 rounds.
        assert len([e for e in internal if e.command_type in ending_types]) == 1 + 2 * 6 * len(ENDINGS)


async def test_list_types_lists_reaction_only_commands_apart(served: tuple[JwtIssuer, str]) -> None:
    issuer, address = served
    async with (
        connect(address, interceptors=bearer(issuer.token("mallory"))) as mallory,
        connect(address, interceptors=bearer(issuer.token("ender"))) as ender,
    ):
        listed = {
            t.name: t for t in (await mallory.commands.ListTypes(cs.ListTypesRequest(), timeout=10)).aggregate_types
        }
        transfer = listed["Transfer"]
        assert list(transfer.command_types) == ["bank.v1.TransferMoney"]
        assert list(transfer.reaction_command_types) == [
            "bank.v1.CompleteTransfer",
            "bank.v1.FailTransfer",
            "bank.v1.RecordRefund",
        ]
        assert list(listed["Account"].reaction_command_types) == []
        # A grant to submit what no client may send gives sight of nothing.
        assert list((await ender.commands.ListTypes(cs.ListTypesRequest(), timeout=10)).aggregate_types) == []


async def test_with_authentication_off_an_anonymous_client_is_refused_too() -> None:
    async with running_server(MemoryStore()) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        await client.submit(command("acc-1", bank.Deposit(amount=10)))
        await client.submit(command("acc-2", bank.OpenAccount(owner="bob")))
        await client.submit(
            command("t-1", bank.TransferMoney(source_account_id="acc-1", target_account_id="acc-2", amount=10))
        )
        await _every_way_refused(client, "t-1")

        async def over() -> bool:
            return (await _transfer_status(client, "t-1"))[0] != bank.TRANSFER_STATUS_PENDING

        await eventually(over, what="the transfer ends")
        assert await _transfer_status(client, "t-1") == (
            bank.TRANSFER_STATUS_COMPLETED,
            ["bank.v1.TransferRequested", "bank.v1.TransferCompleted"],
        )


def _opened(command: bank.OpenAccount, state: bank.Account, context: CommandContext) -> bank.AccountOpened:
    return bank.AccountOpened(owner=command.owner)


def _closed(command: bank.CloseAccount, state: bank.Account, context: CommandContext) -> bank.AccountClosed:
    return bank.AccountClosed()


def _closing_ledgers() -> Plugin:
    """Ledgers only the ``closer`` reaction closes; ``intruder`` tries too,
    each closing the ledger whose owner is its name."""
    plugin = Plugin("acme")
    ledgers = plugin.aggregate("Ledger", state=bank.Account)
    ledgers.command(bank.OpenAccount, creates=True)(_opened)
    ledgers.command(bank.CloseAccount, requires_existing=True, sent_by_reactions=["closer"])(_closed)
    ledgers.apply(bank.AccountOpened)(lambda state, event: None)
    ledgers.apply(bank.AccountClosed)(lambda state, event: None)
    for name in ("closer", "intruder"):

        def close(event: bank.AccountOpened, envelope: ProjectedEvent, state: None, name: str = name) -> Send | None:
            return Send(envelope.aggregate_id, bank.CloseAccount()) if event.owner == name else None

        plugin.reaction(name, aggregate_types=["Ledger"]).on(bank.AccountOpened)(close)
    return plugin


async def test_a_reaction_the_plugin_does_not_name_stops_at_the_event() -> None:
    async with running_server(MemoryStore(), registry=Registry([_closing_ledgers()])) as (_, client):
        await client.submit(command("l-1", bank.OpenAccount(owner="closer")))
        await client.submit(command("l-2", bank.OpenAccount(owner="intruder")))

        async def types_of(ledger: str) -> list[str]:
            request = ev.ReadAggregateRequest(aggregate_id=ledger)
            return [e.event_type async for e in client.events.ReadAggregate(request, timeout=10)]

        async def both_done() -> bool:
            status = await client.reactions.GetReaction(rx.GetReactionRequest(name="intruder"), timeout=10)
            return bool(status.error) and len(await types_of("l-1")) == 2

        await eventually(both_done, what="the closer closes l-1, the intruder stops")
        status = await client.reactions.GetReaction(rx.GetReactionRequest(name="intruder"), timeout=10)
        assert "reaction:intruder may not send bank.v1.CloseAccount" in status.error
        assert await types_of("l-1") == ["bank.v1.AccountOpened", "bank.v1.AccountClosed"]
        assert await types_of("l-2") == ["bank.v1.AccountOpened"]
