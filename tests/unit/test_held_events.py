"""What a subscription holds of the log, by bytes: a stalled one lets go of
its pages and reads them again when its client reads; reading ahead waits
for room in the server's budget (service/processing/held_events.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any, cast

from service.processing.held_events import HeldEvents, Holding, size_of
from service.processing.subscriptions import CaughtUp, Page, SubscriptionRequest, Subscriptions
from service.store.records import LogFilter
from tests.support.bank_log import READER, deposits
from tests.unit.test_read_ahead import CountingStore

EVENT_BYTES = 258  # a deposit's stored_size: 256 + its 2-byte payload


async def positions_until_caught_up(stream: Any) -> list[int]:
    seen: list[int] = []
    async for item in stream:
        if isinstance(item, CaughtUp):
            return seen
        assert isinstance(item, Page)
        seen += [event.position for event in item.events]
    raise AssertionError("the stream ended")


async def test_a_stalled_subscription_lets_go_of_its_pages_then_resumes_where_its_client_stopped() -> None:
    store = CountingStore()
    await deposits(store, 299)  # 300 events
    held = HeldEvents(stall_seconds=0)  # no timer: the test sweeps
    subscriptions = Subscriptions(store, READER, page_size=100, first_page_size=10, held=held)
    stream = await subscriptions.open(SubscriptionRequest(per_event=True))
    taken = [(await anext(stream)).position for _ in range(15)]  # then the client stops reading
    assert taken == list(range(1, 16))
    await asyncio.sleep(0.01)  # the read ahead arrives
    # The short first page is sent; it holds the second (events 11-110, 95
    # not sent yet) and the third (111-210), read ahead: deposits all.
    assert held.bytes == 200 * EVENT_BYTES
    reads = store.reads
    assert held.sweep() == 0  # suspended in a write, but a new one since the last sweep
    assert held.sweep() == 1  # the same write at two sweeps: stalled
    assert held.bytes == 0 and held.let_go == 1
    # The client reads again: after the event it last took, nothing skipped
    # or repeated, the let-go pages read once more.
    rest = await positions_until_caught_up(stream)
    assert rest == list(range(16, 301))
    assert store.reads > reads
    assert held.bytes == 0
    await cast(AsyncGenerator[Any, None], stream).aclose()


async def test_a_reading_subscription_keeps_its_pages_across_sweeps() -> None:
    store = CountingStore()
    await deposits(store, 299)
    held = HeldEvents(stall_seconds=0)
    stream = await Subscriptions(store, READER, page_size=100, held=held).open(SubscriptionRequest(per_event=True))
    seen: list[int] = []
    for _ in range(300):
        seen.append((await anext(stream)).position)
        assert held.sweep() == 0  # a new write at every sweep
    assert seen == list(range(1, 301)) and held.let_go == 0
    await cast(AsyncGenerator[Any, None], stream).aclose()
    assert held.bytes == 0  # a closed stream holds nothing


async def test_stalled_subscriptions_hold_their_pages_and_read_ahead_only_within_the_budget() -> None:
    store = CountingStore()
    await deposits(store, 300)  # 301 events: the first page (1-100) holds the account's opening
    page = 100 * EVENT_BYTES
    held = HeldEvents(read_ahead_bytes=12 * page, stall_seconds=0)
    subscriptions = Subscriptions(store, READER, page_size=100, first_page_size=100, held=held)
    streams = [await subscriptions.open(SubscriptionRequest(per_event=True)) for _ in range(10)]
    for stream in streams:
        await anext(stream)  # each took one event of its first page, then stopped
    await asyncio.sleep(0.01)  # the reads ahead arrive
    # Each holds its page (events 1-100); the first read ahead (101-200)
    # while the server's subscriptions, pages being sent included, had room
    # for a page more; the last found none. So they hold their pages, and
    # read ahead at most the room (one read's estimate may fall a page short).
    first_page = size_of((await store.read_log(0, LogFilter(), 100)).events)
    ahead = [holding.ahead_bytes for holding in held._holdings if isinstance(holding, Holding)]
    assert ahead.count(page) + ahead.count(0) == 10 and 0 < ahead.count(page) < 10
    assert held.bytes == 10 * first_page + ahead.count(page) * page
    assert ahead.count(page) * page <= held.read_ahead_bytes + page
    held.sweep()
    held.sweep()
    assert held.bytes == 0 and held.let_go == 10
    for stream in streams:
        assert await positions_until_caught_up(stream) == list(range(2, 302))
        await cast(AsyncGenerator[Any, None], stream).aclose()


async def test_without_room_a_subscription_reads_each_page_when_it_needs_it() -> None:
    store = CountingStore()
    await deposits(store, 9)  # ten events: five pages of two
    held = HeldEvents(read_ahead_bytes=0)
    stream = await Subscriptions(store, READER, page_size=2, held=held).open(SubscriptionRequest())
    reads_when_handed = []
    async for item in stream:
        if isinstance(item, Page):
            reads_when_handed.append(store.reads)
            if item.position == 10:
                break
    # test_read_ahead.py's subscription, with room: [2, 3, 4, 5, 6].
    assert reads_when_handed == [1, 2, 3, 4, 5]
    await cast(AsyncGenerator[Any, None], stream).aclose()


async def test_pages_go_in_messages_of_at_most_message_bytes() -> None:
    store = CountingStore()
    await deposits(store, 9)
    stream = await Subscriptions(store, READER, page_size=10, first_page_size=10, message_bytes=3 * EVENT_BYTES).open(
        SubscriptionRequest()
    )
    sizes = []
    async for item in stream:
        if isinstance(item, CaughtUp):
            break
        assert isinstance(item, Page)
        sizes.append(len(item.events))
    assert sizes == [3, 3, 3, 1]  # one store read of ten, in messages of three deposits
    await cast(AsyncGenerator[Any, None], stream).aclose()
