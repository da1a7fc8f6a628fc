"""An event of a type the server knows that it cannot bring to the current
schema (here: newer than the plugin) ends a subscription or a read of an aggregate where it
stands: the events before it in the same page reach the reader first, so it
stops just before the event, never skipping it and never losing what came
before it. An event of a type the server does not know at all is handed
over as stored, and the read goes on."""

from __future__ import annotations

import uuid

import pytest

from service.errors import EventNotReadable
from service.processing.history import EventRange, History
from service.processing.state import AggregateLoader
from service.processing.subscriptions import CaughtUp, Page, SubscriptionRequest, Subscriptions
from service.store.base import Store
from service.store.memory import MemoryStore
from service.store.records import NewEvent
from tests.support.bank_log import READER, REGISTRY, deposits


def stored(event_type: str, payload: bytes, schema_version: int = 1) -> NewEvent:
    return NewEvent(
        event_id=str(uuid.uuid4()),
        aggregate_type="Account",
        event_type=event_type,
        schema_version=schema_version,
        payload=payload,
        timestamp_us=1,
    )


async def log_with(odd: NewEvent) -> MemoryStore:
    """acc-1: opened and four deposits (versions and positions 1-5), then
    ``odd`` (6), then another deposit (7)."""
    store = MemoryStore()
    await deposits(store, 4)
    deposit = (await store.read_aggregate("acc-1"))[1]
    await store.append("acc-1", [odd], 5)
    await store.append("acc-1", [stored(deposit.event_type, deposit.payload, deposit.schema_version)], 6)
    return store


async def log_with_an_unreadable_event() -> MemoryStore:
    """The odd event: a deposit at a schema version newer than the plugin's."""
    return await log_with(stored("bank.v1.MoneyDeposited", b"", schema_version=2))


async def log_with_an_unknown_event() -> MemoryStore:
    """The odd event: of a type no plugin declares or upcasts."""
    return await log_with(stored("legacy.v1.Unknown", b"\x08\x07"))


async def test_a_subscription_hands_over_the_events_before_an_unreadable_one_then_fails() -> None:
    store = await log_with_an_unreadable_event()
    stream = await Subscriptions(store, READER, page_size=100).open(SubscriptionRequest())
    handed: list[int] = []

    async def follow() -> None:
        async for item in stream:
            if isinstance(item, Page):
                handed.extend(event.position for event in item.events)

    with pytest.raises(EventNotReadable) as raised:
        await follow()
    assert raised.value.reason == "SCHEMA_VERSION_TOO_NEW"
    assert raised.value.metadata["position"] == "6"
    assert handed == [1, 2, 3, 4, 5]


async def test_a_subscription_hands_over_an_event_of_an_unknown_type_as_stored_and_goes_on() -> None:
    store = await log_with_an_unknown_event()
    stream = await Subscriptions(store, READER, page_size=100).open(SubscriptionRequest())
    handed = []
    async for item in stream:
        if isinstance(item, CaughtUp):
            break
        if isinstance(item, Page):
            handed.extend(item.events)
    assert [event.position for event in handed] == [1, 2, 3, 4, 5, 6, 7]
    odd = handed[5]
    assert (odd.event_type, odd.schema_version, odd.payload) == ("legacy.v1.Unknown", 1, b"\x08\x07")


async def test_a_read_of_an_aggregate_hands_over_an_event_of_an_unknown_type_as_stored() -> None:
    store = await log_with_an_unknown_event()
    history = History(store, AggregateLoader(Store.of(store), REGISTRY))
    handed = [event async for event in history.events("acc-1", EventRange())]
    assert [(event.version, event.event_type) for event in handed][4:] == [
        (5, "bank.v1.MoneyDeposited"),
        (6, "legacy.v1.Unknown"),
        (7, "bank.v1.MoneyDeposited"),
    ]


async def test_a_read_of_an_aggregate_hands_over_the_events_before_an_unreadable_one_then_fails() -> None:
    store = await log_with_an_unreadable_event()
    history = History(store, AggregateLoader(Store.of(store), REGISTRY))
    handed: list[int] = []

    async def read() -> None:
        async for page in history.pages("acc-1", EventRange()):
            handed.extend(event.version for event in page)

    with pytest.raises(EventNotReadable):
        await read()
    assert handed == [1, 2, 3, 4, 5]
