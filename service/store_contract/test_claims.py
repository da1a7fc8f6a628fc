"""The store contract for uniqueness claims: taken and released in the
transaction of an append, exclusive per (scope, value), enforced by the store."""

from __future__ import annotations

import asyncio

import pytest

from service.errors import ConcurrencyConflict, NotUnique
from service.store.base import StoreAdapter
from service.store.records import HIDDEN_CLAIM_MARK, ClaimChange, HeldClaim
from service.store_contract.contents import EVENT_TABLES, ContentsOf
from service.store_contract.records import command_record, new_event

# Every test here is a coroutine (the plugin runs them on pytest-asyncio).
pytestmark = pytest.mark.asyncio

EMAIL = "users.email"


def claim(value: str, scope: str = EMAIL) -> ClaimChange:
    return ClaimChange(scope, value)


def release(value: str, scope: str = EMAIL) -> ClaimChange:
    return ClaimChange(scope, value, release=True)


async def test_an_append_takes_its_claims(store: StoreAdapter) -> None:
    await store.append("u-1", [new_event()], 0, claims=[claim("ann@example.com")])
    assert await store.claim_owner(EMAIL, "ann@example.com") == "u-1"
    assert await store.claim_owner(EMAIL, "bob@example.com") is None


async def test_a_value_held_by_another_aggregate_refuses_the_whole_append(store: StoreAdapter) -> None:
    await store.append("u-1", [new_event()], 0, claims=[claim("ann@example.com")])
    record = command_record("u-2", 1, 1)
    with pytest.raises(NotUnique) as raised:
        await store.append(
            "u-2", [new_event()], 0, commands=[record], claims=[claim("free@example.com"), claim("ann@example.com")]
        )
    assert raised.value.metadata == {"scope": EMAIL}
    assert await store.read_aggregate("u-2") == []
    assert await store.find_command(record.command_id) is None
    assert await store.claim_owner(EMAIL, "free@example.com") is None
    assert await store.claim_owner(EMAIL, "ann@example.com") == "u-1"


async def test_claiming_a_value_the_aggregate_holds_changes_nothing(store: StoreAdapter, contents: ContentsOf) -> None:
    await store.append("u-1", [new_event()], 0, claims=[claim("ann@example.com")])
    before = await contents()
    await store.append("u-1", [new_event()], 1, claims=[claim("ann@example.com")])
    assert set((await contents()).changes_since(before)) <= EVENT_TABLES  # the new event, nothing else
    assert await store.claim_owner(EMAIL, "ann@example.com") == "u-1"


async def test_only_the_holder_can_release_a_value(store: StoreAdapter, contents: ContentsOf) -> None:
    await store.append("u-1", [new_event()], 0, claims=[claim("ann@example.com")])
    before = await contents()
    # Releasing a value it does not hold (held by another, or by no one) changes nothing.
    await store.append("u-2", [new_event()], 0, claims=[release("ann@example.com"), release("bob@example.com")])
    assert set((await contents()).changes_since(before)) <= EVENT_TABLES
    assert await store.claim_owner(EMAIL, "ann@example.com") == "u-1"


async def test_a_released_value_can_be_claimed_by_another_aggregate(store: StoreAdapter) -> None:
    await store.append("u-1", [new_event()], 0, claims=[claim("ann@example.com")])
    await store.append("u-1", [new_event()], 1, claims=[release("ann@example.com")])
    assert await store.claim_owner(EMAIL, "ann@example.com") is None
    await store.append("u-2", [new_event()], 0, claims=[claim("ann@example.com")])
    assert await store.claim_owner(EMAIL, "ann@example.com") == "u-2"


async def test_scopes_are_independent(store: StoreAdapter) -> None:
    await store.append("u-1", [new_event()], 0, claims=[claim("ann", scope="users.email")])
    await store.append("u-2", [new_event()], 0, claims=[claim("ann", scope="users.nickname")])
    assert await store.claim_owner("users.email", "ann") == "u-1"
    assert await store.claim_owner("users.nickname", "ann") == "u-2"


async def test_claims_of_one_append_apply_in_order(store: StoreAdapter) -> None:
    await store.append("u-1", [new_event()], 0, claims=[claim("old@example.com")])
    await store.append("u-1", [new_event()], 1, claims=[release("old@example.com"), claim("new@example.com")])
    assert await store.claim_owner(EMAIL, "old@example.com") is None
    assert await store.claim_owner(EMAIL, "new@example.com") == "u-1"
    await store.append("u-1", [new_event()], 2, claims=[claim("x@example.com"), release("x@example.com")])
    assert await store.claim_owner(EMAIL, "x@example.com") is None


async def test_an_append_that_conflicts_takes_no_claim(store: StoreAdapter) -> None:
    await store.append("u-1", [new_event()], 0)
    with pytest.raises(ConcurrencyConflict):
        await store.append("u-1", [new_event()], 0, claims=[claim("ann@example.com")])
    assert await store.claim_owner(EMAIL, "ann@example.com") is None


async def test_a_version_conflict_is_reported_before_a_lost_claim(store: StoreAdapter) -> None:
    await store.append("u-1", [new_event()], 0, claims=[claim("ann@example.com")])
    await store.append("u-2", [new_event()], 0)
    with pytest.raises(ConcurrencyConflict):
        await store.append("u-2", [new_event()], 0, claims=[claim("ann@example.com")])


async def test_a_release_that_conflicts_keeps_the_claim(store: StoreAdapter) -> None:
    await store.append("u-1", [new_event()], 0, claims=[claim("ann@example.com")])
    with pytest.raises(ConcurrencyConflict):
        await store.append("u-1", [new_event()], 0, claims=[release("ann@example.com")])
    assert await store.claim_owner(EMAIL, "ann@example.com") == "u-1"


async def test_concurrent_appends_claiming_one_value_let_exactly_one_win(store: StoreAdapter) -> None:
    results = await asyncio.gather(
        *(store.append(f"u-{i}", [new_event()], 0, claims=[claim("ann@example.com")]) for i in range(8)),
        return_exceptions=True,
    )
    winners = [i for i, r in enumerate(results) if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, NotUnique) for r in results if isinstance(r, BaseException))
    assert await store.claim_owner(EMAIL, "ann@example.com") == f"u-{winners[0]}"
    for i in range(8):
        assert len(await store.read_aggregate(f"u-{i}")) == (1 if i == winners[0] else 0)


async def test_claim_values_are_compared_exactly(store: StoreAdapter) -> None:
    await store.append("u-1", [new_event()], 0, claims=[claim("Ann@example.com")])
    await store.append("u-2", [new_event()], 0, claims=[claim("ann@example.com")])
    assert await store.claim_owner(EMAIL, "Ann@example.com") == "u-1"
    assert await store.claim_owner(EMAIL, "ann@example.com") == "u-2"


async def test_appends_claiming_the_same_values_in_opposite_orders_never_deadlock(store: StoreAdapter) -> None:
    for round_ in range(5):
        x, y = f"x{round_}@example.com", f"y{round_}@example.com"
        results = await asyncio.gather(
            store.append(f"u-a{round_}", [new_event()], 0, claims=[claim(x), claim(y)]),
            store.append(f"u-b{round_}", [new_event()], 0, claims=[claim(y), claim(x)]),
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, BaseException)]
        assert len(refused) == 1 and isinstance(refused[0], NotUnique), results
        assert await store.claim_owner(EMAIL, x) == await store.claim_owner(EMAIL, y)


async def test_claims_in_the_clear_are_listed_for_hiding(store: StoreAdapter) -> None:
    await store.append("u-1", [new_event()], 0, claims=[claim("ann@example.com")])
    await store.append("u-2", [new_event()], 0, claims=[claim(HIDDEN_CLAIM_MARK + "0f0f")])
    assert await store.claims_in_clear(10) == [HeldClaim(EMAIL, "ann@example.com", "u-1")]


async def test_hiding_a_claim_moves_it_to_its_hidden_value_for_the_same_holder(store: StoreAdapter) -> None:
    await store.append("u-1", [new_event()], 0, claims=[claim("ann@example.com")])
    held = HeldClaim(EMAIL, "ann@example.com", "u-1")
    assert await store.hide_claim(held, HIDDEN_CLAIM_MARK + "ann") is True
    assert await store.claim_owner(EMAIL, "ann@example.com") is None
    assert await store.claim_owner(EMAIL, HIDDEN_CLAIM_MARK + "ann") == "u-1"
    assert await store.claims_in_clear(10) == []
    assert await store.hide_claim(held, HIDDEN_CLAIM_MARK + "ann") is False  # done already


async def test_a_claim_that_changed_hands_is_not_hidden_for_its_old_holder(store: StoreAdapter) -> None:
    await store.append("u-2", [new_event()], 0, claims=[claim("ann@example.com")])
    assert await store.hide_claim(HeldClaim(EMAIL, "ann@example.com", "u-1"), HIDDEN_CLAIM_MARK + "ann") is False
    assert await store.claim_owner(EMAIL, "ann@example.com") == "u-2"
    assert await store.claim_owner(EMAIL, HIDDEN_CLAIM_MARK + "ann") is None
