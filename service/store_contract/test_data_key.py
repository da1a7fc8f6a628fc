"""The data-key part of the store contract: one key per aggregate, made once,
forgotten for good, rewrapped only if unchanged."""

from __future__ import annotations

import asyncio

import pytest

from service.store.base import StoreAdapter
from service.store.records import ClaimChange, DataKey, Snapshot
from service.store_contract.contents import ContentsOf
from service.store_contract.records import new_event

# Every test here is a coroutine (the plugin runs them on pytest-asyncio).
pytestmark = pytest.mark.asyncio


def key(aggregate_id: str = "a-1", master: str = "m1", wrapped: bytes = b"w" * 40) -> DataKey:
    return DataKey(aggregate_id, master, wrapped)


async def test_an_aggregate_without_a_key_has_none(store: StoreAdapter) -> None:
    assert await store.load_data_key("a-1") is None


async def test_the_first_key_created_wins(store: StoreAdapter) -> None:
    assert await store.create_data_key(key(wrapped=b"first")) == key(wrapped=b"first")
    assert await store.create_data_key(key(wrapped=b"second")) == key(wrapped=b"first")
    assert await store.load_data_key("a-1") == key(wrapped=b"first")


async def test_concurrent_creators_all_get_the_same_key(store: StoreAdapter) -> None:
    created = await asyncio.gather(*(store.create_data_key(key(wrapped=bytes([n]) * 40)) for n in range(8)))
    assert len(set(created)) == 1
    assert await store.load_data_key("a-1") == created[0]


async def test_forgetting_erases_the_key_and_leaves_a_tombstone(store: StoreAdapter) -> None:
    await store.create_data_key(key())
    assert await store.forget_data_key("a-1") is True
    assert await store.load_data_key("a-1") == DataKey("a-1", None, None)
    assert await store.forget_data_key("a-1") is False


async def test_no_new_key_is_made_for_a_forgotten_aggregate(store: StoreAdapter) -> None:
    await store.create_data_key(key())
    await store.forget_data_key("a-1")
    assert (await store.create_data_key(key(wrapped=b"again"))).forgotten


async def test_forgetting_deletes_the_snapshot(store: StoreAdapter) -> None:
    await store.create_data_key(key())
    await store.save_snapshot(Snapshot("a-1", "Thing", 3, "test.v1.State", 1, b"secret"))
    await store.forget_data_key("a-1")
    assert await store.load_snapshot("a-1") is None


async def test_an_aggregate_without_a_key_cannot_be_forgotten(store: StoreAdapter) -> None:
    assert await store.forget_data_key("a-1") is False


async def test_keys_wrapped_by_an_old_master_key_are_listed_for_rewrapping(store: StoreAdapter) -> None:
    await store.create_data_key(key("a-1", "old"))
    await store.create_data_key(key("a-2", "new"))
    await store.create_data_key(key("a-3", "old"))
    await store.forget_data_key("a-3")
    assert await store.data_keys_to_rewrap("new", 10) == [key("a-1", "old")]
    assert len(await store.data_keys_to_rewrap("other", 1)) == 1


async def test_rewrapping_replaces_a_key_only_if_it_is_unchanged(store: StoreAdapter, contents: ContentsOf) -> None:
    old = await store.create_data_key(key("a-1", "old"))
    assert await store.rewrap_data_key(old, key("a-1", "new", b"n" * 40)) is True
    before = await contents()
    assert await store.rewrap_data_key(old, key("a-1", "newer", b"x" * 40)) is False
    assert (await contents()).changes_since(before) == {}
    assert await store.load_data_key("a-1") == key("a-1", "new", b"n" * 40)


async def test_forgetting_releases_every_claim_the_aggregate_holds(store: StoreAdapter) -> None:
    await store.create_data_key(key("u-1"))
    claims = [ClaimChange("users.email", "ann@example.com"), ClaimChange("users.nickname", "ann")]
    await store.append("u-1", [new_event()], 0, claims=claims)
    await store.append("u-2", [new_event()], 0, claims=[ClaimChange("users.email", "bob@example.com")])
    assert await store.forget_data_key("u-1") is True
    assert await store.claim_owner("users.email", "ann@example.com") is None
    assert await store.claim_owner("users.nickname", "ann") is None
    assert await store.claim_owner("users.email", "bob@example.com") == "u-2"


async def test_forgetting_again_releases_claims_left_behind(store: StoreAdapter) -> None:
    await store.create_data_key(key("u-1"))
    await store.forget_data_key("u-1")
    # As an older version left it: forgotten, still holding a value.
    await store.append("u-1", [new_event()], 0, claims=[ClaimChange("users.email", "ann@example.com")])
    assert await store.forget_data_key("u-1") is False
    assert await store.claim_owner("users.email", "ann@example.com") is None


async def test_an_aggregate_without_a_key_keeps_its_claims(store: StoreAdapter) -> None:
    await store.append("u-1", [new_event()], 0, claims=[ClaimChange("users.email", "ann@example.com")])
    assert await store.forget_data_key("u-1") is False
    assert await store.claim_owner("users.email", "ann@example.com") == "u-1"
