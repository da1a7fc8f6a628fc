"""Group commit on PostgreSQL: appends that arrive together share one
transaction, and one bad append does not fail its batch-mates."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from service.errors import CommandAlreadyRecorded, ConcurrencyConflict
from service.store.postgres import PostgresStore
from tests.support.events import command_record, new_event

pytestmark = pytest.mark.postgres


async def test_appends_arriving_together_are_committed_in_batches(postgres_store: PostgresStore) -> None:
    results = await asyncio.gather(*(postgres_store.append(f"a-{i}", [new_event()], 0) for i in range(200)))
    assert all(len(r) == 1 for r in results)
    group = postgres_store._group
    assert group.batches >= 1
    assert group.batched_appends > group.batches  # some batch held more than one append
    positions = sorted(r[0].position for r in results)
    assert positions == list(range(1, 201))  # contiguous: nothing rolled back


async def test_a_conflicting_append_falls_back_alone_and_its_batch_mates_commit(postgres_store: PostgresStore) -> None:
    await postgres_store.append("hot", [new_event()], 0)
    done = command_record("dup", 1, 1)
    await postgres_store.append("dup", [new_event()], 0, commands=[done])
    calls = [postgres_store.append(f"a-{i}", [new_event()], 0) for i in range(30)]
    calls.append(postgres_store.append("hot", [new_event()], 0))  # stale
    calls.append(
        postgres_store.append(
            "dup", [new_event()], 1, commands=[command_record("dup", 2, 2, command_id=done.command_id)]
        )
    )
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(not isinstance(o, BaseException) for o in outcomes[:30])
    assert isinstance(outcomes[30], ConcurrencyConflict)
    assert isinstance(outcomes[31], CommandAlreadyRecorded)
    # only the recorded command id needed the one-by-one path: the stale
    # append was told apart in one read, and its batch-mates re-batched
    assert postgres_store.batch_counts().alone == 1
    assert [e.version for e in await postgres_store.read_aggregate("hot")] == [1]
    assert [e.version for e in await postgres_store.read_aggregate("dup")] == [1]


async def test_a_batch_rolled_back_as_a_deadlocks_victim_is_written_again(
    postgres_store: PostgresStore, postgres_url: str
) -> None:
    # The batch's first statement fails as a deadlock's victim would (its
    # transaction rolled back whole); the next attempt goes through. Counted
    # by a sequence, which no rollback takes back.
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            "CREATE SEQUENCE inserts;"
            " CREATE FUNCTION chronicle.first_insert_deadlocks() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN IF nextval('public.inserts') = 1 THEN"
            " RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01'; END IF; RETURN NULL; END $$;"
            " CREATE TRIGGER first_insert_deadlocks AFTER INSERT ON chronicle.events"
            " FOR EACH STATEMENT EXECUTE FUNCTION chronicle.first_insert_deadlocks()"
        )
    results = await asyncio.gather(*(postgres_store.append(f"d-{i}", [new_event()], 0) for i in range(5)))
    assert all(len(r) == 1 for r in results)
    assert postgres_store.batch_counts().alone == 0  # written again as a batch, not one by one
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        attempts = conn.execute("SELECT last_value FROM inserts").fetchone()
        stored = conn.execute("SELECT count(*) FROM chronicle.events WHERE aggregate_id LIKE 'd-%'").fetchone()
    assert attempts is not None and attempts[0] >= 2
    assert stored == (5,)
