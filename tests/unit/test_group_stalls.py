"""When a consumer session ends its consumer as stalled (service/groups.py,
``ConsumerSession.writing``): its stream has waited in one write for the
group's ack timeout (at least ``MIN_STALL_SECONDS``) with no ack or nack
meanwhile. An answer puts the cut off; the session is released at once,
its stream's next step raises CONSUMER_STALLED, and an event in flight at
its last attempt is parked as a timed-out one is. The cut over real
sockets: tests/integration/test_subscription_groups_stalled.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from service import groups as groups_module
from service.errors import ConsumerStalled
from service.groups import ACK_TIMEOUT, ConsumerSession, SubscriptionGroups
from service.store.grouping import GroupSpec
from service.store.memory import MemoryStore
from tests.support.bank_log import READER, created_group, deposits
from tests.support.waiting import eventually


@asynccontextmanager
async def consuming(
    spec: GroupSpec, store: MemoryStore | None = None
) -> AsyncIterator[tuple[SubscriptionGroups, ConsumerSession]]:
    store = store if store is not None else MemoryStore()
    await deposits(store, 9)  # and the account's opening: one aggregate, ten events
    spec = await created_group(store, spec)
    groups = SubscriptionGroups(store, store, READER, lease_seconds=5, poll_interval=0.05)
    session = await groups.open(spec, consumer="c", max_in_flight=10)
    try:
        yield groups, session
    finally:
        groups.release(session)
        await session.close()


@pytest.fixture(autouse=True)
def short_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(groups_module, "MIN_STALL_SECONDS", 0.05)


async def test_a_consumer_that_answers_while_a_write_waits_is_not_cut_until_it_stops_answering() -> None:
    async with consuming(GroupSpec(name="ledger", segments=1, ack_timeout_ms=300)) as (groups, session):
        (delivery,) = await session.next_batch() or []  # one aggregate: one event at a time
        session.writing()  # gRPC holds the message: the consumer does not read
        for _ in range(6):  # 0.6 s in the write, twice the ack timeout, answering every 0.1 s
            await asyncio.sleep(0.1)
            session.nack([], "")  # an answer (here naming nothing)
        assert groups.active == 1
        await eventually(lambda: groups.active == 0, within=2, what="the session cut once the answers stopped")
        session.written()  # gRPC gave up the write at last: the stream's status comes next
        with pytest.raises(ConsumerStalled) as cut:
            await session.next_batch()
        assert cut.value.reason == "CONSUMER_STALLED"
        session.ack([delivery.event.event_id])  # too late: its event is the group's other consumers' now
        assert session._deliveries.count(delivery.event.event_id) == 1  # its attempt, for the next holder


async def test_each_write_gets_the_whole_bound_from_its_own_start() -> None:
    # One timer serves many writes: armed at a write that went out at once,
    # it finds a later one under way and waits the bound out for that one.
    async with consuming(GroupSpec(name="ledger", segments=1, ack_timeout_ms=300)) as (groups, session):
        assert await session.next_batch()
        session.writing()
        session.written()  # taken in at once
        await asyncio.sleep(0.2)
        session.writing()  # 0.2 s after the first: cut no earlier than 0.5 s
        await asyncio.sleep(0.2)
        assert groups.active == 1
        await eventually(lambda: groups.active == 0, within=2, what="the session cut")


async def test_a_write_that_waits_less_than_the_floor_is_not_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(groups_module, "MIN_STALL_SECONDS", 0.4)
    async with consuming(GroupSpec(name="ledger", segments=1, ack_timeout_ms=10)) as (groups, session):
        assert await session.next_batch()
        session.writing()
        await asyncio.sleep(0.25)  # 25 ack timeouts, under the floor
        assert groups.active == 1
        session.written()
        await asyncio.sleep(0.25)  # out of the write: no cut, however long
        assert groups.active == 1


async def test_a_stalled_consumers_event_at_its_last_attempt_is_parked_as_timed_out() -> None:
    store = MemoryStore()
    spec = GroupSpec(name="ledger", segments=1, ack_timeout_ms=100, max_attempts=1)
    async with consuming(spec, store) as (groups, session):
        (delivery,) = await session.next_batch() or []
        session.writing()
        await eventually(lambda: groups.active == 0, within=2, what="the session cut")

        async def parked() -> bool:
            state = await store.load_group("ledger")
            return state is not None and state.parked == 1

        await eventually(parked, within=2, what="the event parked with the session's last commit")
        (event,) = await store.list_parked("ledger")
        assert (event.event_id, event.attempts, event.reason) == (delivery.event.event_id, 1, ACK_TIMEOUT)
