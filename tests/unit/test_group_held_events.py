"""What a subscription group's consumer session holds of the log, under the
server's room for subscriptions (service/processing/held_events.py): it
reads beyond what it holds only while the room has space, and lets go of
what it read ahead when its consumer stalls, in a write or on a full
window, then reads it again when the consumer moves, missing nothing and
sending nothing twice (service/groups.py, ``_let_go``)."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.groups import ConsumerSession, Delivery, SubscriptionGroups
from service.processing.commands import CommandRequest
from service.processing.executor import CommandExecutor
from service.processing.held_events import HeldEvents, size_of
from service.store.base import Store
from service.store.grouping import GroupSpec
from service.store.memory import MemoryStore
from service.store.records import LogFilter, RecordedEvent
from tests.support.bank_log import READER, REGISTRY, created_group
from tests.support.waiting import eventually

ACCOUNTS = 30
VERSIONS = 10  # each account opened, then nine deposits: 300 events, interleaved


async def interleaved_accounts(store: MemoryStore) -> list[RecordedEvent]:
    """``ACCOUNTS`` accounts with ``VERSIONS`` events each, written round by
    round (so every page holds many aggregates); the log."""
    executor = CommandExecutor(Store.of(store), REGISTRY)
    for version in range(VERSIONS):
        for n in range(ACCOUNTS):
            message = bank.OpenAccount(owner="ann") if version == 0 else bank.Deposit(amount=version)
            spec = REGISTRY.command(message.DESCRIPTOR.full_name)
            assert spec is not None
            request = CommandRequest(command_id=str(uuid.uuid4()), aggregate_id=f"acc-{n}", spec=spec, message=message)
            await executor.execute(request, None)
    return list((await store.read_log(0, LogFilter(), 10_000)).events)


@asynccontextmanager
async def sessions(
    store: MemoryStore, held: HeldEvents, count: int, *, max_in_flight: int, page_size: int = 1000
) -> AsyncIterator[list[ConsumerSession]]:
    """One session of each of ``count`` new groups (each reads the whole
    log), sharing ``held``; closed after."""
    groups = SubscriptionGroups(
        store, store, READER, lease_seconds=5, poll_interval=0.05, page_size=page_size, held=held
    )
    opened = []
    try:
        for n in range(count):
            spec = await created_group(store, GroupSpec(name=f"ledger-{n}", segments=2, ack_timeout_ms=600_000))
            opened.append(await groups.open(spec, consumer="c", max_in_flight=max_in_flight))
        yield opened
    finally:
        for session in opened:
            await session.close()


async def consume_the_rest(session: ConsumerSession, received: list[Delivery], total: int) -> None:
    """Ack what was received, then take and ack every batch until ``total``
    deliveries came."""
    session.ack([d.event.event_id for d in received])
    while len(received) < total:
        async with asyncio.timeout(10):
            batch = await session.next_batch()
        assert batch
        received += batch
        session.ack([d.event.event_id for d in batch])


def assert_each_once_in_order(received: list[Delivery], log: list[RecordedEvent]) -> None:
    assert sorted(d.event.event_id for d in received) == sorted(e.event_id for e in log)  # each once, none missed
    versions: dict[str, list[int]] = defaultdict(list)
    for delivery in received:
        versions[delivery.event.aggregate_id].append(delivery.event.version)
    assert all(seen == list(range(1, VERSIONS + 1)) for seen in versions.values())


@pytest.mark.parametrize("where", ["in a write", "on a full window"])
async def test_a_stalled_session_lets_go_of_its_read_ahead_then_delivers_every_event_once_in_order(
    where: str,
) -> None:
    store = MemoryStore()
    log = await interleaved_accounts(store)
    held = HeldEvents(stall_seconds=0)  # no timer: the test sweeps
    async with sessions(store, held, 1, max_in_flight=20) as (session,):
        received = await session.next_batch()  # the first events: one of each of 20 accounts
        assert received
        session.writing()  # handed to gRPC, which holds it: the consumer does not read
        if where == "on a full window":
            session.written()  # it took them in, and answers nothing
            waiting = asyncio.ensure_future(session.next_batch())
            await asyncio.sleep(0.05)  # waiting for an answer: nothing can go before one
        # It read the whole log ahead (300 events: under its own bounds and
        # the server's room), and holds it all: sent or queued.
        await eventually(lambda: session._queued == 300 - len(received), what="the log read ahead")
        assert held.bytes == session.held_bytes == size_of(log)
        assert held.sweep() == 0  # the first look
        assert held.sweep() == 1  # the same write (or wait) at the next: stalled
        sent = size_of([d.event for d in received])
        assert session._queued == 0 and held.bytes == session.held_bytes == sent  # what was sent stays
        await asyncio.sleep(0.3)  # many polls: a reader that went on would have read again
        assert held.bytes == sent and held.sweep() == 0  # nothing more to let go of
        if where == "in a write":
            session.written()
        else:
            assert not waiting.done()
            session.ack([received[0].event.event_id])  # it answers: it moved
            more = await waiting  # its next event goes, from what was read again
            assert more
            received += more
        await consume_the_rest(session, received, len(log))
        assert_each_once_in_order(received, log)
        await eventually(lambda: held.bytes == 0, what="every event settled and let go of")


async def test_sessions_that_hold_events_read_more_only_while_the_server_has_room() -> None:
    store = MemoryStore()
    log = await interleaved_accounts(store)
    page = 50
    largest_page = page * max(event.stored_size() for event in log)
    room = 2 * largest_page
    held = HeldEvents(read_ahead_bytes=room, stall_seconds=0)
    count = 5
    async with sessions(store, held, count, max_in_flight=10, page_size=page) as opened:
        batches = [await session.next_batch() for session in opened]  # then none answers
        await asyncio.sleep(0.5)  # many polls: readers with room would have read on
        # Each read its first page while it held nothing; more only while
        # all of them held less than the room (each read's estimate may
        # fall a page short). Without the room, each read the whole log
        # (its own bounds: 1,000 events, 32 MiB).
        assert held.bytes <= room + count * largest_page < count * size_of(log)
        assert held.bytes == sum(session.held_bytes for session in opened)
        for session, batch in zip(opened, batches, strict=True):
            assert batch
            received = list(batch)
            await consume_the_rest(session, received, len(log))
            assert_each_once_in_order(received, log)
    assert held.bytes == 0


class GatedReads(MemoryStore):
    """Holds each read of the log after the first while ``gate`` is clear."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.reading = asyncio.Event()

    async def read_log(self, *args: Any, **kwargs: Any) -> Any:
        self.reading.set()
        await self.gate.wait()
        return await super().read_log(*args, **kwargs)


async def test_a_read_under_way_when_its_session_lets_go_is_read_again_from_what_was_let_go() -> None:
    # The read that comes back after the let-go starts after the events let
    # go of: taken as it is, those would never be read again (the segment's
    # checkpoint stuck before them, their aggregates stopped).
    store = GatedReads()
    log = await interleaved_accounts(store)
    held = HeldEvents(stall_seconds=0)
    async with sessions(store, held, 1, max_in_flight=20, page_size=50) as (session,):
        received = await session.next_batch()  # from the first page, 50 events
        assert received
        session.writing()
        store.gate.clear()
        store.reading.clear()
        await asyncio.wait_for(store.reading.wait(), 5)  # the next page is being read
        held.sweep()
        assert held.sweep() == 1
        store.gate.set()
        await asyncio.sleep(0.2)  # the read comes back, after the let-go
        assert session._queued == 0  # thrown away: not queued
        session.written()
        await consume_the_rest(session, received, len(log))
        assert_each_once_in_order(received, log)
