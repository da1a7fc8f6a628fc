"""A reaction's failure counts (``processing/reaction_failures.py``) as a
runner sees them over a store: taken only for the event they were counted
at, written when one is counted, deleted with the event that goes through."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from chronicle.v1 import reaction_service_pb2 as reaction_pb
from service.processing.projections import DocumentCache, ForgottenSubjects, _Batch
from service.processing.reaction_failures import FAILURES_KEY, FailureCounts
from service.store.memory import MemoryStore

REACTION = "r"


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    opened = MemoryStore()
    await opened.open()
    await opened.commit_projection(REACTION, expected_position=0, new_position=4, writes=[])  # before the event at 5
    yield opened
    await opened.close()


async def commit(store: MemoryStore, counts: FailureCounts, position: int, end: int) -> None:
    """What a runner's step commits at the checkpoint ``end`` (from ``position``)."""
    batch = _Batch(REACTION, store, DocumentCache(), ForgottenSubjects())
    counts.write(batch, end)
    await store.commit_projection(REACTION, expected_position=position, new_position=end, writes=batch.writes)
    counts.committed(end)


async def stored(store: MemoryStore) -> reaction_pb.CommandFailures | None:
    document = await store.load_document(REACTION, FAILURES_KEY)
    return None if document is None else reaction_pb.CommandFailures.FromString(document.data)


async def test_a_count_goes_on_in_another_runner_and_reaches_max_attempts(store: MemoryStore) -> None:
    first = FailureCounts(REACTION, store)
    assert not await first.failed("c", 5, max_attempts=3)
    await commit(store, first, 4, 4)  # stopped at the event at 5: the checkpoint stays before it
    assert await stored(store) == reaction_pb.CommandFailures(position=5, attempts={"c": 1})
    second = FailureCounts(REACTION, store)  # a restart
    assert not await second.failed("c", 5, max_attempts=3)
    await commit(store, second, 4, 4)
    third = FailureCounts(REACTION, store)
    assert await third.failed("c", 5, max_attempts=3)
    # Reached, it stays so (a command that could not be parked yet is
    # parked at once the next time), and is not counted past it.
    assert await third.failed("c", 5, max_attempts=3)
    assert await stored(store) == reaction_pb.CommandFailures(position=5, attempts={"c": 2})
    await commit(store, third, 4, 9)  # parked: the checkpoint moves past the event
    assert await stored(store) is None


async def test_a_count_left_for_an_event_the_checkpoint_passed_is_not_taken(store: MemoryStore) -> None:
    counted = FailureCounts(REACTION, store)
    for _ in range(2):
        assert not await counted.failed("c", 5, max_attempts=3)
    await commit(store, counted, 4, 4)
    # Another server sends it through, having met no failure: it leaves the
    # count where it is. Were the same command to fail again at a later
    # event, it would start from one.
    later = FailureCounts(REACTION, store)
    await commit(store, later, 4, 9)
    assert await stored(store) == reaction_pb.CommandFailures(position=5, attempts={"c": 2})
    assert not await later.failed("c", 12, max_attempts=3)
    await commit(store, later, 9, 11)
    assert await stored(store) == reaction_pb.CommandFailures(position=12, attempts={"c": 1})


async def test_a_batch_without_failures_writes_nothing(store: MemoryStore) -> None:
    counts = FailureCounts(REACTION, store)
    batch = _Batch(REACTION, store, DocumentCache(), ForgottenSubjects())
    assert not counts.write(batch, 9)
    assert batch.writes == []
