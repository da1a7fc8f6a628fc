"""A consumer session's end while one of its checkpoint rounds is being
written: the round finishes (it is shielded, so its segments' stored
checkpoints stay known), and what it meets is heard, not left in a task
nobody awaits (asyncio's "Task exception was never retrieved").

Seen in a probe: a group deleted while its consumers were closing their
streams logged that error, with the round's GROUP_NOT_FOUND, on the server."""

from __future__ import annotations

import asyncio
import gc
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service import groups as groups_module
from service.errors import ResourceNotFound
from service.groups import ConsumerSession, Delivery, SubscriptionGroups
from service.processing.commands import CommandRequest
from service.processing.executor import CommandExecutor
from service.store.base import Store
from service.store.grouping import GroupSpec
from service.store.memory import MemoryStore
from service.store.records import LogFilter
from tests.support.bank_log import READER, REGISTRY, created_group, deposits
from tests.support.waiting import eventually


class HeldCommits(MemoryStore):
    """Holds each segment commit until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.committing = asyncio.Event()
        self.release = asyncio.Event()

    async def commit_segment(self, *args: Any, **kwargs: Any) -> None:
        self.committing.set()
        await self.release.wait()
        await super().commit_segment(*args, **kwargs)


async def test_a_round_that_fails_while_its_session_closes_is_heard() -> None:
    loop = asyncio.get_running_loop()
    # The loop is the session's: garbage that earlier tests on this worker
    # left (a task grpc.aio made for an intercepted request stream the server
    # ended) is collected first, so that what is checked below is this
    # test's own.
    for _ in range(3):
        gc.collect()
        await asyncio.sleep(0)
    unheard: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: unheard.append(context))
    try:
        store = HeldCommits()
        await deposits(store, 2)
        spec = GroupSpec(name="ledger", segments=1)
        spec = await created_group(store, spec)
        groups = SubscriptionGroups(store, store, READER, lease_seconds=5, poll_interval=0.2)
        session = await groups.open(spec, consumer="c", max_in_flight=10)
        batch = await session.next_batch()
        assert batch
        session.ack([d.event.event_id for d in batch])
        await store.committing.wait()  # a round is being written
        await store.delete_group(spec.name)  # and will find its group gone

        closing = asyncio.ensure_future(session.close())
        await asyncio.sleep(0.05)  # the session's tasks are cancelled; the round goes on
        store.release.set()
        await closing
        del session, closing, groups
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert [c.get("message") for c in unheard] == []


LEDGER = GroupSpec(name="ledger", segments=1)


@asynccontextmanager
async def consuming(
    store: MemoryStore, *, max_in_flight: int, spec: GroupSpec = LEDGER, **options: Any
) -> AsyncIterator[ConsumerSession]:
    """A session of a new group ``spec`` over ``store`` (``options``: the
    groups' reading settings), closed after."""
    spec = await created_group(store, spec)
    groups = SubscriptionGroups(store, store, READER, lease_seconds=5, **options)
    session = await groups.open(spec, consumer="c", max_in_flight=max_in_flight)
    try:
        yield session
    finally:
        await session.close()


async def test_a_consumer_that_acks_at_once_leaves_no_trail_of_deadlines() -> None:
    # Each delivery's ack deadline waits in a heap until it comes up; a
    # consumer that acks at once settles thousands of events per ack
    # timeout, and the heap kept every one of them (with its event) until
    # then. Now settled entries are cleared out once they are most of it.
    store = MemoryStore()
    events = 2_500
    await deposits(store, events - 1)  # and the account's opening
    acked = 0
    async with consuming(store, max_in_flight=10, poll_interval=0.2) as session:
        while acked < events:
            batch = await session.next_batch()
            assert batch
            session.ack([d.event.event_id for d in batch])
            acked += len(batch)
        assert len(session._deadlines) <= 2 * 10 + 1024 + 1


async def test_events_nacked_then_acked_leave_no_trail_of_retries() -> None:
    # A nacked event waits in the retry heap for its backoff (up to an hour);
    # acked meanwhile (a consumer that retried it itself), its entry is
    # cleared out with the others once they are most of the heap.
    store = MemoryStore()
    events = 2_500
    await deposits(store, events - 1)
    spec = GroupSpec(name="ledger", segments=1, retry_backoff_ms=3_600_000, max_retry_backoff_ms=3_600_000)
    settled = 0
    async with consuming(store, max_in_flight=10, spec=spec, poll_interval=0.2) as session:
        while settled < events:
            batch = await session.next_batch()
            assert batch
            ids = [d.event.event_id for d in batch]
            session.nack(ids, "not now")
            session.ack(ids)
            settled += len(batch)
        assert len(session._retries) <= 2 * 10 + 1024 + 1


async def test_a_session_reads_ahead_no_more_bytes_than_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # Read ahead by count alone (ten times max_in_flight, at least 1,000),
    # a log of large events could fill the server for one slow consumer.
    store = MemoryStore()
    await deposits(store, 1_999)
    payload = len((await store.read_log(1, LogFilter(), 1)).events[0].payload)
    monkeypatch.setattr(groups_module, "MAX_READ_AHEAD_BYTES", 50 * payload)
    async with consuming(store, max_in_flight=1, poll_interval=0.05, page_size=20) as session:
        assert await session.next_batch()  # one event in flight, never acked: the rest waits
        await eventually(lambda: session._queued >= 50, what="the budget read ahead")
        await asyncio.sleep(0.3)  # many polls: a reader that went on would have read on
        assert session._queued <= 50 + 20  # the budget, and the page that crossed it


async def _accounts(store: MemoryStore, count: int) -> None:
    """``count`` accounts opened: one event each, on as many aggregates."""
    executor = CommandExecutor(Store.of(store), REGISTRY)
    spec = REGISTRY.command(bank.OpenAccount.DESCRIPTOR.full_name)
    assert spec is not None
    for n in range(count):
        request = CommandRequest(
            command_id=str(uuid.uuid4()), aggregate_id=f"acc-{n}", spec=spec, message=bank.OpenAccount(owner="ann")
        )
        await executor.execute(request, None)


async def test_a_session_sends_no_more_bytes_at_once_than_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # max_in_flight counts events (up to 10,000): with large events, one
    # consumer that never answers could make the server hold that many.
    store = MemoryStore()
    await _accounts(store, 100)
    payload = len((await store.read_log(0, LogFilter(), 1)).events[0].payload)
    monkeypatch.setattr(groups_module, "MAX_IN_FLIGHT_BYTES", 10 * payload)
    sent = 0
    async with consuming(store, max_in_flight=1_000, poll_interval=0.05) as session:
        while sent < 100:
            batch = await session.next_batch()
            assert batch is not None and 0 < len(batch) <= 10  # the budget's worth, not all 100 aggregates
            session.ack([d.event.event_id for d in batch])  # answered: the next ones go
            sent += len(batch)


async def test_a_batch_of_deliveries_is_closed_at_its_byte_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    # A batch took what max_in_flight and the bytes in flight allowed, in
    # one message: with large events, more than a client takes in one (4
    # MiB by default), and all of it left in gRPC's hands by a consumer
    # that stops reading. Now a batch closes at the bound (one event always).
    store = MemoryStore()
    await _accounts(store, 100)
    event_bytes = max(e.stored_size() for e in (await store.read_log(0, LogFilter(), 100)).events)
    monkeypatch.setattr(groups_module, "MAX_BATCH_BYTES", 5 * event_bytes)
    received: list[str] = []
    async with consuming(store, max_in_flight=1_000, poll_interval=0.05) as session:
        while len(received) < 100:
            batch = await session.next_batch()
            assert batch
            assert sum(d.event.stored_size() for d in batch[:-1]) < 5 * event_bytes  # the last one crossed it
            received += [d.event.event_id for d in batch]
            session.ack([d.event.event_id for d in batch])
    assert len(set(received)) == 100  # every one, once


def _unpassed(session: ConsumerSession) -> int:
    """Events the session read that its checkpoints have not passed."""
    return sum(len(segment.outstanding) for segment in session._segments.values())


async def _deliver_until_quiet(session: ConsumerSession, *, held: str) -> int:
    """Take batches and ack every event but ``held`` until none comes for
    half a second; return how many events came."""
    delivered = 0
    while True:
        try:
            async with asyncio.timeout(0.5):
                batch = await session.next_batch()
        except TimeoutError:
            return delivered
        assert batch
        delivered += len(batch)
        session.ack([d.event.event_id for d in batch if d.event.event_id != held])


async def test_an_unanswered_event_holds_back_no_more_than_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    # The checkpoint cannot pass an event that goes unanswered, so every
    # event after it stayed listed, acked or not, until it was parked (after
    # its attempts' ack timeouts): at 10,000 events a second, millions.
    store = MemoryStore()
    await _accounts(store, 400)
    monkeypatch.setattr(groups_module, "MAX_UNCHECKPOINTED", 50)
    async with consuming(store, max_in_flight=1_000, poll_interval=0.05, page_size=20) as session:
        first = await session.next_batch()
        assert first
        held = first[0].event.event_id  # never answered (its ack timeout is 30 s)
        session.ack([d.event.event_id for d in first[1:]])
        delivered = len(first) + await _deliver_until_quiet(session, held=held)
        assert delivered <= 50 + 20  # the bound, and the page that crossed it: not all 400
        assert _unpassed(session) <= 50 + 20

        session.ack([held])  # the checkpoint passes them all: reading goes on
        delivered += await _deliver_until_quiet(session, held=held)
        assert delivered == 400
        await eventually(lambda: _unpassed(session) == 0, what="the checkpoint past every event")


async def test_a_group_made_again_leaves_nothing_of_what_it_was() -> None:
    # What each group's sessions sent was kept per group spec, for good: a
    # group deleted and made again with other settings left the old counts.
    store = MemoryStore()
    await deposits(store, 3)
    groups = SubscriptionGroups(store, store, READER, lease_seconds=5, poll_interval=0.05)
    for segments in (1, 2, 3):
        spec = GroupSpec(name="ledger", segments=segments)
        spec = await created_group(store, spec)
        session = await groups.open(spec, consumer="c", max_in_flight=10)
        assert await session.next_batch()  # sent, never settled: counted
        await session.close()
        await store.delete_group(spec.name)
    assert list(groups._deliveries) == [(spec.name, spec.incarnation)]


class GatedCommits(MemoryStore):
    """Holds each segment commit while ``gate`` is clear."""

    def __init__(self) -> None:
        super().__init__()
        self.committing = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()

    async def commit_segment(self, *args: Any, **kwargs: Any) -> None:
        self.committing.set()
        await self.gate.wait()
        await super().commit_segment(*args, **kwargs)


async def test_a_holder_that_hands_a_segment_to_a_consumer_who_joined_commits_its_acks_first() -> None:
    # docs/subscriptions.md, "What a move delivers again": a segment given up
    # because a consumer joined takes its holder's acks with it. Before the
    # fix the lease went at the heartbeat that decided it, and the acks not
    # yet committed (a commit round under way) were refused with the lease:
    # the joining consumer got those acknowledged events again.
    store = GatedCommits()
    await _accounts(store, 40)
    spec = GroupSpec(name="ledger", segments=2)
    spec = await created_group(store, spec)
    groups = SubscriptionGroups(store, store, READER, lease_seconds=30, poll_interval=0.05)
    first = await groups.open(spec, consumer="first", max_in_flight=100)
    second = None
    try:
        delivered: list[str] = []
        while len(delivered) < 40:
            batch = await first.next_batch()
            assert batch
            delivered += [d.event.event_id for d in batch]
        store.gate.clear()
        first.ack(delivered)  # all acknowledged; their round is being written
        await store.committing.wait()
        second = await groups.open(spec, consumer="second", max_in_flight=100)  # joins; nothing free yet
        giving_up = asyncio.ensure_future(first.keeper.beat())  # above its share now: gives a segment up
        await asyncio.sleep(0.1)
        store.gate.set()
        await giving_up
        await second.keeper.beat()  # takes the segment given up
        assert first.keeper.held("subscription-group:ledger") != second.keeper.held("subscription-group:ledger")
        assert second.keeper.held("subscription-group:ledger")
        state = await store.load_group("ledger")
        assert state is not None and state.acknowledged == 40
        with pytest.raises(TimeoutError):  # nothing acknowledged comes again
            async with asyncio.timeout(0.5):
                await second.next_batch()
    finally:
        await first.close()
        if second is not None:
            await second.close()


async def test_a_session_of_a_group_deleted_and_created_again_ends_group_not_found() -> None:
    # docs/subscriptions.md: the new group is another incarnation. A session
    # of the old one went on into the new one when both happened between
    # two of its looks at the group, with the old one's attempt counts.
    store = MemoryStore()
    await deposits(store, 1)
    spec = await created_group(store, GroupSpec(name="ledger", segments=1))
    groups = SubscriptionGroups(store, store, READER, lease_seconds=5, poll_interval=0.05)
    session = await groups.open(spec, consumer="c", max_in_flight=10)
    try:
        assert await session.next_batch()
        await store.delete_group("ledger")
        await store.create_group(GroupSpec(name="ledger", segments=1))

        async def until_it_ends() -> None:
            while True:
                await session.next_batch()

        with pytest.raises(ResourceNotFound) as ended:
            await asyncio.wait_for(until_it_ends(), 5)
        assert ended.value.reason == "GROUP_NOT_FOUND"
    finally:
        await session.close()


async def test_a_segment_handed_to_a_consumer_who_joined_takes_the_acks_above_its_checkpoint_and_a_late_ack_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # docs/subscriptions.md, "What a move delivers again": the first event
    # of each segment is held unacked (a slow handler), so the checkpoints
    # stay before them while every later event is acked. Before the fix the
    # segment given up to the consumer who joined went with its checkpoint
    # alone, and that consumer got every acked event again.
    store = MemoryStore()
    await _accounts(store, 40)
    spec = await created_group(store, GroupSpec(name="ledger", segments=2))
    groups = SubscriptionGroups(store, store, READER, lease_seconds=30, poll_interval=0.05)
    first = await groups.open(spec, consumer="first", max_in_flight=100)
    second = None
    try:
        delivered: list[Delivery] = []
        while len(delivered) < 40:
            batch = await first.next_batch()
            assert batch
            delivered += batch
        held: dict[int, Delivery] = {}
        for delivery in sorted(delivered, key=lambda d: d.event.position):
            assert delivery.segment is not None
            held.setdefault(delivery.segment.number, delivery)
        assert len(held) == 2
        held_ids = {d.event.event_id for d in held.values()}
        first.ack([d.event.event_id for d in delivered if d.event.event_id not in held_ids])
        second = await groups.open(spec, consumer="second", max_in_flight=100)  # joins; nothing free yet
        await first.keeper.beat()  # above its share now: gives a segment up
        await second.keeper.beat()  # takes the segment given up
        (moved,) = (int(name) for name in second.keeper.held("subscription-group:ledger"))
        batch = await asyncio.wait_for(second.next_batch(), 5)
        assert batch is not None
        (again,) = batch  # only the held event comes again
        assert again.event.event_id == held[moved].event.event_id
        with pytest.raises(TimeoutError):  # nothing acknowledged comes again
            async with asyncio.timeout(0.5):
                await second.next_batch()
        with caplog.at_level(logging.WARNING, logger="service.groups"):
            first.ack([held[moved].event.event_id])  # too late: its segment moved on
            first.ack([held[moved].event.event_id])  # a retry of it: said once
        (late,) = [r.getMessage() for r in caplog.records if "LATE_ACK" in r.getMessage()]
        assert held[moved].event.event_id in late
        second.ack([again.event.event_id])
        await first.close()
        await second.close()
        state = await store.load_group("ledger")
        assert state is not None and state.checkpoint(moved).acknowledged == len(
            [d for d in delivered if d.segment is not None and d.segment.number == moved]
        )  # each of its events counted once
    finally:
        await first.close()
        if second is not None:
            await second.close()
