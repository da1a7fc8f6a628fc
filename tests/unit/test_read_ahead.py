"""Database work started before Python's own: a subscription's next page
is asked for before this page reaches the caller, a projection's next page
and its last batch's commit before the handlers run (so PostgreSQL works
while Python does; see service/processing/overlap.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.groups import SubscriptionGroups
from service.plugins import Plugin
from service.plugins.projections import Documents, ProjectedEvent
from service.processing.overlap import started
from service.processing.projections import ProjectionRunner
from service.processing.subscriptions import Page, SubscriptionRequest, Subscriptions
from service.store.grouping import GroupSpec
from service.store.memory import MemoryStore
from tests.support.bank_log import READER, created_group, deposits


class CountingStore(MemoryStore):
    """Counts the log reads and projection commits begun so far (a call
    counts when its coroutine starts running, as a statement is sent), and
    keeps each read's page size."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = self.commits = 0
        self.limits: list[int] = []

    async def read_log(self, after_position: int, log_filter: Any, limit: int, **rest: Any) -> Any:
        self.reads += 1
        self.limits.append(limit)
        await asyncio.sleep(0)  # a round trip
        return await super().read_log(after_position, log_filter, limit, **rest)

    async def commit_projection(self, name: str, **rest: Any) -> None:
        self.commits += 1
        await asyncio.sleep(0)
        await super().commit_projection(name, **rest)


async def test_a_subscription_asks_for_the_next_page_before_it_hands_over_this_one() -> None:
    store = CountingStore()
    await deposits(store, 9)  # ten events: five pages of two
    stream = await Subscriptions(store, READER, page_size=2).open(SubscriptionRequest())
    reads_when_handed = []
    async for item in stream:
        if isinstance(item, Page):
            reads_when_handed.append(store.reads)
            if item.position == 10:
                break
    # Page n reached the caller with the read of page n + 1 already sent
    # (after the last full page too: the store cannot know it is the last).
    assert reads_when_handed == [2, 3, 4, 5, 6]


async def test_a_catch_up_starts_with_a_short_page_then_reads_full_ones_ahead() -> None:
    store = CountingStore()
    await deposits(store, 9)  # ten events
    stream = await Subscriptions(store, READER, page_size=4, first_page_size=2).open(SubscriptionRequest())
    handed = []
    async for item in stream:
        if isinstance(item, Page):
            handed.append(([event.position for event in item.events], store.reads))
            if item.position == 10:
                break
    # The first events after a read of two; the full pages read ahead of it.
    assert handed == [([1, 2], 2), ([3, 4, 5, 6], 3), ([7, 8, 9, 10], 4)]


async def test_a_group_consumer_gets_its_first_events_from_a_short_read_then_full_pages() -> None:
    store = CountingStore()
    await deposits(store, 9)  # ten events
    spec = GroupSpec(name="ledger", segments=1)
    spec = await created_group(store, spec)
    groups = SubscriptionGroups(store, store, READER, lease_seconds=5, page_size=4, first_page_size=2)
    session = await groups.open(spec, consumer="c", max_in_flight=100)
    try:
        first = await session.next_batch()
        assert first is not None
        # One aggregate: its events go out one at a time, each once the one
        # before is settled.
        assert [d.event.position for d in first] == [1]
        assert store.limits[0] == 2
        delivered = [d.event.position for d in first]
        while len(delivered) < 10:
            session.ack([d.event.event_id for d in first])
            first = await session.next_batch()
            assert first is not None
            delivered += [d.event.position for d in first]
        assert delivered == list(range(1, 11))
        # After the short read, full pages: [3-6], [7-10].
        assert store.limits[:3] == [2, 4, 4]
    finally:
        await session.close()


async def test_a_projection_sends_its_next_read_and_its_commit_before_its_handlers_run() -> None:
    store = CountingStore()
    await deposits(store, 9)
    seen: list[tuple[int, int, int]] = []
    projection = Plugin("overlap").projection("overlap.counts", aggregate_types=["Account"], batch_size=2)
    projection.catch_up_batch_size = 2

    @projection.on(bank.MoneyDeposited)
    def _deposited(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Documents) -> None:
        seen.append((envelope.position, store.reads, store.commits))

    runner = ProjectionRunner(projection, log=store, documents=store, reader=READER)
    assert await runner.step(0) == 10

    # Pages of two deposits (the projection reads only those): 2-3, 4-5, 6-7,
    # 8-9, 10. The handlers of page n ran with the read of page n + 1 sent
    # (but after the last) and the commit of page n - 1 sent.
    assert seen == [(2, 2, 0), (3, 2, 0), (4, 3, 1), (5, 3, 1), (6, 4, 2), (7, 4, 2), (8, 5, 3), (9, 5, 3), (10, 5, 4)]


async def test_started_work_is_cancelled_with_the_task_that_started_it() -> None:
    cancelled = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = asyncio.ensure_future(started(work()))
    await asyncio.sleep(0)  # the task is in started(), its work begun
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(cancelled.wait(), 5)  # not left running on its own
