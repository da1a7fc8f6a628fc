"""The store contract for snapshot retention: each aggregate keeps only its
newest snapshots (``keep_snapshots``), pruned when one is saved."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from service.store.base import DEFAULT_KEEP_SNAPSHOTS, StoreAdapter
from service.store.records import Snapshot
from tests.support.stores import STORES, store_site


@pytest.fixture(params=sorted(STORES))
async def keeping_two(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreAdapter]:
    """Each store adapter in turn, told to keep two snapshots per aggregate."""
    async with STORES[request.param](store_site(request, tmp_path, keep_snapshots=2)) as opened:
        yield opened


def snapshot(version: int, aggregate_id: str = "a-1", state: bytes = b"s") -> Snapshot:
    return Snapshot(aggregate_id, "Account", version, "bank.v1.Account", 1, state)


async def save(store: StoreAdapter, versions: Iterable[int], aggregate_id: str = "a-1") -> None:
    for version in versions:
        await store.save_snapshot(snapshot(version, aggregate_id))


async def kept(store: StoreAdapter, versions: Iterable[int], aggregate_id: str = "a-1") -> list[int]:
    """Which of ``versions`` still have their snapshot."""
    found = [await store.load_snapshot(aggregate_id, at_most=v) for v in versions]
    return sorted({s.version for s in found if s is not None} & set(versions))


async def test_by_default_the_newest_few_snapshots_are_kept(store: StoreAdapter) -> None:
    versions = [10 * n for n in range(1, DEFAULT_KEEP_SNAPSHOTS + 3)]
    await save(store, versions)
    assert await kept(store, versions) == versions[-DEFAULT_KEEP_SNAPSHOTS:]


async def test_a_store_keeps_as_many_as_it_is_told(keeping_two: StoreAdapter) -> None:
    await save(keeping_two, [1, 2, 3, 4, 5])
    assert await kept(keeping_two, [1, 2, 3, 4, 5]) == [4, 5]


async def test_a_version_below_every_kept_snapshot_has_none(keeping_two: StoreAdapter) -> None:
    await save(keeping_two, [10, 20, 30])
    assert await keeping_two.load_snapshot("a-1", at_most=15) is None
    assert await keeping_two.load_snapshot("a-1", at_most=25) == snapshot(20)


async def test_an_older_snapshot_saved_late_is_not_kept_over_newer_ones(keeping_two: StoreAdapter) -> None:
    await save(keeping_two, [20, 30, 10])
    assert await kept(keeping_two, [10, 20, 30]) == [20, 30]


async def test_replacing_a_snapshot_prunes_nothing_else(keeping_two: StoreAdapter) -> None:
    await save(keeping_two, [20, 30])
    await keeping_two.save_snapshot(snapshot(30, state=b"again"))
    assert await kept(keeping_two, [20, 30]) == [20, 30]
    assert await keeping_two.load_snapshot("a-1") == snapshot(30, state=b"again")


async def test_each_aggregate_keeps_its_own(keeping_two: StoreAdapter) -> None:
    await save(keeping_two, [7], aggregate_id="a-2")
    await save(keeping_two, [1, 2, 3, 4])
    assert await kept(keeping_two, [7], aggregate_id="a-2") == [7]
    assert await kept(keeping_two, [1, 2, 3, 4]) == [3, 4]
