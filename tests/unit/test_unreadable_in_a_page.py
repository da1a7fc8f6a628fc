"""An event the plugins cannot read ends a subscription or a read of an
aggregate where it stands: the events before it in the same page reach the
reader first, so it stops just before the event, never skipping it and
never losing what came before it."""

from __future__ import annotations

import uuid

import pytest

from service.errors import EventNotReadable
from service.processing.history import EventRange, History
from service.processing.state import AggregateLoader
from service.processing.subscriptions import Page, SubscriptionRequest, Subscriptions
from service.store.base import Store
from service.store.memory import MemoryStore
from service.store.records import NewEvent
from tests.support.bank_log import READER, REGISTRY, deposits


def stored(event_type: str, payload: bytes) -> NewEvent:
    return NewEvent(
        event_id=str(uuid.uuid4()),
        aggregate_type="Account",
        event_type=event_type,
        schema_version=1,
        payload=payload,
        timestamp_us=1,
    )


async def log_with_an_unreadable_event() -> MemoryStore:
    """acc-1: opened and four deposits (versions and positions 1-5), then an
    event no plugin reads (6), then another deposit (7)."""
    store = MemoryStore()
    await deposits(store, 4)
    deposit = (await store.read_aggregate("acc-1"))[1]
    await store.append("acc-1", [stored("legacy.v1.Unknown", b"")], 5)
    await store.append("acc-1", [stored(deposit.event_type, deposit.payload)], 6)
    return store


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
    assert raised.value.reason == "UNKNOWN_EVENT_TYPE"
    assert handed == [1, 2, 3, 4, 5]


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
