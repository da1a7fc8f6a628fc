"""The store contract for reading the past: the version as of a time, and
snapshots kept per version."""

from __future__ import annotations

import pytest

from service.store.base import StoreAdapter
from service.store.records import Snapshot
from service.store_contract.records import new_event

# Every test here is a coroutine (the plugin runs them on pytest-asyncio).
pytestmark = pytest.mark.asyncio


def snapshot(version: int, state: bytes = b"s") -> Snapshot:
    return Snapshot("a-1", "Account", version, "bank.v1.Account", 1, state)


async def test_version_at_a_time_counts_the_events_committed_by_then(store: StoreAdapter) -> None:
    await store.append("a-1", [new_event(timestamp_us=t) for t in (1_000, 2_000, 2_000, 3_000)], 0)
    assert await store.version_at("a-1", 999) == 0
    assert await store.version_at("a-1", 1_000) == 1
    assert await store.version_at("a-1", 2_500) == 3
    assert await store.version_at("a-1", 10_000) == 4


async def test_version_at_a_time_of_an_unknown_aggregate_is_zero(store: StoreAdapter) -> None:
    assert await store.version_at("nobody", 4_102_444_800_000_000) == 0  # 2100-01-01


async def test_version_at_a_time_stops_at_the_first_later_event(store: StoreAdapter) -> None:
    # Writers' clocks disagree: version 3 carries an earlier time than version 2.
    await store.append("a-1", [new_event(timestamp_us=t) for t in (1_000, 3_000, 2_000)], 0)
    assert await store.version_at("a-1", 2_500) == 1
    assert await store.version_at("a-1", 3_000) == 3


async def test_snapshots_are_kept_per_version(store: StoreAdapter) -> None:
    for version in (10, 20, 30):
        await store.save_snapshot(snapshot(version))
    latest = await store.load_snapshot("a-1")
    at_25 = await store.load_snapshot("a-1", at_most=25)
    at_20 = await store.load_snapshot("a-1", at_most=20)
    assert (latest and latest.version, at_25 and at_25.version, at_20 and at_20.version) == (30, 20, 20)
    assert await store.load_snapshot("a-1", at_most=9) is None


async def test_a_snapshot_at_the_same_version_replaces_the_earlier_one(store: StoreAdapter) -> None:
    await store.save_snapshot(snapshot(10, b"first"))
    await store.save_snapshot(snapshot(10, b"second"))
    assert await store.load_snapshot("a-1") == snapshot(10, b"second")
