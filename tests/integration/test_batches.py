"""SubmitBatch over a real socket on every store: all or nothing, idempotent
as a whole, and clear refusals of malformed batches."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from chronicle.v1 import command_pb2, command_service_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2
from domain_plugins.users import EMAIL_SCOPE
from domain_plugins.users.protos.users.v1 import users_pb2 as users
from service.store.base import StoreAdapter
from tests.support.contents import EVENT_TABLES, at_rest
from tests.support.grpc_client import Client, ErrorDetails, command, details_of, running_server


@pytest.fixture
async def client(store: StoreAdapter) -> AsyncIterator[Client]:
    async with running_server(store) as (_, connected):
        yield connected


async def submit_batch(
    client: Client, *commands: command_pb2.Command, dry_run: bool = False
) -> command_service_pb2.SubmitBatchResponse:
    request = command_service_pb2.SubmitBatchRequest(commands=commands, dry_run=dry_run)
    response: command_service_pb2.SubmitBatchResponse = await client.commands.SubmitBatch(request, timeout=30)
    return response


async def refusal(client: Client, *commands: command_pb2.Command) -> ErrorDetails:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await submit_batch(client, *commands)
    return details_of(raised.value)


def open_and_deposit(aggregate_id: str = "acc-1") -> list[command_pb2.Command]:
    return [
        command(aggregate_id, bank.OpenAccount(owner="ann")),
        command(aggregate_id, bank.Deposit(amount=30)),
        command(aggregate_id, bank.Withdraw(amount=10)),
    ]


async def test_a_batch_appends_every_command_in_order(client: Client, store: StoreAdapter) -> None:
    sent = open_and_deposit()
    response = await submit_batch(client, *sent)
    assert response.version == 3 and not response.replayed
    assert [r.version for r in response.results] == [1, 2, 3]
    assert [[e.command_id for e in r.events] for r in response.results] == [[c.command_id] for c in sent]
    assert [e.version for e in await store.read_aggregate("acc-1")] == [1, 2, 3]


async def test_each_command_sees_the_state_the_ones_before_left(client: Client) -> None:
    response = await submit_batch(client, *open_and_deposit())  # withdrawing 10 needs the deposit of 30
    assert response.results[2].events[0].event_type == "bank.v1.MoneyWithdrawn"


async def test_one_refused_command_refuses_the_batch_and_nothing_is_appended(
    client: Client, store: StoreAdapter
) -> None:
    opened, deposit, _ = open_and_deposit()
    overdraw = command("acc-1", bank.Withdraw(amount=31))
    before = await at_rest(store)
    details = await refusal(client, opened, deposit, overdraw)
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
    assert (details.metadata["batch_index"], details.metadata["command_id"]) == ("2", overdraw.command_id)
    changes = (await at_rest(store)).changes_since(before)
    assert list(changes) == ["commands"]  # the batch's refusal, recorded for its retries; no event
    assert len(changes["commands"].added) == 3


async def test_a_refused_batch_of_one_names_its_command_too(client: Client) -> None:
    """SubmitBatch's contract names the refused command in every batch; a
    batch of one got only the handler's metadata, like a Submit."""
    overdraw = command("acc-9", bank.Withdraw(amount=5))
    details = await refusal(client, overdraw)
    assert details.reason == "ACCOUNT_NOT_FOUND" or details.reason.endswith("NOT_FOUND")
    assert (details.metadata["batch_index"], details.metadata["command_id"]) == ("0", overdraw.command_id)
    await submit_batch(client, command("acc-9", bank.OpenAccount(owner="ann")))
    details = await refusal(client, overdraw_again := command("acc-9", bank.Withdraw(amount=5)))
    assert details.reason == "INSUFFICIENT_FUNDS"
    assert (details.metadata["batch_index"], details.metadata["command_id"]) == ("0", overdraw_again.command_id)


async def test_a_retried_batch_returns_the_original_results(client: Client, store: StoreAdapter) -> None:
    sent = open_and_deposit()
    first = await submit_batch(client, *sent)
    again = await submit_batch(client, *sent)
    assert again.replayed and again.version == first.version == 3
    assert [[e.event_id for e in r.events] for r in again.results] == [
        [e.event_id for e in r.events] for r in first.results
    ]
    assert len(await store.read_aggregate("acc-1")) == 3


async def test_one_command_of_a_batch_retried_alone_returns_its_result(client: Client) -> None:
    sent = open_and_deposit()
    await submit_batch(client, *sent)
    response = await client.submit(sent[1])
    assert response.replayed and response.version == 2


async def test_a_retried_refused_batch_is_refused_alike(client: Client) -> None:
    sent = [command("acc-1", bank.OpenAccount(owner="ann")), command("acc-1", bank.Withdraw(amount=5))]
    first = await refusal(client, *sent)
    await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))  # the batch would now fail otherwise
    again = await refusal(client, *sent)
    assert (first.reason, again.reason) == ("INSUFFICIENT_FUNDS", "INSUFFICIENT_FUNDS")
    assert again.metadata["batch_index"] == "1"


async def test_a_batch_mixing_processed_and_new_command_ids_is_command_id_reused(
    client: Client, store: StoreAdapter
) -> None:
    opened, deposit, withdraw = open_and_deposit()
    await client.submit(opened)
    details = await refusal(client, opened, deposit, withdraw)
    assert (details.code, details.reason) == (grpc.StatusCode.ALREADY_EXISTS, "COMMAND_ID_REUSED")
    assert len(await store.read_aggregate("acc-1")) == 1


async def test_a_batch_losing_a_claim_takes_no_claim_and_appends_nothing(client: Client, store: StoreAdapter) -> None:
    await client.submit(command("user-1", users.RegisterUser(email="bob@example.com", name="Bob")))
    before = await at_rest(store)
    details = await refusal(
        client,
        command("user-2", users.RegisterUser(email="ann@example.com", name="Ann")),
        command("user-2", users.ChangeEmail(email="bob@example.com")),
    )
    assert (details.reason, details.metadata["scope"], details.metadata["batch_index"]) == (
        "NOT_UNIQUE",
        EMAIL_SCOPE,
        "1",
    )
    changes = (await at_rest(store)).changes_since(before)
    assert not {"claims", *EVENT_TABLES} & set(changes), changes
    assert await store.claim_owner(EMAIL_SCOPE, "ann@example.com") is None


async def test_a_value_claimed_and_released_within_a_batch_ends_released(client: Client, store: StoreAdapter) -> None:
    await submit_batch(
        client,
        command("user-1", users.RegisterUser(email="ann@example.com", name="Ann")),
        command("user-1", users.ChangeEmail(email="ann@new.example")),
    )
    assert await store.claim_owner(EMAIL_SCOPE, "ann@example.com") is None
    assert await store.claim_owner(EMAIL_SCOPE, "ann@new.example") == "user-1"


def _bad_batches() -> dict[str, tuple[list[command_pb2.Command], str, str]]:
    opened = command("acc-1", bank.OpenAccount(owner="ann"))
    return {
        "empty": ([], "EMPTY_BATCH", "commands"),
        "too large": ([command("acc-1", bank.Deposit(amount=1)) for _ in range(101)], "BATCH_TOO_LARGE", "commands"),
        "two aggregates": (
            [opened, command("acc-2", bank.Deposit(amount=1))],
            "MIXED_AGGREGATES",
            "commands[1].aggregate_id",
        ),
        "two aggregate types": (
            [opened, command("acc-1", box_pb2.CreateBox(name="x"))],
            "MIXED_AGGREGATE_TYPES",
            "commands[1].payload",
        ),
        "one command id twice": (
            [opened, command("acc-1", bank.Deposit(amount=1), command_id=opened.command_id.upper())],
            "DUPLICATE_COMMAND_ID",
            "commands[1].command_id",
        ),
        "one malformed command": (
            [opened, command("acc-1", bank.Deposit(amount=1), command_id="not-a-uuid")],
            "INVALID_COMMAND_ID",
            "commands[1].command_id",
        ),
    }


@pytest.mark.parametrize("case", sorted(_bad_batches()))
async def test_malformed_batches_are_invalid_argument_and_write_nothing(
    client: Client, store: StoreAdapter, case: str
) -> None:
    commands, reason, field = _bad_batches()[case]
    before = await at_rest(store)
    details = await refusal(client, *commands)
    assert (details.code, details.reason, details.field_violations) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        reason,
        [field],
    )
    changes = (await at_rest(store)).changes_since(before)
    assert list(changes) == ["refusals"]  # the audit entry of the refusal, nothing else
    assert all(reason in entry for entry in changes["refusals"].added)


async def test_expected_versions_in_a_batch_count_the_commands_before(client: Client) -> None:
    opened = command("acc-1", bank.OpenAccount(owner="ann"), expected_version=0)
    deposit = command("acc-1", bank.Deposit(amount=3), expected_version=1)
    assert (await submit_batch(client, opened, deposit)).version == 2
    stale = command("acc-1", bank.Deposit(amount=3), expected_version=2)
    details = await refusal(client, command("acc-1", bank.Deposit(amount=1)), stale)
    assert (details.reason, details.metadata["current_version"], details.metadata["batch_index"]) == (
        "WRONG_EXPECTED_VERSION",
        "3",
        "1",
    )


async def test_a_command_that_changes_nothing_has_its_place_in_the_batch(client: Client, store: StoreAdapter) -> None:
    created = command("box-1", box_pb2.CreateBox(name="tools"))
    same_name = command("box-1", box_pb2.RenameBox(name="tools"))
    archived = command("box-1", box_pb2.ArchiveBox())
    response = await submit_batch(client, created, same_name, archived)
    assert [(len(r.events), r.version) for r in response.results] == [(1, 1), (0, 1), (1, 2)]
    again = await submit_batch(client, created, same_name, archived)
    assert again.replayed and [(len(r.events), r.version) for r in again.results] == [(1, 1), (0, 1), (1, 2)]
