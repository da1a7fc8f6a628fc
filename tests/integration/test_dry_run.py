"""Dry runs over a real socket on every store: the decision a real
submission would get, and nothing written but the audit entry."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from chronicle.v1 import command_pb2, command_service_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.users import EMAIL_SCOPE
from domain_plugins.users.protos.users.v1 import users_pb2 as users
from service.store.base import StoreAdapter
from tests.support.contents import at_rest, audited_dry_runs_only
from tests.support.grpc_client import Client, ErrorDetails, command, details_of, running_server


@pytest.fixture
async def client(store: StoreAdapter) -> AsyncIterator[Client]:
    async with running_server(store) as (_, connected):
        yield connected


async def dry_run(client: Client, sent: command_pb2.Command) -> command_service_pb2.SubmitResponse:
    request = command_service_pb2.SubmitRequest(command=sent, dry_run=True)
    response: command_service_pb2.SubmitResponse = await client.commands.Submit(request, timeout=30)
    return response


async def dry_run_refusal(client: Client, sent: command_pb2.Command) -> ErrorDetails:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await dry_run(client, sent)
    return details_of(raised.value)


async def test_a_dry_run_returns_the_events_and_appends_nothing(client: Client, store: StoreAdapter) -> None:
    await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    before = await at_rest(store)
    sent = command("acc-1", bank.Deposit(amount=5))
    response = await dry_run(client, sent)
    (event,) = response.events
    deposited = bank.MoneyDeposited()
    assert event.payload.Unpack(deposited) and deposited.amount == 5
    assert (event.version, event.position, response.version, response.replayed) == (2, 0, 2, False)
    await audited_dry_runs_only(store, before, "accepted")


async def test_the_command_can_be_submitted_for_real_after_its_dry_run(client: Client) -> None:
    sent = command("acc-1", bank.OpenAccount(owner="ann"))
    await dry_run(client, sent)
    response = await client.submit(sent)
    assert (response.version, response.replayed) == (1, False)


async def test_a_dry_run_refusal_is_the_real_one_and_is_not_recorded(client: Client, store: StoreAdapter) -> None:
    await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    before = await at_rest(store)
    withdraw = command("acc-1", bank.Withdraw(amount=5))
    details = await dry_run_refusal(client, withdraw)
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
    await audited_dry_runs_only(store, before, "refused")
    await client.submit(command("acc-1", bank.Deposit(amount=5)))
    assert (await client.submit(withdraw)).version == 3  # not refused again: the dry run recorded nothing


async def test_a_dry_run_of_a_processed_command_id_returns_the_original_result(client: Client) -> None:
    sent = command("acc-1", bank.OpenAccount(owner="ann"))
    original = await client.submit(sent)
    response = await dry_run(client, sent)
    assert response.replayed
    assert [e.event_id for e in response.events] == [e.event_id for e in original.events]


async def test_a_dry_run_takes_no_claim_but_reports_a_taken_value(client: Client, store: StoreAdapter) -> None:
    register = command("user-1", users.RegisterUser(email="ann@example.com", name="Ann"))
    before = await at_rest(store)
    assert (await dry_run(client, register)).version == 1
    await audited_dry_runs_only(store, before, "accepted")
    assert await store.claim_owner(EMAIL_SCOPE, "ann@example.com") is None
    await client.submit(command("user-2", users.RegisterUser(email="ann@example.com", name="Ann")))
    details = await dry_run_refusal(client, register)
    assert (details.reason, details.metadata["scope"]) == ("NOT_UNIQUE", EMAIL_SCOPE)


async def test_a_dry_run_sees_what_another_replica_wrote(store: StoreAdapter) -> None:
    async with running_server(store) as (_, first), running_server(store) as (_, second):
        await first.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        await first.submit(command("acc-1", bank.Deposit(amount=1)))  # first caches version 2
        await second.submit(command("acc-1", bank.Deposit(amount=10)))  # second moves it to 3
        response = await dry_run(first, command("acc-1", bank.Withdraw(amount=11)))
        assert response.version == 4


async def test_a_dry_run_batch_returns_every_result_and_appends_nothing(client: Client, store: StoreAdapter) -> None:
    request = command_service_pb2.SubmitBatchRequest(
        commands=[command("acc-1", bank.OpenAccount(owner="ann")), command("acc-1", bank.Deposit(amount=3))],
        dry_run=True,
    )
    before = await at_rest(store)
    response = await client.commands.SubmitBatch(request, timeout=30)
    assert [r.version for r in response.results] == [1, 2]
    await audited_dry_runs_only(store, before, "accepted", "accepted")
