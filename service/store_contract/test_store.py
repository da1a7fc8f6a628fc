"""The contract every StoreAdapter adapter passes. An adapter's own tests only
add to this suite; they never replace it."""

from __future__ import annotations

import asyncio

import pytest

from service.errors import CommandAlreadyRecorded, ConcurrencyConflict
from service.store.base import AggregateQuery, SnapshotAndEvents, SnapshotKind, StoreAdapter
from service.store.records import AggregateHead, AggregateSummary, LogFilter, Rejection, Snapshot
from service.store_contract.contents import ContentsOf
from service.store_contract.records import command_record, new_event

# Every test here is a coroutine (the plugin runs them on pytest-asyncio).
pytestmark = pytest.mark.asyncio


async def test_first_append_numbers_versions_from_one(store: StoreAdapter) -> None:
    recorded = await store.append("a-1", [new_event(), new_event(), new_event()], 0)
    assert [e.version for e in recorded] == [1, 2, 3]
    assert all(e.aggregate_id == "a-1" for e in recorded)


async def test_positions_increase_across_aggregates(store: StoreAdapter) -> None:
    first = await store.append("a-1", [new_event(), new_event()], 0)
    second = await store.append("a-2", [new_event()], 0)
    third = await store.append("a-1", [new_event()], 2)
    positions = [e.position for e in [*first, *second, *third]]
    assert positions == sorted(positions)
    assert len(set(positions)) == 4


async def test_append_returns_what_read_returns(store: StoreAdapter) -> None:
    recorded = await store.append(
        "a-1", [new_event(payload=b"\x00\xff binary", metadata={"k": "välue ✓", "empty": ""})], 0
    )
    assert await store.read_aggregate("a-1") == recorded


async def test_append_at_a_stale_version_conflicts_and_writes_nothing(
    store: StoreAdapter, contents: ContentsOf
) -> None:
    await store.append("a-1", [new_event(), new_event()], 0, commands=[command_record("a-1", 1, 2)])
    before = await contents()
    with pytest.raises(ConcurrencyConflict):
        await store.append("a-1", [new_event()], 1, commands=[command_record("a-1", 2, 2)])
    assert (await contents()).changes_since(before) == {}


async def test_append_ahead_of_the_aggregate_conflicts(store: StoreAdapter) -> None:
    await store.append("a-1", [new_event()], 0)
    with pytest.raises(ConcurrencyConflict):
        await store.append("a-1", [new_event()], 5)
    assert len(await store.read_aggregate("a-1")) == 1


async def test_creating_an_existing_aggregate_conflicts(store: StoreAdapter) -> None:
    await store.append("a-1", [new_event()], 0)
    with pytest.raises(ConcurrencyConflict):
        await store.append("a-1", [new_event()], 0)


async def test_concurrent_appends_at_one_version_let_exactly_one_win(store: StoreAdapter) -> None:
    await store.append("a-1", [new_event()], 0)
    results = await asyncio.gather(
        *(store.append("a-1", [new_event(), new_event()], 1) for _ in range(8)), return_exceptions=True
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, ConcurrencyConflict) for r in results if isinstance(r, BaseException))
    assert [e.version for e in await store.read_aggregate("a-1")] == [1, 2, 3]


async def test_versions_stay_gapless_over_many_appends(store: StoreAdapter) -> None:
    version = 0
    for size in (1, 3, 2, 5, 1):
        await store.append("a-1", [new_event() for _ in range(size)], version)
        version += size
    assert [e.version for e in await store.read_aggregate("a-1")] == list(range(1, version + 1))


async def test_head_is_the_type_and_latest_version(store: StoreAdapter) -> None:
    assert await store.head("a-1") is None
    await store.append("a-1", [new_event(aggregate_type="Account"), new_event(aggregate_type="Account")], 0)
    assert await store.head("a-1") == AggregateHead("Account", 2)


async def test_aggregates_are_listed_by_prefix_in_pages(store: StoreAdapter) -> None:
    for aggregate_id, count in [("acc-2", 2), ("acc-10", 1), ("box-1", 3), ("acc-1", 1), ("ac", 1)]:
        await store.append(
            aggregate_id,
            [new_event(aggregate_type="Box" if aggregate_id.startswith("box") else "Account") for _ in range(count)],
            0,
        )
    await store.append("acc-2", [new_event(aggregate_type="Account")], 2)
    listed = await store.list_aggregates("acc-", limit=10)
    assert listed == [
        AggregateSummary("acc-1", "Account", 1),
        AggregateSummary("acc-10", "Account", 1),
        AggregateSummary("acc-2", "Account", 3),
    ]
    first = await store.list_aggregates("", limit=2)
    assert [a.aggregate_id for a in first] == ["ac", "acc-1"]
    rest = await store.list_aggregates("", after=first[-1].aggregate_id, limit=10)
    assert [a.aggregate_id for a in rest] == ["acc-10", "acc-2", "box-1"]
    assert rest[-1] == AggregateSummary("box-1", "Box", 3)
    assert await store.list_aggregates("zzz", limit=10) == []
    assert await store.list_aggregates("acc-1", limit=10) == [
        AggregateSummary("acc-1", "Account", 1),
        AggregateSummary("acc-10", "Account", 1),
    ]


async def test_a_prefix_is_matched_literally(store: StoreAdapter) -> None:
    """Characters that are wildcards in LIKE or GLOB match only themselves."""
    for aggregate_id in ["a%1", "a_1", "ab1", "a*1", "a[1"]:
        await store.append(aggregate_id, [new_event()], 0)
    assert [a.aggregate_id for a in await store.list_aggregates("a%", limit=10)] == ["a%1"]
    assert [a.aggregate_id for a in await store.list_aggregates("a_", limit=10)] == ["a_1"]
    assert [a.aggregate_id for a in await store.list_aggregates("a*", limit=10)] == ["a*1"]


async def test_read_of_an_unknown_aggregate_is_empty(store: StoreAdapter) -> None:
    assert await store.read_aggregate("nobody") == []


async def test_read_from_and_to_version(store: StoreAdapter) -> None:
    await store.append("a-1", [new_event() for _ in range(6)], 0)
    events = await store.read_aggregate("a-1", AggregateQuery(from_version=3, to_version=5))
    assert [e.version for e in events] == [3, 4, 5]


async def test_read_filters_by_origin(store: StoreAdapter) -> None:
    await store.append("a-1", [new_event(origin="web"), new_event(origin="batch"), new_event(origin="web")], 0)
    events = await store.read_aggregate("a-1", AggregateQuery(origin="web"))
    assert [e.version for e in events] == [1, 3]


async def test_read_filters_by_event_types(store: StoreAdapter) -> None:
    await store.append("a-1", [new_event("t.A"), new_event("t.B"), new_event("t.C"), new_event("t.A")], 0)
    events = await store.read_aggregate("a-1", AggregateQuery(event_types=frozenset({"t.A", "t.C"})))
    assert [(e.version, e.event_type) for e in events] == [(1, "t.A"), (3, "t.C"), (4, "t.A")]


async def test_read_with_limit_and_backwards(store: StoreAdapter) -> None:
    await store.append("a-1", [new_event() for _ in range(5)], 0)
    forwards = await store.read_aggregate("a-1", AggregateQuery(limit=2))
    backwards = await store.read_aggregate("a-1", AggregateQuery(limit=2, backwards=True))
    assert [e.version for e in forwards] == [1, 2]
    assert [e.version for e in backwards] == [5, 4]


async def test_a_recorded_command_can_be_found(store: StoreAdapter) -> None:
    record = command_record("a-1", 1, 2)
    await store.append("a-1", [new_event(), new_event()], 0, commands=[record])
    assert await store.find_command(record.command_id) == record
    assert await store.find_command("00000000-0000-0000-0000-000000000000") is None


async def test_a_recorded_command_id_is_refused_with_the_original_record(store: StoreAdapter) -> None:
    record = command_record("a-1", 1, 1)
    await store.append("a-1", [new_event()], 0, commands=[record])
    retry = command_record("a-1", 2, 2, command_id=record.command_id)
    with pytest.raises(CommandAlreadyRecorded) as raised:
        await store.append("a-1", [new_event()], 1, commands=[retry])
    assert raised.value.record == record
    assert len(await store.read_aggregate("a-1")) == 1


async def test_a_recorded_command_id_wins_over_a_version_conflict(store: StoreAdapter) -> None:
    record = command_record("a-1", 1, 1)
    await store.append("a-1", [new_event()], 0, commands=[record])
    await store.append("a-1", [new_event()], 1)
    retry = command_record("a-1", 1, 1, command_id=record.command_id)
    with pytest.raises(CommandAlreadyRecorded):
        await store.append("a-1", [new_event()], 0, commands=[retry])


async def test_a_rejection_is_recorded_without_events(store: StoreAdapter) -> None:
    await store.append("a-1", [new_event()], 0)
    rejection = Rejection("ValidationError", "INSUFFICIENT_FUNDS", "no money", {"balance": "3"})
    record = command_record("a-1", 2, 1, rejection=rejection)
    assert await store.append("a-1", [], 1, commands=[record]) == []
    assert await store.find_command(record.command_id) == record
    assert (await store.head("a-1")) == AggregateHead("Thing", 1)


async def test_a_rejection_decided_on_a_stale_version_is_not_recorded(store: StoreAdapter) -> None:
    await store.append("a-1", [new_event(), new_event()], 0)
    record = command_record("a-1", 2, 1, rejection=Rejection("ValidationError", "R", "m"))
    with pytest.raises(ConcurrencyConflict):
        await store.append("a-1", [], 1, commands=[record])
    assert await store.find_command(record.command_id) is None


async def test_a_failed_append_records_no_command(store: StoreAdapter) -> None:
    await store.append("a-1", [new_event()], 0)
    record = command_record("a-1", 1, 1)
    with pytest.raises(ConcurrencyConflict):
        await store.append("a-1", [new_event()], 0, commands=[record])
    assert await store.find_command(record.command_id) is None


async def test_snapshot_round_trip(store: StoreAdapter) -> None:
    assert await store.load_snapshot("a-1") is None
    snapshot = Snapshot("a-1", "Account", 10, "bank.v1.Account", 1, b"\x0a\x03ann")
    await store.save_snapshot(snapshot)
    assert await store.load_snapshot("a-1") == snapshot


async def test_an_older_snapshot_does_not_replace_a_newer_one(store: StoreAdapter) -> None:
    newer = Snapshot("a-1", "Account", 20, "bank.v1.Account", 1, b"new")
    await store.save_snapshot(newer)
    await store.save_snapshot(Snapshot("a-1", "Account", 10, "bank.v1.Account", 1, b"old"))
    assert await store.load_snapshot("a-1") == newer


async def test_a_load_of_a_kind_takes_its_newest_snapshot_under_newer_ones_of_other_kinds(store: StoreAdapter) -> None:
    # Taken by the code in service now (fingerprint "new", schema 2), under
    # snapshots of another state fingerprint and another schema version (three
    # in all: the stores keep three by default).
    kind = SnapshotKind("Account", "bank.v1.Account#new", 2)
    usable = Snapshot("a-1", "Account", 4, "bank.v1.Account#new", 2, b"usable")
    await store.append("a-1", [new_event() for _ in range(9)], 0)
    await store.save_snapshot(usable)
    await store.save_snapshot(Snapshot("a-1", "Account", 6, "bank.v1.Account#old", 2, b"other layout"))
    await store.save_snapshot(Snapshot("a-1", "Account", 8, "bank.v1.Account#new", 1, b"other schema"))
    assert await store.load_snapshot("a-1", kind=kind) == usable
    assert await store.load_snapshot("a-1", at_most=3, kind=kind) is None
    newest = await store.load_snapshot("a-1")  # of any kind: the newest
    assert newest is not None and newest.version == 8
    if isinstance(store, SnapshotAndEvents):  # in one round trip: that snapshot, the events after it
        loaded = await store.load_from_snapshot("a-1", kind)
        assert loaded is not None and loaded[0] == usable
        assert [event.version for event in loaded[1]] == [5, 6, 7, 8, 9]
        below = await store.load_from_snapshot("a-1", kind, to_version=3)
        assert below is not None and below[0] is None
        assert [event.version for event in below[1]] == [1, 2, 3]


async def test_ping_succeeds_on_an_open_store(store: StoreAdapter) -> None:
    await store.ping()


async def test_several_commands_are_recorded_with_one_append(store: StoreAdapter) -> None:
    first, second = command_record("a-1", 1, 1), command_record("a-1", 2, 3)
    await store.append("a-1", [new_event(), new_event(), new_event()], 0, commands=[first, second])
    assert await store.find_command(first.command_id) == first
    assert await store.find_command(second.command_id) == second


async def test_one_recorded_command_id_refuses_the_whole_append(store: StoreAdapter) -> None:
    done = command_record("a-1", 1, 1)
    await store.append("a-1", [new_event()], 0, commands=[done])
    fresh = command_record("a-1", 2, 2)
    with pytest.raises(CommandAlreadyRecorded):
        await store.append("a-1", [new_event(), new_event()], 1, commands=[fresh, done])
    assert await store.find_command(fresh.command_id) is None
    assert len(await store.read_aggregate("a-1")) == 1


async def test_concurrent_appends_to_many_aggregates_each_get_their_own_outcome(store: StoreAdapter) -> None:
    """Stores may commit appends that arrive together in one transaction
    (PostgreSQL does); each append still succeeds or fails on its own."""
    for i in range(6):
        await store.append(f"a-{i}", [new_event()], 0)
    done = command_record("a-2", 2, 2)
    await store.append("a-2", [new_event()], 1, commands=[done])
    attempts = {
        "fresh": [store.append(f"n-{i}", [new_event(), new_event()], 0) for i in range(10)],
        "moving on": [store.append(f"a-{i}", [new_event()], 1) for i in (0, 1, 3, 4)],
        "stale": [store.append("a-5", [new_event()], 7)],
        "duplicate": [
            store.append("a-2", [new_event()], 2, commands=[command_record("a-2", 3, 3, command_id=done.command_id)])
        ],
    }
    outcomes = {name: await asyncio.gather(*calls, return_exceptions=True) for name, calls in attempts.items()}
    assert all(not isinstance(r, BaseException) and [e.version for e in r] == [1, 2] for r in outcomes["fresh"])
    assert all(not isinstance(r, BaseException) and [e.version for e in r] == [2] for r in outcomes["moving on"])
    assert isinstance(outcomes["stale"][0], ConcurrencyConflict)
    assert isinstance(outcomes["duplicate"][0], CommandAlreadyRecorded)
    written = [e for r in outcomes["fresh"] + outcomes["moving on"] for e in r]  # type: ignore[union-attr]
    assert len({e.position for e in written}) == len(written) == 24
    log = await store.read_log(0, LogFilter(), 1000)
    assert [e.position for e in log.events] == sorted(e.position for e in log.events)
    assert {e.event_id for e in written} <= {e.event_id for e in log.events}
    assert len(await store.read_aggregate("a-2")) == 2
