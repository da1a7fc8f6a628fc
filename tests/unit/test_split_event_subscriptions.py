"""A subscription over events an upcaster splits (the ledger plugin's
AccountOpened v2 becomes AccountOpened v3 + MoneyDeposited, at one
position): each message says whether its last event ends its position, and
a stalled stream that let go of the rest of its page inside a split event
sends the other pieces, once, when its client reads again."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator
from typing import Any, cast

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.errors import LogRewound
from service.plugins.registry import Registry
from service.processing.held_events import HeldEvents
from service.processing.subscriptions import CaughtUp, Page, SubscriptionRequest, Subscriptions
from service.processing.upcasting import EventReader
from service.store.memory import MemoryStore
from tests.support import plugins
from tests.support.events import new_event

READER = EventReader(Registry([plugins.ledger]))


async def books(count: int) -> MemoryStore:
    """``count`` books, each opened at AccountOpened v2: two events at each
    position 1 .. count."""
    store = MemoryStore()
    for number in range(1, count + 1):
        opened = new_event(
            "bank.v1.AccountOpened",
            aggregate_type="Book",
            payload=bank.AccountOpened(owner="ann").SerializeToString(),
            schema_version=2,
        )
        await store.append(f"book-{number}", [opened], 0)
    return store


async def messages_until_caught_up(stream: Any) -> list[Page]:
    pages: list[Page] = []
    async with asyncio.timeout(10):
        async for item in stream:
            if isinstance(item, CaughtUp):
                return pages
            assert isinstance(item, Page)
            pages.append(item)
    raise AssertionError("the stream ended")


def pieces(pages: list[Page]) -> list[tuple[int, str]]:
    return [(event.position, event.event_type) for page in pages for event in page.events]


async def test_a_message_that_ends_between_the_pieces_says_so() -> None:
    # Each piece is about 260 bytes (256 and its payload): a message ends
    # with its third.
    subscriptions = Subscriptions(await books(2), READER, message_bytes=600)
    pages = await messages_until_caught_up(await subscriptions.open(SubscriptionRequest()))
    assert [([e.position for e in page.events], page.completes_position) for page in pages] == [
        ([1, 1, 2], False),  # book-2's second piece is in the next message
        ([2], True),
    ]


async def test_one_event_per_message_marks_only_the_last_piece() -> None:
    subscriptions = Subscriptions(await books(2), READER)
    pages = await messages_until_caught_up(await subscriptions.open(SubscriptionRequest(per_event=True)))
    assert [(page.events[0].position, page.completes_position) for page in pages] == [
        (1, False),
        (1, True),
        (2, False),
        (2, True),
    ]


async def test_a_stall_inside_a_split_event_resumes_with_its_other_pieces_once() -> None:
    held = HeldEvents(stall_seconds=0)  # no timer: the test sweeps
    subscriptions = Subscriptions(await books(3), READER, held=held)
    stream = await subscriptions.open(SubscriptionRequest(per_event=True))
    first = [await anext(stream) for _ in range(3)]  # book-2's first piece; then the client stops reading
    assert held.sweep() == 0
    assert held.sweep() == 1  # stalled: the rest of the page let go of
    rest = await messages_until_caught_up(stream)
    assert pieces(cast(list[Page], first)) + pieces(rest) == [
        (1, "bank.v1.AccountOpened"),
        (1, "bank.v1.MoneyDeposited"),
        (2, "bank.v1.AccountOpened"),
        (2, "bank.v1.MoneyDeposited"),  # skipped before: the read again began after position 2
        (3, "bank.v1.AccountOpened"),
        (3, "bank.v1.MoneyDeposited"),
    ]
    await cast(AsyncGenerator[Any, None], stream).aclose()


async def test_a_resume_after_a_split_event_is_checked_against_any_of_its_pieces_ids() -> None:
    """A client that saw the second piece last resumes with its (derived)
    id, one after a checkpoint with the stored id: both are the event stored
    there. An id that is not is refused LOG_REWOUND."""
    store = await books(2)
    subscriptions = Subscriptions(store, READER)
    pages = await messages_until_caught_up(await subscriptions.open(SubscriptionRequest()))
    first, second = [event for page in pages for event in page.events if event.position == 1]
    assert first.event_id != second.event_id  # the second piece's id is derived from the stored one
    for seen in (first.event_id, second.event_id):
        resumed = await subscriptions.open(SubscriptionRequest(after_position=1, after_event_id=seen))
        assert pieces(await messages_until_caught_up(resumed)) == [
            (2, "bank.v1.AccountOpened"),
            (2, "bank.v1.MoneyDeposited"),
        ]
    with pytest.raises(LogRewound) as refused:
        await subscriptions.open(SubscriptionRequest(after_position=1, after_event_id=str(uuid.uuid4())))
    assert (refused.value.reason, refused.value.metadata) == ("LOG_REWOUND", {"position": "1", "log_head": "2"})
