"""Lease members and leases (``LeaseStore``), as every store keeps them for
an operator: each member with its address and its console's URL, and how
long each member's membership and each held lease had left when the view
was read (where the store keeps such times: a store that serves one
process, the memory store, holds everything for as long as it runs)."""

from __future__ import annotations

import pytest

from service.store.base import StoreAdapter
from service.store.leasing import LeaseMember, LeaseView
from service.store.sole_owner import SoleOwnerLeases

# Every test here is a coroutine (the plugin runs them on pytest-asyncio).
pytestmark = pytest.mark.asyncio

GROUP = "contract/leases"
NAMES = ["0", "1"]
TTL = 30.0


def shared(store: StoreAdapter) -> bool:
    """Whether the store's leases are shared by its members (else, as the
    memory store's, its one process is the one member and holds every lease)."""
    return not isinstance(store, SoleOwnerLeases)


def consoles(view: LeaseView) -> dict[str, tuple[str, str]]:
    return {member.member_id: (member.address, member.console) for member in view.members}


async def test_each_member_is_listed_with_its_address_and_its_consoles_url(store: StoreAdapter) -> None:
    ann = LeaseMember("ann#1", "10.0.0.1:50051", "https://10.0.0.1:8443")
    await store.renew_leases(GROUP, ann, NAMES, TTL)
    view = await store.renew_leases(GROUP, LeaseMember("bob#2", "10.0.0.2:50051"), NAMES, TTL)
    expected = {"ann#1": ("10.0.0.1:50051", "https://10.0.0.1:8443"), "bob#2": ("10.0.0.2:50051", "")}
    assert consoles(view) == (expected if shared(store) else {"bob#2": expected["bob#2"]})
    # A member that stopped serving its console says so at its next heartbeat.
    view = await store.renew_leases(GROUP, LeaseMember("ann#1", "10.0.0.1:50051"), NAMES, TTL)
    assert consoles(view)["ann#1"] == ("10.0.0.1:50051", "")


async def test_the_view_says_how_long_each_member_and_each_held_lease_had_left(store: StoreAdapter) -> None:
    ann = LeaseMember("ann#1", "10.0.0.1:50051")
    await store.renew_leases(GROUP, ann, NAMES, TTL)
    await store.change_leases(GROUP, "ann#1", release=(), acquire=["0"], ttl=TTL)
    view = await store.renew_leases(GROUP, ann, NAMES, TTL)
    (member,) = view.members
    held = {lease.name: lease for lease in view.leases}
    if not shared(store):
        assert member.lapses_in is None and all(lease.lapses_in is None for lease in view.leases)
        return
    assert member.lapses_in is not None and 0 < member.lapses_in <= TTL
    assert held["0"].owner == "ann#1" and held["0"].lapses_in is not None and 0 < held["0"].lapses_in <= TTL
    assert held["1"].owner is None and held["1"].lapses_in is None  # free: nothing to lapse
    # Another member reads the same times: the store's, not its own.
    other = await store.renew_leases(GROUP, LeaseMember("bob#2", "10.0.0.2:50051"), NAMES, 5.0)
    lapses = {m.member_id: m.lapses_in for m in other.members}
    assert lapses["ann#1"] is not None and 5.0 < lapses["ann#1"] <= TTL
    assert lapses["bob#2"] is not None and 0 < lapses["bob#2"] <= 5.0
    (ann_lease,) = [lease for lease in other.leases if lease.name == "0"]
    assert ann_lease.lapses_in is not None and 5.0 < ann_lease.lapses_in <= TTL
