"""Reading over gRPC: events stored under older schemas reach clients upcast."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from chronicle.v1 import event_pb2, event_service_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins.registry import Registry
from service.store.base import EventStore
from tests.support import plugins
from tests.support.events import new_event
from tests.support.grpc_client import Client, running_server


@pytest.fixture
async def ledger(store: EventStore) -> AsyncIterator[Client]:
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
    request = event_service_pb2.ReadAggregateRequest(aggregate_id="book-1", **fields)  # type: ignore[arg-type]
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
