"""The gRPC API over a real socket with a real client, on every store."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from chronicle.v1 import command_pb2, command_service_pb2, event_service_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2
from service.store.base import StoreAdapter
from tests.support.contents import at_rest
from tests.support.grpc_client import Client, command, details_of, running_server


@pytest.fixture
async def client(store: StoreAdapter) -> AsyncIterator[Client]:
    async with running_server(store) as (_, connected):
        yield connected


async def open_account(client: Client, aggregate_id: str, owner: str = "ann") -> None:
    await client.submit(command(aggregate_id, bank.OpenAccount(owner=owner)))


async def rpc_error(awaitable: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await awaitable  # type: ignore[misc]
    return raised.value


async def read_all(client: Client, aggregate_id: str, **fields: object) -> list[object]:
    request = event_service_pb2.ReadAggregateRequest(aggregate_id=aggregate_id, **fields)  # type: ignore[arg-type]
    return [event async for event in client.events.ReadAggregate(request)]


# -- the happy path ------------------------------------------------------


async def test_submit_returns_the_appended_events_with_their_envelope(client: Client) -> None:
    sent = command("acc-1", bank.OpenAccount(owner="ann"), metadata={"channel": "web"})
    response = await client.submit(sent)
    assert response.version == 1
    assert not response.replayed
    (event,) = response.events
    assert event.aggregate_id == "acc-1"
    assert event.aggregate_type == "Account"
    assert event.version == 1
    assert event.position > 0
    assert event.event_type == "bank.v1.AccountOpened"
    assert event.payload.type_url == "type.googleapis.com/bank.v1.AccountOpened"
    opened = bank.AccountOpened()
    assert event.payload.Unpack(opened)
    assert opened.owner == "ann"
    assert uuid.UUID(event.event_id)
    assert event.command_id == sent.command_id
    assert event.correlation_id == sent.command_id
    assert event.causation_id == sent.command_id
    assert (event.origin, event.user_id) == ("tests", "tester")
    assert dict(event.metadata) == {"channel": "web"}
    assert event.schema_version == 1
    assert event.timestamp.seconds > 0


async def test_get_aggregate_returns_the_current_state(client: Client) -> None:
    await open_account(client, "acc-1")
    await client.submit(command("acc-1", bank.Deposit(amount=30)))
    await client.submit(command("acc-1", bank.Withdraw(amount=12)))
    response = await client.events.GetAggregate(event_service_pb2.GetAggregateRequest(aggregate_id="acc-1"))
    state = bank.Account()
    assert response.state.Unpack(state)
    assert (response.aggregate_type, response.version) == ("Account", 3)
    assert (state.owner, state.balance, state.closed) == ("ann", 18, False)


async def test_read_aggregate_streams_events_in_version_order(client: Client) -> None:
    await open_account(client, "acc-1")
    for amount in (1, 2, 3):
        await client.submit(command("acc-1", bank.Deposit(amount=amount)))
    events = await read_all(client, "acc-1")
    assert [e.version for e in events] == [1, 2, 3, 4]  # type: ignore[attr-defined]


async def test_read_aggregate_filters(client: Client) -> None:
    await open_account(client, "acc-1")
    await client.submit(command("acc-1", bank.Deposit(amount=5), origin="batch"))
    await client.submit(command("acc-1", bank.Withdraw(amount=1)))
    await client.submit(command("acc-1", bank.Deposit(amount=7)))
    by_type = await read_all(client, "acc-1", event_types=["bank.v1.MoneyDeposited"])
    by_origin = await read_all(client, "acc-1", origin="batch")
    from_three = await read_all(client, "acc-1", from_version=3)
    assert [e.version for e in by_type] == [2, 4]  # type: ignore[attr-defined]
    assert [e.version for e in by_origin] == [2]  # type: ignore[attr-defined]
    assert [e.version for e in from_three] == [3, 4]  # type: ignore[attr-defined]


@pytest.mark.parametrize("method", ["ReadAggregate", "ReadAggregatePages"])
async def test_read_aggregate_refuses_an_event_type_no_plugin_declares(client: Client, method: str) -> None:
    """As Subscribe does: a typo (here the package left out) is not an
    empty read."""
    await open_account(client, "acc-1")
    request = event_service_pb2.ReadAggregateRequest(
        aggregate_id="acc-1", event_types=["bank.v1.MoneyDeposited", "MoneyDeposited"]
    )
    details = details_of(await rpc_error(_drained(getattr(client.events, method)(request))))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FILTER")
    assert details.metadata["unknown"] == "MoneyDeposited"
    assert details.field_violations == ["event_types"]


async def _drained(call: grpc.aio.UnaryStreamCall[Any, Any]) -> list[object]:
    return [item async for item in call]


async def test_reading_an_unknown_aggregate_is_an_empty_stream(client: Client) -> None:
    assert await read_all(client, "nobody") == []


async def test_getting_an_unknown_aggregate_is_not_found(client: Client) -> None:
    error = await rpc_error(client.events.GetAggregate(event_service_pb2.GetAggregateRequest(aggregate_id="nobody")))
    details = details_of(error)
    assert (details.code, details.reason) == (grpc.StatusCode.NOT_FOUND, "AGGREGATE_NOT_FOUND")


# -- domain rules reach the client as statuses with reasons ---------------


async def test_insufficient_funds_is_failed_precondition_with_the_balance(client: Client) -> None:
    await open_account(client, "acc-1")
    await client.submit(command("acc-1", bank.Deposit(amount=10)))
    details = details_of(await rpc_error(client.submit(command("acc-1", bank.Withdraw(amount=11)))))
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.reason == "INSUFFICIENT_FUNDS"
    assert details.metadata["balance"] == "10"


async def test_a_non_positive_amount_is_invalid_argument_naming_the_field(client: Client) -> None:
    await open_account(client, "acc-1")
    details = details_of(await rpc_error(client.submit(command("acc-1", bank.Deposit(amount=-5)))))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_AMOUNT")
    assert details.field_violations == ["command.payload.amount"]  # the plugin named "amount"


async def test_a_command_on_a_missing_account_is_not_found(client: Client) -> None:
    details = details_of(await rpc_error(client.submit(command("acc-9", bank.Deposit(amount=1)))))
    assert (details.code, details.reason) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")


async def test_opening_twice_is_already_exists(client: Client) -> None:
    await open_account(client, "acc-1")
    details = details_of(await rpc_error(client.submit(command("acc-1", bank.OpenAccount(owner="bob")))))
    assert (details.code, details.reason) == (grpc.StatusCode.ALREADY_EXISTS, "ACCOUNT_ALREADY_OPEN")


async def test_a_command_for_another_aggregate_type_is_refused(client: Client) -> None:
    await open_account(client, "shared-id")
    details = details_of(await rpc_error(client.submit(command("shared-id", box_pb2.CreateBox(name="x")))))
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "AGGREGATE_TYPE_MISMATCH")
    assert details.metadata["aggregate_type"] == "Account"


async def test_the_box_example_refuses_changes_once_archived(client: Client) -> None:
    await client.submit(command("box-1", box_pb2.CreateBox(name="tools")))
    await client.submit(command("box-1", box_pb2.ArchiveBox()))
    details = details_of(await rpc_error(client.submit(command("box-1", box_pb2.RenameBox(name="junk")))))
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "BOX_ARCHIVED")
    assert details.message == "Cannot modify an archived box"


# -- expected version -----------------------------------------------------


async def test_expected_version_zero_refuses_an_existing_aggregate(client: Client) -> None:
    await open_account(client, "acc-1")
    details = details_of(await rpc_error(client.submit(command("acc-1", bank.Deposit(amount=1), expected_version=0))))
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "WRONG_EXPECTED_VERSION")
    assert details.metadata["current_version"] == "1"


async def test_expected_version_zero_creates_a_new_aggregate(client: Client) -> None:
    response = await client.submit(command("acc-1", bank.OpenAccount(owner="ann"), expected_version=0))
    assert response.version == 1


async def test_an_exact_expected_version_that_does_not_hold_names_the_current_version(client: Client) -> None:
    await open_account(client, "acc-1")
    await client.submit(command("acc-1", bank.Deposit(amount=1)))
    stale = command("acc-1", bank.Deposit(amount=1), expected_version=1)
    details = details_of(await rpc_error(client.submit(stale)))
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "WRONG_EXPECTED_VERSION")
    assert (details.metadata["expected_version"], details.metadata["current_version"]) == ("1", "2")
    assert len(await read_all(client, "acc-1")) == 2


async def test_an_exact_expected_version_that_holds_is_accepted(client: Client) -> None:
    await open_account(client, "acc-1")
    response = await client.submit(command("acc-1", bank.Deposit(amount=1), expected_version=1))
    assert response.version == 2


# -- idempotency ----------------------------------------------------------


async def test_a_retried_command_returns_the_original_result_and_appends_nothing(
    client: Client, store: StoreAdapter
) -> None:
    await open_account(client, "acc-1")
    deposit = command("acc-1", bank.Deposit(amount=10))
    first = await client.submit(deposit)
    before = await at_rest(store)
    again = await client.submit(deposit)
    assert again.replayed
    assert [e.event_id for e in again.events] == [e.event_id for e in first.events]
    assert again.version == first.version == 2
    assert (await at_rest(store)).changes_since(before) == {}  # not even an audit entry


async def test_a_retried_refusal_is_refused_again_even_if_it_would_now_succeed(client: Client) -> None:
    await open_account(client, "acc-1")
    withdraw = command("acc-1", bank.Withdraw(amount=5))
    assert details_of(await rpc_error(client.submit(withdraw))).reason == "INSUFFICIENT_FUNDS"
    await client.submit(command("acc-1", bank.Deposit(amount=50)))
    assert details_of(await rpc_error(client.submit(withdraw))).reason == "INSUFFICIENT_FUNDS"


async def test_a_command_id_reused_with_another_payload_is_already_exists(client: Client) -> None:
    await open_account(client, "acc-1")
    first = command("acc-1", bank.Deposit(amount=10))
    await client.submit(first)
    other = command("acc-1", bank.Deposit(amount=11), command_id=first.command_id)
    details = details_of(await rpc_error(client.submit(other)))
    assert (details.code, details.reason) == (grpc.StatusCode.ALREADY_EXISTS, "COMMAND_ID_REUSED")


async def test_a_command_id_reused_on_another_aggregate_is_already_exists(client: Client) -> None:
    first = command("acc-1", bank.OpenAccount(owner="ann"))
    await client.submit(first)
    other = command("acc-2", bank.OpenAccount(owner="ann"), command_id=first.command_id)
    details = details_of(await rpc_error(client.submit(other)))
    assert (details.code, details.reason) == (grpc.StatusCode.ALREADY_EXISTS, "COMMAND_ID_REUSED")
    assert await read_all(client, "acc-2") == []


async def test_command_ids_are_compared_as_uuids_not_as_text(client: Client) -> None:
    await open_account(client, "acc-1")
    lower = command("acc-1", bank.Deposit(amount=3), command_id=str(uuid.uuid4()))
    await client.submit(lower)
    upper = command("acc-1", bank.Deposit(amount=3), command_id=lower.command_id.upper())
    assert (await client.submit(upper)).replayed


# -- malformed input: a clear status, and nothing written -----------------


def _bad_commands() -> dict[str, tuple[command_service_pb2.SubmitRequest, str, str]]:
    good = command("acc-1", bank.Deposit(amount=1))

    def variant(**changes: object) -> command_service_pb2.SubmitRequest:
        built = command_pb2.Command()
        built.CopyFrom(good)
        for name, value in changes.items():
            if value is None:
                built.ClearField(name)
            elif isinstance(value, any_pb2.Any):
                getattr(built, name).CopyFrom(value)
            else:
                setattr(built, name, value)
        return command_service_pb2.SubmitRequest(command=built)

    return {
        "no command": (command_service_pb2.SubmitRequest(), "MISSING_COMMAND", "command"),
        "no command id": (variant(command_id=""), "INVALID_COMMAND_ID", "command.command_id"),
        "command id not a uuid": (variant(command_id="abc"), "INVALID_COMMAND_ID", "command.command_id"),
        "empty aggregate id": (variant(aggregate_id=""), "INVALID_AGGREGATE_ID", "command.aggregate_id"),
        "only whitespace": (variant(aggregate_id=" \t "), "INVALID_AGGREGATE_ID", "command.aggregate_id"),
        "control characters": (variant(aggregate_id="a\x00b"), "INVALID_AGGREGATE_ID", "command.aggregate_id"),
        "aggregate id too long": (variant(aggregate_id="a" * 201), "INVALID_AGGREGATE_ID", "command.aggregate_id"),
        "no payload": (variant(payload=None), "MISSING_PAYLOAD", "command.payload"),
        "unknown command type": (
            variant(payload=any_pb2.Any(type_url="type.googleapis.com/nope.v1.Nope", value=b"")),
            "UNKNOWN_COMMAND_TYPE",
            "",
        ),
        "payload does not parse": (
            variant(payload=any_pb2.Any(type_url="type.googleapis.com/bank.v1.Deposit", value=b"\x08")),
            "MALFORMED_PAYLOAD",
            "command.payload.value",
        ),
        "origin with control characters": (variant(origin="web\n"), "INVALID_FIELD", "command.origin"),
    }


@pytest.mark.parametrize("case", sorted(_bad_commands()))
async def test_malformed_commands_are_invalid_argument_and_write_nothing(
    client: Client, store: StoreAdapter, case: str
) -> None:
    request, reason, field = _bad_commands()[case]
    before = await at_rest(store)
    error = await rpc_error(client.commands.Submit(request))
    details = details_of(error)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == reason
    if field:
        assert details.field_violations == [field]
    changes = (await at_rest(store)).changes_since(before)
    assert list(changes) == ["refusals"]  # the audit entry of the refusal, nothing else
    (entry,) = changes["refusals"].added
    assert reason in entry
    # and the next event is the store's very first
    first = await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    assert (first.events[0].version, first.events[0].position) == (1, 1)


async def test_an_oversized_message_is_resource_exhausted_and_writes_nothing(store: StoreAdapter) -> None:
    async with running_server(store, max_message_bytes=10_000, max_event_bytes=2_500) as (_, client):
        before = await at_rest(store)
        huge = command("acc-1", bank.OpenAccount(owner="x" * 20_000))
        error = await rpc_error(client.submit(huge))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # gRPC refuses it before the service sees it: not even an audit entry
        assert (await at_rest(store)).changes_since(before) == {}


# -- many clients at once -------------------------------------------------


async def test_two_hundred_concurrent_commands_over_twenty_aggregates(client: Client, store: StoreAdapter) -> None:
    accounts = [f"acc-{i}" for i in range(20)]
    await asyncio.gather(*(open_account(client, a) for a in accounts))
    rng = random.Random(7)
    deposits = [(rng.choice(accounts), rng.randint(1, 1000)) for _ in range(200)]
    responses = await asyncio.gather(*(client.submit(command(a, bank.Deposit(amount=n))) for a, n in deposits))
    assert all(len(r.events) == 1 for r in responses)
    for account in accounts:
        expected = sum(n for a, n in deposits if a == account)
        response = await client.events.GetAggregate(event_service_pb2.GetAggregateRequest(aggregate_id=account))
        state = bank.Account()
        response.state.Unpack(state)
        assert state.balance == expected
        versions = [e.version for e in await store.read_aggregate(account)]
        assert versions == list(range(1, len(versions) + 1))
        assert response.version == len(versions) == 1 + sum(1 for a, _ in deposits if a == account)


# -- standard services ----------------------------------------------------


async def test_health_reports_serving(client: Client) -> None:
    stub = health_pb2_grpc.HealthStub(client.channel)
    for service in ("", "chronicle.v1.CommandService", "chronicle.v1.EventService"):
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_services_and_knows_plugin_messages(client: Client) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="bank.v1.Deposit"),
    ]
    responses = [r async for r in stub.ServerReflectionInfo(iter(requests))]
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"chronicle.v1.CommandService", "chronicle.v1.EventService", "grpc.health.v1.Health"} <= names
    assert responses[1].file_descriptor_response.file_descriptor_proto
