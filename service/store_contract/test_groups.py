"""Subscription groups (``GroupStore``), as every store keeps them: the
settings, one checkpoint per segment moved only from where its holder read
it (and under its lease), the parked events, and the leases by which
consumers share the segments."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
import pytest_asyncio

from service.errors import ConcurrencyConflict, ResourceExists
from service.store.base import StoreAdapter
from service.store.grouping import (
    ConsumerReport,
    GroupConsumer,
    GroupParkedEvent,
    GroupSpec,
    SettledEvent,
    consumer_group,
    segment_lease,
)
from service.store.leasing import Fencing, LeaseMember
from service.store.records import LogFilter
from service.store_contract.contents import ContentsOf
from service.store_contract.records import new_event

# Every test here is a coroutine (the plugin runs them on pytest-asyncio).
pytestmark = pytest.mark.asyncio

SPEC = GroupSpec(
    name="billing",
    log_filter=LogFilter(aggregate_types=frozenset({"Account"}), event_types=frozenset({"bank.v1.Deposited"})),
    start_position=7,
    segments=4,
    max_attempts=3,
    retry_backoff_ms=250,
    max_retry_backoff_ms=4000,
    ack_timeout_ms=1500,
    max_unanswered_timeouts=0,  # kept as given: 0 (never cut) is no "unset"
)


@pytest_asyncio.fixture(autouse=True)  # not pytest's: a store's own run may not be in asyncio's auto mode
async def logged(store: StoreAdapter) -> None:
    """A log of 50 events: a checkpoint is never committed past the log's end."""
    await store.append("filler-1", [new_event() for _ in range(50)], 0)


def settings(spec: GroupSpec) -> GroupSpec:
    """``spec`` without its incarnation: the settings alone."""
    return replace(spec, incarnation="")


# When the events here were parked: microseconds, kept to the microsecond.
PARKED_AT_US = 1_767_225_600_123_456


def parked(
    event_id: str, position: int, *, segment: int = 1, attempts: int = 3, parked_at_us: int = PARKED_AT_US
) -> GroupParkedEvent:
    return GroupParkedEvent(
        event_id=event_id,
        position=position,
        segment=segment,
        aggregate_id="acc-1",
        attempts=attempts,
        reason="boom",
        event_type="bank.v1.MoneyDeposited",
        parked_at_us=parked_at_us,
    )


async def test_a_group_is_created_with_a_checkpoint_per_segment_at_its_start(store: StoreAdapter) -> None:
    assert await store.load_group("billing") is None
    await store.create_group(SPEC)
    group = await store.load_group("billing")
    assert group is not None
    assert settings(group.spec) == SPEC and group.spec.incarnation
    assert [(c.segment, c.position, c.acknowledged) for c in group.checkpoints] == [(s, 7, 0) for s in range(4)]
    assert (group.position, group.acknowledged, group.parked, group.consumers) == (7, 0, 0, ())
    assert [g.spec.name for g in await store.list_groups()] == ["billing"]


async def test_creating_a_group_twice_is_refused_and_writes_nothing(store: StoreAdapter, contents: ContentsOf) -> None:
    await store.create_group(SPEC)
    before = await contents()
    with pytest.raises(ResourceExists) as refused:
        await store.create_group(GroupSpec(name="billing", segments=8))
    assert refused.value.reason == "GROUP_EXISTS"
    assert (await contents()).changes_since(before) == {}
    group = await store.load_group("billing")
    assert group is not None and settings(group.spec) == SPEC


async def test_an_update_changes_only_the_updatable_settings_of_that_incarnation(store: StoreAdapter) -> None:
    await store.create_group(SPEC)
    group = await store.load_group("billing")
    assert group is not None
    # Everything asked to change; only attempts, backoffs, ack timeout and
    # the unanswered timeouts' bound may.
    wanted = replace(
        group.spec,
        log_filter=LogFilter(),
        start_position=0,
        segments=16,
        max_attempts=9,
        retry_backoff_ms=10,
        max_retry_backoff_ms=20,
        ack_timeout_ms=30_000,
        max_unanswered_timeouts=4,
    )
    assert await store.update_group(wanted)
    updated = await store.load_group("billing")
    assert updated is not None
    expected = replace(
        group.spec,
        max_attempts=9,
        retry_backoff_ms=10,
        max_retry_backoff_ms=20,
        ack_timeout_ms=30_000,
        max_unanswered_timeouts=4,
    )
    assert updated.spec == expected
    assert updated.checkpoints == group.checkpoints
    # Another incarnation (deleted and created again meanwhile), or none: nothing written.
    assert not await store.update_group(replace(wanted, incarnation="another", max_attempts=2))
    assert not await store.update_group(replace(wanted, name="missing"))
    again = await store.load_group("billing")
    assert again is not None and again.spec == expected
    assert await store.load_group("missing") is None


async def test_a_group_created_again_with_the_same_settings_is_another_incarnation(store: StoreAdapter) -> None:
    # What a replica remembers of a group (its delivery attempt counts) is
    # kept per incarnation: the same settings again are another group.
    await store.create_group(replace(SPEC, incarnation="given"))  # not kept: the store draws one
    first = await store.load_group("billing")
    assert first is not None and first.spec.incarnation not in ("", "given")
    assert [g.spec for g in await store.list_groups()] == [first.spec]
    await store.delete_group("billing")
    await store.create_group(SPEC)
    again = await store.load_group("billing")
    assert again is not None and settings(again.spec) == settings(first.spec)
    assert again.spec.incarnation not in ("", first.spec.incarnation)
    assert [g.spec for g in await store.list_groups()] == [again.spec]


async def test_groups_are_listed_by_name(store: StoreAdapter) -> None:
    for name in ("zeta", "alpha", "mid"):
        await store.create_group(GroupSpec(name=name, segments=2))
    assert [g.spec.name for g in await store.list_groups()] == ["alpha", "mid", "zeta"]


# Names a linguistic collation sorts otherwise: ICU's root locale, for one,
# folds case and weighs punctuation apart ("a_1", "a-1", "a.1", "b", "B", "Z").
UNORDERED_NAMES = ("b", "B", "a_1", "a-1", "a.1", "a1", "Z", "0z")


async def test_groups_are_listed_in_code_point_order(store: StoreAdapter) -> None:
    for name in UNORDERED_NAMES:
        await store.create_group(GroupSpec(name=name, segments=1))
    # Code point order (byte order in UTF-8: SQLite's BINARY, PostgreSQL's
    # "C"), whatever the database's collation: '-' < '.' < digits < upper
    # case < '_' < lower case.
    listed = [g.spec.name for g in await store.list_groups()]
    assert listed == ["0z", "B", "Z", "a-1", "a.1", "a1", "a_1", "b"]


async def test_a_segment_moves_from_where_it_was_and_counts_its_acks_once(
    store: StoreAdapter, contents: ContentsOf
) -> None:
    await store.create_group(SPEC)
    await store.commit_segment("billing", 2, expected_position=7, new_position=20, acknowledged=5)
    await store.commit_segment("billing", 2, expected_position=20, new_position=31, acknowledged=2)
    before = await contents()
    with pytest.raises(ConcurrencyConflict):
        await store.commit_segment(
            "billing", 2, expected_position=20, new_position=40, acknowledged=9, parked=[parked("e-9", 35)]
        )
    assert (await contents()).changes_since(before) == {}
    group = await store.load_group("billing")
    assert group is not None
    assert group.checkpoint(2).position == 31 and group.checkpoint(2).acknowledged == 7
    assert (group.position, group.acknowledged) == (7, 7)


async def test_a_segment_never_moves_past_the_logs_end(store: StoreAdapter, contents: ContentsOf) -> None:
    """A session that read a log since gone back (a restore, a failover
    that lost commits) holds positions the log hands out again: committing
    one would make the group skip the events written there since."""
    await store.create_group(SPEC)
    before = await contents()
    with pytest.raises(ConcurrencyConflict):
        await store.commit_segment(
            "billing", 2, expected_position=7, new_position=51, acknowledged=5, parked=[parked("e-9", 9)]
        )
    assert (await contents()).changes_since(before) == {}
    await store.commit_segment("billing", 2, expected_position=7, new_position=50, acknowledged=5)
    group = await store.load_group("billing")
    assert group is not None and group.checkpoint(2).position == 50


async def test_a_segment_counts_the_skips_its_checkpoint_passes_apart_from_its_acks(
    store: StoreAdapter, contents: ContentsOf
) -> None:
    await store.create_group(SPEC)
    await store.commit_segment("billing", 1, expected_position=7, new_position=20, acknowledged=5, skipped=2)
    await store.commit_segment("billing", 1, expected_position=20, new_position=31, acknowledged=0, skipped=1)
    await store.commit_segment("billing", 3, expected_position=7, new_position=9, acknowledged=1)
    before = await contents()
    with pytest.raises(ConcurrencyConflict):  # a commit refused counts nothing
        await store.commit_segment("billing", 1, expected_position=20, new_position=40, acknowledged=0, skipped=4)
    assert (await contents()).changes_since(before) == {}
    group = await store.load_group("billing")
    assert group is not None
    assert [(c.segment, c.acknowledged, c.skipped, c.dismissed) for c in group.checkpoints] == [
        (0, 0, 0, 0),
        (1, 5, 3, 0),
        (2, 0, 0, 0),
        (3, 1, 0, 0),
    ]
    assert (group.acknowledged, group.skipped, group.dismissed) == (6, 3, 0)
    assert [(g.acknowledged, g.skipped) for g in await store.list_groups()] == [(6, 3)]


async def test_a_segment_given_up_keeps_its_events_settled_above_its_checkpoint_for_the_next_holder(
    store: StoreAdapter, contents: ContentsOf
) -> None:
    # An unsettled event at 8 keeps segment 1's checkpoint at 7 while its
    # holder acks 10 and 16, skips 12 and parks 14: given up, the segment
    # keeps them, so its next holder does not deliver them again.
    await store.create_group(SPEC)
    ahead = [
        SettledEvent("e-16", 16, "acked"),
        SettledEvent("e-10", 10, "acked"),
        SettledEvent("e-12", 12, "skipped"),
        SettledEvent("e-14", 14, "parked"),
    ]
    await store.commit_segment(
        "billing",
        1,
        expected_position=7,
        new_position=7,
        acknowledged=0,
        parked=[parked("e-14", 14)],
        settled_ahead=ahead,
    )
    assert await store.settled_ahead("billing", 1) == sorted(ahead, key=lambda s: s.position)
    assert await store.settled_ahead("billing", 2) == []
    # The next holder's commits forget those its checkpoint passes (their
    # counts are in its own), and keep the others.
    await store.commit_segment("billing", 1, expected_position=7, new_position=12, acknowledged=3, skipped=1)
    assert await store.settled_ahead("billing", 1) == [SettledEvent("e-14", 14, "parked"), ahead[0]]
    # A refused commit keeps nothing.
    before = await contents()
    with pytest.raises(ConcurrencyConflict):
        await store.commit_segment(
            "billing",
            1,
            expected_position=7,
            new_position=7,
            acknowledged=0,
            settled_ahead=[SettledEvent("e-20", 20, "acked")],
        )
    assert (await contents()).changes_since(before) == {}
    # Given up again: what it keeps replaces what was kept (none at or below the checkpoint).
    replaced = [SettledEvent("e-11", 11, "acked"), SettledEvent("e-18", 18, "skipped")]
    await store.commit_segment(
        "billing", 1, expected_position=12, new_position=13, acknowledged=0, settled_ahead=replaced
    )
    assert await store.settled_ahead("billing", 1) == [replaced[1]]
    await store.commit_segment("billing", 1, expected_position=13, new_position=30, acknowledged=1, skipped=1)
    assert await store.settled_ahead("billing", 1) == []
    # Gone with the group.
    await store.commit_segment("billing", 2, expected_position=7, new_position=7, acknowledged=0, settled_ahead=ahead)
    assert await store.delete_group("billing") is True
    await store.create_group(SPEC)
    assert await store.settled_ahead("billing", 2) == []
    assert await store.settled_ahead("gone", 2) == []


async def test_parked_events_commit_with_the_checkpoint(store: StoreAdapter) -> None:
    await store.create_group(SPEC)
    await store.commit_segment(
        "billing", 1, expected_position=7, new_position=12, acknowledged=1, parked=[parked("e-10", 10)]
    )
    await store.park("billing", [parked("e-11", 11, attempts=2)])
    group = await store.load_group("billing")
    assert group is not None and group.parked == 2
    assert await store.list_parked("billing") == [parked("e-10", 10), parked("e-11", 11, attempts=2)]
    assert await store.list_parked("billing", after_position=10, limit=5) == [parked("e-11", 11, attempts=2)]
    assert await store.list_parked("billing", limit=1) == [parked("e-10", 10)]


async def test_parked_events_page_within_one_position(store: StoreAdapter) -> None:
    """An upcaster's pieces of one stored event share its position: a page
    ending between them goes on after the last one's id, not past the
    position (which passes over the rest)."""
    await store.create_group(SPEC)
    await store.park("billing", [parked("e-5b", 5), parked("e-5a", 5), parked("e-5c", 5), parked("e-6", 6)])
    assert [p.event_id for p in await store.list_parked("billing", after=(5, "e-5a"), limit=2)] == ["e-5b", "e-5c"]
    assert [p.event_id for p in await store.list_parked("billing", after=(5, "e-5c"))] == ["e-6"]
    assert [p.event_id for p in await store.list_parked("billing", after=(4, "zzz"))] == ["e-5a", "e-5b", "e-5c", "e-6"]
    assert [p.event_id for p in await store.list_parked("billing", after_position=5)] == ["e-6"]
    assert await store.list_parked("billing", after=(6, "e-6")) == []


async def test_parked_events_are_found_by_their_ids(store: StoreAdapter) -> None:
    await store.create_group(SPEC)
    assert await store.find_parked("billing", ["e-4"]) == []
    await store.park("billing", [parked("e-5", 5), parked("e-4", 4, segment=2)])
    found = await store.find_parked("billing", ["e-5", "e-404", "e-4", "e-5"])
    assert found == [parked("e-4", 4, segment=2), parked("e-5", 5)]
    assert await store.find_parked("other", ["e-4"]) == []
    assert await store.find_parked("billing", []) == []


async def test_parked_events_are_replayed_on_request_and_leave_when_settled(store: StoreAdapter) -> None:
    await store.create_group(SPEC)
    await store.park("billing", [parked("e-3", 3, segment=0), parked("e-4", 4, segment=1), parked("e-5", 5)])
    assert await store.parked_to_replay("billing", [0, 1, 2, 3], 10) == []
    assert await store.replay_parked("billing", ["e-4", "e-404"]) == 1
    assert [p.event_id for p in await store.parked_to_replay("billing", [1], 10)] == ["e-4"]
    assert await store.parked_to_replay("billing", [0], 10) == []
    assert await store.replay_parked("billing", []) == 3
    assert [p.event_id for p in await store.parked_to_replay("billing", [0, 1], 10)] == ["e-3", "e-4", "e-5"]
    assert [p.event_id for p in await store.parked_to_replay("billing", [0, 1], 2)] == ["e-3", "e-4"]
    await store.unpark("billing", ["e-3"])
    await store.park("billing", [parked("e-4", 4, segment=1, attempts=6)])  # failed again: parked, not replaying
    listed = await store.list_parked("billing")
    assert [(p.event_id, p.attempts, p.replaying) for p in listed] == [("e-4", 6, False), ("e-5", 3, True)]


async def test_an_unparked_event_counts_as_acknowledged_in_its_segment_once(store: StoreAdapter) -> None:
    # Parking passed it unacknowledged; its replay, acknowledged, counts it.
    await store.create_group(SPEC)
    await store.park("billing", [parked("e-3", 3, segment=0), parked("e-4", 4, segment=2), parked("e-5", 5, segment=2)])
    await store.unpark("billing", ["e-4", "e-5", "e-404"])
    await store.unpark("billing", ["e-4"])  # its ack came twice: counted once
    group = await store.load_group("billing")
    assert group is not None
    assert [(c.segment, c.position, c.acknowledged) for c in group.checkpoints] == [
        (0, 7, 0),
        (1, 7, 0),
        (2, 7, 2),
        (3, 7, 0),
    ]
    assert (group.acknowledged, group.parked) == (2, 1)
    await store.unpark("absent", ["e-3"])  # no such group: nothing, no error


async def test_parked_events_are_dismissed_all_or_none_and_counted_as_dismissed_not_acknowledged(
    store: StoreAdapter, contents: ContentsOf
) -> None:
    await store.create_group(SPEC)
    await store.park("billing", [parked("e-3", 3, segment=0), parked("e-4", 4), parked("e-5", 5)])
    await store.replay_parked("billing", ["e-4"])
    before = await contents()
    assert await store.dismiss_parked("billing", ["e-3", "e-404", "e-5", "e-405"]) == ["e-404", "e-405"]
    assert (await contents()).changes_since(before) == {}  # none dismissed
    assert await store.dismiss_parked("absent", ["e-3"]) == ["e-3"]
    assert await store.dismiss_parked("billing", ["e-4", "e-3", "e-4"]) == []  # a replaying one too
    assert [p.event_id for p in await store.list_parked("billing")] == ["e-5"]
    assert await store.parked_to_replay("billing", [0, 1, 2, 3], 10) == []
    await store.unpark("billing", ["e-4"])  # its replay acknowledged afterwards: nothing to count
    group = await store.load_group("billing")
    assert group is not None and (group.parked, group.acknowledged, group.skipped) == (1, 0, 0)
    # Each one dismissed counts once, in its own segment, whatever the ids named twice.
    assert [(c.segment, c.dismissed) for c in group.checkpoints] == [(0, 1), (1, 1), (2, 0), (3, 0)]
    assert await store.dismiss_parked("billing", ["e-3"]) == ["e-3"]  # dismissed already
    assert (await store.load_group("billing")) == group  # and counted once


async def test_parked_events_whose_replays_a_consumer_skipped_count_as_skipped_not_dismissed(
    store: StoreAdapter,
) -> None:
    await store.create_group(SPEC)
    await store.park("billing", [parked("e-3", 3, segment=0), parked("e-4", 4, segment=2), parked("e-5", 5)])
    await store.replay_parked("billing", [])
    assert await store.dismiss_parked("billing", ["e-4", "e-3"], skipped=True) == []
    assert await store.dismiss_parked("billing", ["e-4"], skipped=True) == ["e-4"]  # its skip came twice
    assert await store.dismiss_parked("billing", ["e-5"]) == []
    group = await store.load_group("billing")
    assert group is not None
    counted = [(c.segment, c.skipped, c.dismissed) for c in group.checkpoints]
    assert counted == [(0, 1, 0), (1, 0, 1), (2, 1, 0), (3, 0, 0)]
    assert (group.parked, group.acknowledged, group.skipped, group.dismissed) == (0, 0, 2, 1)


async def test_a_replay_failed_again_is_parked_again_only_if_still_parked(store: StoreAdapter) -> None:
    await store.create_group(SPEC)
    await store.park("billing", [parked("e-3", 3), parked("e-4", 4)])
    await store.replay_parked("billing", [])
    assert await store.dismiss_parked("billing", ["e-4"]) == []
    await store.repark("billing", [parked("e-3", 3, attempts=7), parked("e-4", 4, attempts=7)])
    listed = await store.list_parked("billing")
    assert [(p.event_id, p.attempts, p.replaying) for p in listed] == [("e-3", 7, False)]  # e-4 stays dismissed


async def test_a_parked_event_keeps_its_type_and_when_it_was_last_parked(store: StoreAdapter) -> None:
    await store.create_group(SPEC)
    await store.park("billing", [parked("e-3", 3), replace(parked("e-4", 4), event_type="", parked_at_us=0)])
    listed = await store.list_parked("billing")
    assert [(p.event_type, p.parked_at_us) for p in listed] == [("bank.v1.MoneyDeposited", PARKED_AT_US), ("", 0)]
    # Failed again after a replay: parked again, now.
    await store.replay_parked("billing", ["e-3"])
    later = PARKED_AT_US + 61_000_001
    await store.repark("billing", [parked("e-3", 3, attempts=4, parked_at_us=later)])
    assert await store.find_parked("billing", ["e-3"]) == [parked("e-3", 3, attempts=4, parked_at_us=later)]
    # Parked again by a session (the same id): so is the time.
    await store.park("billing", [parked("e-3", 3, attempts=5, parked_at_us=later + 1)])
    assert await store.parked_to_replay("billing", [1], 10) == []
    assert await store.find_parked("billing", ["e-3"]) == [parked("e-3", 3, attempts=5, parked_at_us=later + 1)]


async def test_deleting_a_group_deletes_its_checkpoints_parked_events_and_leases(store: StoreAdapter) -> None:
    await store.create_group(SPEC)
    await store.park("billing", [parked("e-1", 8)])
    member = LeaseMember("worker#1", "")
    leases = store.consumer_leases
    await leases.renew_leases(consumer_group("billing"), member, [segment_lease(s) for s in range(4)], 30)
    await leases.change_leases(consumer_group("billing"), "worker#1", release=(), acquire=("0", "1"), ttl=30)
    assert await store.delete_group("billing") is True
    assert await store.load_group("billing") is None
    assert await store.list_parked("billing") == []
    assert await store.delete_group("billing") is False
    await store.create_group(SPEC)  # a new group of that name starts afresh
    group = await store.load_group("billing")
    assert group is not None and group.parked == 0 and group.consumers == ()
    with pytest.raises(ConcurrencyConflict):  # nor can a consumer of the old group move the new one
        await store.commit_segment(
            "billing",
            0,
            expected_position=7,
            new_position=9,
            acknowledged=1,
            fencing=Fencing(consumer_group("billing"), "0", "worker#1", 1),
        )


async def test_consumers_share_the_segments_by_leases_and_a_lost_lease_fences_its_commits(
    store: StoreAdapter,
) -> None:
    await store.create_group(SPEC)
    leases = store.consumer_leases
    group, names = consumer_group("billing"), [segment_lease(s) for s in range(4)]
    await leases.renew_leases(group, LeaseMember("a#1", ""), names, 30)
    await leases.renew_leases(group, LeaseMember("b#2", ""), names, 30)
    taken_a = await leases.change_leases(group, "a#1", release=(), acquire=("0", "1"), ttl=30)
    taken_b = await leases.change_leases(group, "b#2", release=(), acquire=("1", "2", "3"), ttl=30)
    assert [lease.name for lease in taken_a] == ["0", "1"] and [lease.name for lease in taken_b] == ["2", "3"]
    state = await store.load_group("billing")
    assert state is not None
    assert state.consumers == (GroupConsumer("a#1", (0, 1)), GroupConsumer("b#2", (2, 3)))
    a_token = Fencing(group, "1", "a#1", taken_a[1].epoch)
    await store.commit_segment("billing", 1, expected_position=7, new_position=8, acknowledged=1, fencing=a_token)
    await leases.leave_group(group, "a#1")
    (taken,) = await leases.change_leases(group, "b#2", release=(), acquire=("1",), ttl=30)
    with pytest.raises(ConcurrencyConflict):
        await store.commit_segment("billing", 1, expected_position=8, new_position=9, acknowledged=1, fencing=a_token)
    b_token = Fencing(group, "1", "b#2", taken.epoch)
    await store.commit_segment("billing", 1, expected_position=8, new_position=9, acknowledged=1, fencing=b_token)
    state = await store.load_group("billing")
    assert state is not None and state.consumers == (GroupConsumer("b#2", (1, 2, 3)),)
    assert state.checkpoint(1).acknowledged == 2


REPORT = ConsumerReport(replica_id="replica-1", replica_address="10.0.0.1:50051", in_flight=3, answered_ago=2.5)


async def test_a_consumers_last_report_is_shown_with_it_while_it_is_a_live_member(store: StoreAdapter) -> None:
    """Every replica reads what the consumer's session reported (its
    replica, its events in flight, its last answer), with ages as of the
    read by the store's clock; the next report replaces it; a consumer that
    left shows none, and a group's reports go with the group."""
    await store.create_group(SPEC)
    leases = store.consumer_leases
    group, names = consumer_group("billing"), [segment_lease(s) for s in range(4)]
    await leases.renew_leases(group, LeaseMember("a#1", ""), names, 30)
    await leases.renew_leases(group, LeaseMember("b#2", ""), names, 30)
    await leases.change_leases(group, "a#1", release=(), acquire=("0", "1"), ttl=30)
    await store.report_consumer("billing", "a#1", replace(REPORT, in_flight=9))
    await store.report_consumer("billing", "a#1", REPORT)  # replaces the first
    state = await store.load_group("billing")
    assert state is not None
    a, b = state.consumers
    assert (a.consumer, a.segments, b.consumer, b.report) == ("a#1", (0, 1), "b#2", None)  # b reported nothing
    assert a.report is not None
    assert (a.report.replica_id, a.report.replica_address, a.report.in_flight) == ("replica-1", "10.0.0.1:50051", 3)
    assert a.report.answered_ago is not None and 2.49 <= a.report.answered_ago < 2.5 + 10
    assert 0 <= a.report.heard_ago < 10
    await store.report_consumer("billing", "b#2", ConsumerReport(replica_id="r-2", replica_address="h:1", in_flight=0))
    (listed,) = await store.list_groups()
    reports = {consumer.consumer: consumer.report for consumer in listed.consumers}
    assert reports["a#1"] is not None and reports["a#1"].in_flight == 3
    assert reports["b#2"] is not None and reports["b#2"].answered_ago is None  # it never answered
    assert reports["b#2"].connected_ago is None  # nor said when it joined (a server of an older version)
    await leases.leave_group(group, "a#1")
    state = await store.load_group("billing")
    assert state is not None and [c.consumer for c in state.consumers] == ["b#2"]
    assert await store.delete_group("billing") is True
    await store.create_group(SPEC)
    await leases.renew_leases(group, LeaseMember("b#2", ""), names, 30)
    state = await store.load_group("billing")
    assert state is not None and state.consumers == (GroupConsumer("b#2", ()),)  # its report went with the group


async def test_a_consumers_heartbeat_renews_its_leases_and_writes_its_report_together(store: StoreAdapter) -> None:
    """``renew_consumer`` is ``renew_leases`` of the group's lease group and
    ``report_consumer`` in one: the member is renewed (live, its leases
    extended, the view returned as ``renew_leases`` returns it) and its
    report kept, replacing the last, shown with it; when it joined is kept
    as its first report said."""
    await store.create_group(SPEC)
    group, names = consumer_group("billing"), [segment_lease(s) for s in range(4)]
    joined = replace(REPORT, in_flight=9, connected_ago=5.0)
    first = await store.renew_consumer("billing", LeaseMember("a#1", "h:1"), names, 30, joined)
    assert [m.member_id for m in first.members] == ["a#1"] and sorted(lease.name for lease in first.leases) == names
    await store.consumer_leases.change_leases(group, "a#1", release=(), acquire=("0", "1"), ttl=30)
    # A later report says the session joined at another moment (its clock read again): the first one stays.
    later = replace(REPORT, connected_ago=100.0)
    view = await store.renew_consumer("billing", LeaseMember("a#1", "h:1"), names, 30, later)
    held = {lease.name: lease.owner for lease in view.leases}
    assert held == {"0": "a#1", "1": "a#1", "2": None, "3": None}
    state = await store.load_group("billing")
    assert state is not None
    (consumer,) = state.consumers
    assert (consumer.consumer, consumer.segments) == ("a#1", (0, 1))
    assert consumer.report is not None and (consumer.report.replica_id, consumer.report.in_flight) == ("replica-1", 3)
    assert 0 <= consumer.report.heard_ago < 10
    assert consumer.report.connected_ago is not None and 4.99 <= consumer.report.connected_ago < 5 + 10
    # The view is the same a plain renewal of the member sees.
    assert (await store.consumer_leases.renew_leases(group, LeaseMember("a#1", "h:1"), names, 30)).leases == view.leases


async def test_a_consumers_report_ages_as_the_store_reads_it(store: StoreAdapter) -> None:
    """The ages shown grow with time after the report: a consumer that went
    silent is told by how long ago it was last heard from."""
    await store.create_group(SPEC)
    await store.consumer_leases.renew_leases(consumer_group("billing"), LeaseMember("a#1", ""), ["0"], 30)
    await store.report_consumer("billing", "a#1", REPORT)
    await asyncio.sleep(0.3)
    state = await store.load_group("billing")
    assert state is not None and state.consumers[0].report is not None
    report = state.consumers[0].report
    assert report.heard_ago >= 0.25 and report.answered_ago is not None and report.answered_ago >= 2.75
