"""Group commit on PostgreSQL: appends that arrive together share one
transaction, and one bad append does not fail its batch-mates."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from service.errors import CommandAlreadyRecorded, ConcurrencyConflict
from service.store.postgres import PostgresStore
from tests.support.events import command_record, new_event

pytestmark = pytest.mark.postgres


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[PostgresStore]:
    opened = PostgresStore(postgres_url, pool_size=4)
    await opened.open()
    await opened.ping()
    yield opened
    await opened.close()


async def test_appends_arriving_together_are_committed_in_batches(store: PostgresStore) -> None:
    results = await asyncio.gather(*(store.append(f"a-{i}", [new_event()], 0) for i in range(200)))
    assert all(len(r) == 1 for r in results)
    group = store._group
    assert group.batches >= 1
    assert group.batched_appends > group.batches  # some batch held more than one append
    positions = sorted(r[0].position for r in results)
    assert positions == list(range(1, 201))  # contiguous: nothing rolled back


async def test_a_conflicting_append_falls_back_alone_and_its_batch_mates_commit(store: PostgresStore) -> None:
    await store.append("hot", [new_event()], 0)
    done = command_record("dup", 1, 1)
    await store.append("dup", [new_event()], 0, commands=[done])
    calls = [store.append(f"a-{i}", [new_event()], 0) for i in range(30)]
    calls.append(store.append("hot", [new_event()], 0))  # stale
    calls.append(
        store.append("dup", [new_event()], 1, commands=[command_record("dup", 2, 2, command_id=done.command_id)])
    )
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(not isinstance(o, BaseException) for o in outcomes[:30])
    assert isinstance(outcomes[30], ConcurrencyConflict)
    assert isinstance(outcomes[31], CommandAlreadyRecorded)
    # only the recorded command id needed the one-by-one path: the stale
    # append was told apart in one read, and its batch-mates re-batched
    assert store.batch_counts().alone == 1
    assert [e.version for e in await store.read_aggregate("hot")] == [1]
    assert [e.version for e in await store.read_aggregate("dup")] == [1]
