"""A consumer that takes its deliveries in but answers none
(service/groups.py, ``ConsumerSession._count_unanswered``): cut after the
group's ``max_unanswered_timeouts`` ack timeouts in a row with no ack or
nack, a window of events timing out together counting once; an answer
starts the count again; 0 never cuts; the setting, updated, is taken at the
session's next look at the group. Over real sockets, on SQLite and
PostgreSQL: tests/integration/test_subscription_groups_unanswered.py."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.errors import ConsumerUnresponsive
from service.groups import ConsumerSession, Delivery, SubscriptionGroups
from service.processing.commands import CommandRequest
from service.processing.executor import CommandExecutor
from service.store.base import Store
from service.store.grouping import GroupSpec
from service.store.memory import MemoryStore
from tests.support.bank_log import READER, REGISTRY, created_group


async def open_accounts(store: MemoryStore, count: int) -> None:
    """Accounts acc-0 … acc-(count-1), each opened: one event each."""
    executor = CommandExecutor(Store.of(store), REGISTRY)
    spec = REGISTRY.command(bank.OpenAccount.DESCRIPTOR.full_name)
    assert spec is not None
    for n in range(count):
        request = CommandRequest(
            command_id=str(uuid.uuid4()), aggregate_id=f"acc-{n}", spec=spec, message=bank.OpenAccount(owner="ann")
        )
        await executor.execute(request, None)


@asynccontextmanager
async def consuming(
    spec: GroupSpec, *, accounts: int = 1, store: MemoryStore | None = None
) -> AsyncIterator[tuple[SubscriptionGroups, ConsumerSession]]:
    store = store if store is not None else MemoryStore()
    await open_accounts(store, accounts)
    spec = await created_group(store, spec)
    groups = SubscriptionGroups(store, store, READER, lease_seconds=5, poll_interval=0.05)
    session = await groups.open(spec, consumer="silent", max_in_flight=100)
    try:
        yield groups, session
    finally:
        groups.release(session)
        await session.close()


SPEC = GroupSpec(
    name="ledger", segments=1, ack_timeout_ms=100, retry_backoff_ms=10, max_retry_backoff_ms=10, max_attempts=50
)


Sent = tuple[str, int]  # an event id, and the attempt it was sent as


def sending(batch: list[Delivery] | None) -> list[Sent]:
    return [(d.event.event_id, d.attempt) for d in batch or []]


async def take_until_cut(session: ConsumerSession, within: float = 5.0) -> list[Sent]:
    """Every delivery the session sends until it ends ConsumerUnresponsive."""
    sent: list[Sent] = []
    async with asyncio.timeout(within):
        while True:
            try:
                sent += sending(await session.next_batch())
            except ConsumerUnresponsive:
                return sent


async def test_a_consumer_that_answers_nothing_is_cut_after_that_many_ack_timeouts_in_a_row() -> None:
    async with consuming(dataclasses.replace(SPEC, max_unanswered_timeouts=3)) as (groups, session):
        sent = await take_until_cut(session)
        assert [attempt for _, attempt in sent] == [1, 2, 3]  # the one event, sent again after each timeout
        assert groups.active == 0  # released at once: its segment is the others' to take
        with pytest.raises(ConsumerUnresponsive) as cut:
            await session.next_batch()
        assert cut.value.reason == "CONSUMER_UNRESPONSIVE"
        assert cut.value.metadata["consumer"] == session.member_id
        # Its attempts stay counted for the next holder of the segment here.
        event_id = sent[0][0]
        assert session._deliveries.count(event_id) == 3
        session.ack([event_id])  # too late: the event is the others' now


async def test_events_timing_out_together_count_as_one_ack_timeout() -> None:
    async with consuming(dataclasses.replace(SPEC, max_unanswered_timeouts=2), accounts=20) as (_, session):
        sent = await take_until_cut(session)
    # Two rounds of the whole window, not two events: each round's twenty
    # timeouts are one ack timeout of silence.
    assert sorted(attempt for _, attempt in sent) == [1] * 20 + [2] * 20


async def test_an_answer_starts_the_count_again() -> None:
    async with consuming(dataclasses.replace(SPEC, max_unanswered_timeouts=3), accounts=2) as (groups, session):
        sent: list[Sent] = []
        while max((attempt for _, attempt in sent), default=0) < 3:
            sent += sending(await session.next_batch())
        # Two rounds timed out unanswered, the third under way: an answer.
        session.nack([sent[-1][0]], "busy")
        more = await take_until_cut(session)
        # Three more timeouts in a row after the answer before the cut (the
        # event in flight's third, its fourth and fifth): without the answer
        # the cut came at the third's timeout, and nothing went out after it.
        assert max(attempt for _, attempt in more) >= 5, more
        assert groups.active == 0


async def test_none_is_cut_with_the_bound_at_0_until_an_update_sets_one() -> None:
    store = MemoryStore()
    spec = dataclasses.replace(SPEC, max_unanswered_timeouts=0)
    async with consuming(spec, store=store) as (groups, session):
        sent: list[Sent] = []
        while len(sent) < 6:  # five timeouts in a row: never cut
            sent += sending(await session.next_batch())
        assert groups.active == 1
        await store.update_group(dataclasses.replace(session.spec, max_unanswered_timeouts=2))
        more = await take_until_cut(session)  # the session reads the setting at its next poll
        assert len(more) <= 4 and groups.active == 0
