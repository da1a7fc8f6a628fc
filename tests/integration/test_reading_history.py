"""Reading over gRPC: events stored under older schemas reach clients
upcast; aggregates at a past version or time; pages forwards and backwards."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable

import grpc
import pytest
from google.protobuf import timestamp_pb2

from chronicle.v1 import event_pb2, event_service_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.users.protos.users.v1 import users_pb2 as users
from service.plugins.registry import Registry
from service.store.base import StoreAdapter
from tests.support import plugins
from tests.support.events import new_event
from tests.support.grpc_client import Client, command, details_of, running_server
from tests.support.waiting import eventually


@pytest.fixture
async def ledger(store: StoreAdapter) -> AsyncIterator[Client]:
    """A server whose only plugin is the ledger, over a store holding one
    book written years ago: opened at AccountOpened v2, a v1 deposit."""
    old = [
        new_event(
            "bank.v1.AccountOpened",
            aggregate_type="Book",
            payload=bank.AccountOpened(owner="ann").SerializeToString(),
            schema_version=2,
        ),
        new_event(
            "bank.v1.MoneyDeposited",
            aggregate_type="Book",
            payload=bank.MoneyDeposited(amount=3).SerializeToString(),
            schema_version=1,
        ),
    ]
    await store.append("book-1", old, 0)
    async with running_server(store, registry=Registry([plugins.ledger])) as (_, client):
        yield client


async def read(client: Client, **fields: object) -> list[event_pb2.Event]:
    fields.setdefault("aggregate_id", "book-1")
    request = event_service_pb2.ReadAggregateRequest(**fields)  # type: ignore[arg-type]
    return [event async for event in client.events.ReadAggregate(request)]


def deposited(event: event_pb2.Event) -> int:
    message = bank.MoneyDeposited()
    assert event.payload.Unpack(message)
    return int(message.amount)


async def test_read_aggregate_delivers_events_at_the_current_schema(ledger: Client) -> None:
    events = await read(ledger)
    assert [(e.version, e.event_type, e.schema_version) for e in events] == [
        (1, "bank.v1.AccountOpened", 3),
        (1, "bank.v1.MoneyDeposited", 2),
        (2, "bank.v1.MoneyDeposited", 2),
    ]
    assert [deposited(e) for e in events[1:]] == [plugins.OPENING_BONUS_CENTS, 300]


async def test_a_type_filter_applies_to_the_upcast_events(ledger: Client) -> None:
    events = await read(ledger, event_types=["bank.v1.MoneyDeposited"])
    assert [(e.version, deposited(e)) for e in events] == [(1, plugins.OPENING_BONUS_CENTS), (2, 300)]


async def test_get_aggregate_rebuilds_the_current_state_from_old_events(ledger: Client) -> None:
    response = await ledger.events.GetAggregate(event_service_pb2.GetAggregateRequest(aggregate_id="book-1"))
    state = bank.Account()
    assert response.state.Unpack(state)
    assert (response.version, state) == (2, bank.Account(owner="ann", balance=plugins.OPENING_BONUS_CENTS + 300))


# -- time travel and paging, on the bank example ------------------------------


@pytest.fixture
async def bank_client(store: StoreAdapter) -> AsyncIterator[Client]:
    async with running_server(store) as (_, client):
        yield client


async def twelve_events(client: Client) -> list[event_pb2.Event]:
    """acc-1: opened, then deposits of 1 to 11; the events as appended."""
    events = list((await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))).events)
    for amount in range(1, 12):
        events.extend((await client.submit(command("acc-1", bank.Deposit(amount=amount)))).events)
    return events


async def get(client: Client, **fields: object) -> event_service_pb2.GetAggregateResponse:
    fields.setdefault("aggregate_id", "acc-1")
    request = event_service_pb2.GetAggregateRequest(**fields)  # type: ignore[arg-type]
    response: event_service_pb2.GetAggregateResponse = await client.events.GetAggregate(request)
    return response


def balance(response: event_service_pb2.GetAggregateResponse) -> int:
    state = bank.Account()
    assert response.state.Unpack(state)
    return int(state.balance)


async def refusal(call: object) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    details = details_of(raised.value)
    return details.code, details.reason, details.metadata


async def test_an_aggregate_id_of_only_spaces_is_invalid_for_reading_too(bank_client: Client) -> None:
    for call in (read(bank_client, aggregate_id="   "), get(bank_client, aggregate_id="   ")):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        details = details_of(raised.value)
        assert (details.code, details.reason, details.field_violations) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_AGGREGATE_ID",
            ["aggregate_id"],
        )
        assert "whitespace" in details.message


async def test_get_aggregate_at_a_past_version(bank_client: Client) -> None:
    await twelve_events(bank_client)
    response = await get(bank_client, at_version=4)
    assert (response.version, balance(response)) == (4, 1 + 2 + 3)


async def _equal(got: Awaitable[object], expected: object) -> bool:
    return await got == expected


async def test_get_aggregate_at_every_past_version_while_old_snapshots_are_pruned(store: StoreAdapter) -> None:
    # The users plugin sets no snapshot interval, so the server's applies:
    # snapshots at versions 2, 4, …, 12, of which the store keeps the newest 3.
    emails = [f"ann.{n}@example.com" for n in range(1, 14)]
    async with running_server(store, snapshot_every=2) as (_, client):
        await client.submit(command("user-1", users.RegisterUser(email=emails[0], name="Ann")))
        for email in emails[1:]:
            await client.submit(command("user-1", users.ChangeEmail(email=email)))

        # Snapshots are saved beside the commands, not before the next one
        # (worker.py): wait for the one at 12, which prunes the one at 6.
        async def kept() -> list[int | None]:
            snapshots = [await store.load_snapshot("user-1", at_most=v) for v in (7, 8, 12)]
            return [None if s is None else s.version for s in snapshots]

        await eventually(lambda: _equal(kept(), [None, 8, 12]), what="the snapshot at 12, and 6 pruned")
        for version, email in enumerate(emails, start=1):
            request = event_service_pb2.GetAggregateRequest(aggregate_id="user-1", at_version=version)
            state = users.User()
            assert (await client.events.GetAggregate(request)).state.Unpack(state)
            assert (version, state.email) == (version, email)


async def test_get_aggregate_at_a_version_not_reached_is_out_of_range(bank_client: Client) -> None:
    await twelve_events(bank_client)
    code, reason, metadata = await refusal(get(bank_client, at_version=13))
    assert (code, reason, metadata["current_version"]) == (grpc.StatusCode.OUT_OF_RANGE, "VERSION_NOT_REACHED", "12")


async def test_get_aggregate_at_version_zero_is_invalid(bank_client: Client) -> None:
    await twelve_events(bank_client)
    code, reason, _ = await refusal(get(bank_client, at_version=0))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_VERSION")


async def test_get_aggregate_at_the_time_of_each_event(bank_client: Client) -> None:
    events = await twelve_events(bank_client)
    for event in events:
        response = await get(bank_client, at_time=event.timestamp)
        # every event stamped at or before this one's time (ties included)
        expected = max(e.version for e in events if e.timestamp.ToMicroseconds() <= event.timestamp.ToMicroseconds())
        assert response.version == expected
        assert balance(response) == sum(range(1, expected))


async def test_get_aggregate_before_its_first_event_is_not_found(bank_client: Client) -> None:
    events = await twelve_events(bank_client)
    before = timestamp_pb2.Timestamp()
    before.FromMicroseconds(events[0].timestamp.ToMicroseconds() - 1)
    code, reason, metadata = await refusal(get(bank_client, at_time=before))
    assert (code, reason, metadata["at_time"]) == (
        grpc.StatusCode.NOT_FOUND,
        "AGGREGATE_NOT_FOUND",
        before.ToJsonString(),
    )


async def test_get_aggregate_at_a_future_time_is_the_current_state(bank_client: Client) -> None:
    await twelve_events(bank_client)
    response = await get(bank_client, at_time=timestamp_pb2.Timestamp(seconds=253_402_300_799))
    assert response.version == 12


async def test_get_aggregate_at_an_invalid_time_is_invalid(bank_client: Client) -> None:
    await twelve_events(bank_client)
    code, reason, _ = await refusal(get(bank_client, at_time=timestamp_pb2.Timestamp(seconds=253_402_300_800)))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TIMESTAMP")


async def test_read_aggregate_backwards(bank_client: Client) -> None:
    await twelve_events(bank_client)
    newest_first = await read(bank_client, aggregate_id="acc-1", backwards=True)
    from_three = await read(bank_client, aggregate_id="acc-1", backwards=True, from_version=3)
    assert [e.version for e in newest_first] == list(range(12, 0, -1))
    assert [e.version for e in from_three] == [3, 2, 1]


async def test_read_aggregate_with_a_limit(bank_client: Client) -> None:
    await twelve_events(bank_client)
    assert [e.version for e in await read(bank_client, aggregate_id="acc-1", limit=3)] == [1, 2, 3]
    assert [e.version for e in await read(bank_client, aggregate_id="acc-1", limit=3, backwards=True)] == [12, 11, 10]


@pytest.mark.parametrize("backwards", [False, True], ids=["forwards", "backwards"])
async def test_pages_of_five_reassemble_the_whole_aggregate(bank_client: Client, backwards: bool) -> None:
    await twelve_events(bank_client)
    pages: list[list[int]] = []
    start = 0
    while True:
        page = await read(bank_client, aggregate_id="acc-1", limit=5, backwards=backwards, from_version=start)
        pages.append([e.version for e in page])
        if len(page) < 5 or (backwards and page[-1].version == 1):
            break
        start = page[-1].version - 1 if backwards else page[-1].version + 1
    everything = [v for page in pages for v in page]
    assert everything == (list(range(12, 0, -1)) if backwards else list(range(1, 13)))
    assert [len(p) for p in pages] == [5, 5, 2]


async def test_a_page_never_ends_between_the_events_of_one_stored_event(ledger: Client) -> None:
    # book-1: version 1 was split by an upcaster into AccountOpened + MoneyDeposited
    first = await read(ledger, limit=1)
    assert [(e.version, e.event_type) for e in first] == [(1, "bank.v1.AccountOpened"), (1, "bank.v1.MoneyDeposited")]
    rest = await read(ledger, limit=1, from_version=2)
    assert [e.version for e in rest] == [2]


async def test_backwards_the_events_of_one_stored_event_come_newest_first(ledger: Client) -> None:
    events = await read(ledger, backwards=True)
    assert [(e.version, e.event_type) for e in events] == [
        (2, "bank.v1.MoneyDeposited"),
        (1, "bank.v1.MoneyDeposited"),
        (1, "bank.v1.AccountOpened"),
    ]
