"""Listing aggregates by id prefix (``EventRecorder.list_aggregates``), as
ListAggregates and forgetting a tenant's aggregates use it: code point order
whatever the database's collation, a prefix's ids and no others, filtered by
type, and each aggregate's deleted, keyed and forgotten flags."""

from __future__ import annotations

import pytest

from service.store.base import StoreAdapter
from service.store.records import TOMBSTONE_EVENT_TYPE, AggregateSummary, DataKey
from service.store_contract.records import new_event

pytestmark = pytest.mark.asyncio


async def listed(store: StoreAdapter, prefix: str, **options: object) -> list[str]:
    return [a.aggregate_id for a in await store.list_aggregates(prefix, limit=100, **options)]  # type: ignore[arg-type]


async def test_ids_are_listed_in_code_point_order_and_a_prefix_stops_where_its_ids_end(store: StoreAdapter) -> None:
    # A linguistic collation would put "acme:able" before "acme:Zed", and
    # interleave "acme1a" with "acme:b"; code point order does neither.
    ids = ["acme:able", "acme:Zed", "acme1a", "acme:b", "acme2:x", "acme", "acme:\U0001f600", "acme:\uffff", "acmf"]
    for aggregate_id in ids:
        await store.append(aggregate_id, [new_event()], 0)
    assert await listed(store, "acme:") == ["acme:Zed", "acme:able", "acme:b", "acme:\uffff", "acme:\U0001f600"]
    of_acme = ["acme", "acme1a", "acme2:x", "acme:Zed", "acme:able", "acme:b", "acme:\uffff", "acme:\U0001f600"]
    assert await listed(store, "acme") == of_acme
    assert await listed(store, "acme:", after="acme:b") == ["acme:\uffff", "acme:\U0001f600"]
    assert await listed(store, "acme:\U0001f600") == ["acme:\U0001f600"]
    assert await listed(store, "") == sorted(ids)


async def test_a_listing_is_filtered_by_aggregate_type(store: StoreAdapter) -> None:
    await store.append("t:1", [new_event(aggregate_type="Account")], 0)
    await store.append("t:2", [new_event(aggregate_type="User")], 0)
    await store.append("t:3", [new_event(aggregate_type="Account")], 0)
    await store.append("u:1", [new_event(aggregate_type="Account")], 0)
    assert await listed(store, "t:", aggregate_type="Account") == ["t:1", "t:3"]
    assert await listed(store, "", aggregate_type="User") == ["t:2"]
    assert await listed(store, "t:", aggregate_type="Account", after="t:1") == ["t:3"]
    assert await listed(store, "t:", aggregate_type="Nothing") == []


async def test_each_listed_aggregate_says_whether_it_is_deleted_keyed_and_forgotten(store: StoreAdapter) -> None:
    for aggregate_id in ["f:clear", "f:deleted", "f:forgotten", "f:live"]:
        await store.append(aggregate_id, [new_event(aggregate_type="Account")], 0)
    for aggregate_id in ["f:forgotten", "f:live"]:
        await store.create_data_key(DataKey(aggregate_id, "k1", b"w" * 40))
    await store.forget_data_key("f:forgotten")
    await store.append("f:deleted", [new_event(TOMBSTONE_EVENT_TYPE, aggregate_type="Account")], 1)
    assert await store.list_aggregates("f:", limit=10) == [
        AggregateSummary("f:clear", "Account", 1),
        AggregateSummary("f:deleted", "Account", 2, deleted=True),
        AggregateSummary("f:forgotten", "Account", 1, keyed=True, forgotten=True),
        AggregateSummary("f:live", "Account", 1, keyed=True),
    ]
