"""The parts of scale-out that need no database: fair shares, what a member
changes after a heartbeat, the advertised address, the settings, and a
lone replica on a store that serves one process."""

from __future__ import annotations

import asyncio
import itertools
import socket
from typing import Any

import pytest

from service.cluster.addresses import advertised_address, with_port
from service.cluster.hashing import check_partition_count, partition_of
from service.cluster.leases import LeaseGroup, LeaseKeeper, Origin, fair_shares, origins, plan_changes, preference
from service.cluster.ownership import Ownership, partition_group
from service.errors import ConfigurationError
from service.settings import Settings, settings_from
from service.store.leasing import Lease, LeaseMember, LeaseView
from service.store.local_leases import LocalLeases
from service.store.memory import MemoryStore


@pytest.mark.parametrize(("members", "total"), [(1, 64), (3, 64), (16, 64), (12, 64), (5, 3), (64, 64), (70, 64)])
def test_fair_shares_add_up_and_differ_by_one_at_most(members: int, total: int) -> None:
    ids = [f"m{n}" for n in range(members)]
    shares = fair_shares(ids, total)
    assert sum(shares.values()) == total
    assert max(shares.values()) - min(shares.values()) <= 1
    # every member computes the same answer, whatever order it lists them in
    assert fair_shares(list(reversed(ids)), total) == shares


def test_the_larger_shares_go_to_the_first_members_by_id() -> None:
    assert fair_shares(["c", "a", "b"], 64) == {"a": 22, "b": 21, "c": 21}
    assert fair_shares([], 64) == {}


def view(owners: dict[str, str | None], members: list[str]) -> LeaseView:
    return LeaseView(
        tuple(LeaseMember(m, f"{m}:1") for m in sorted(members)),
        tuple(Lease(name, owner, 1) for name, owner in sorted(owners.items())),
    )


def test_a_member_above_its_share_gives_up_its_least_wanted_leases() -> None:
    owners: dict[str, str | None] = {str(n): "a" for n in range(8)}
    plan = plan_changes(view(owners, ["a", "b"]), "a", frozenset(owners))
    assert plan.acquire == ()
    assert sorted(plan.release) == sorted(sorted(owners, key=lambda n: preference("a", n))[:4])


def test_a_member_below_its_share_takes_free_leases_it_knows_and_nothing_held() -> None:
    owners: dict[str, str | None] = {"0": "a", "1": "a", "2": None, "3": None, "4": None, "5": "a"}
    plan = plan_changes(view(owners, ["a", "b"]), "b", frozenset({"2", "3"}))
    assert plan.release == ()
    assert sorted(plan.acquire) == ["2", "3"]  # its share is 3, but "4" is not one it can hold


def test_a_member_at_its_share_changes_nothing() -> None:
    owners: dict[str, str | None] = {"0": "a", "1": "b", "2": None}
    assert plan_changes(view(owners, ["a", "b", "c"]), "a", frozenset(owners)).release == ()
    assert plan_changes(view(owners, ["a", "b", "c"]), "a", frozenset(owners)).acquire == ()


def test_members_looking_at_once_mostly_want_different_leases() -> None:
    free: dict[str, str | None] = {str(n): None for n in range(64)}
    members = [f"m{n}" for n in range(8)]
    wanted = [set(plan_changes(view(free, members), m, frozenset(free)).acquire) for m in members]
    overlaps = sum(len(a & b) for a, b in itertools.combinations(wanted, 2))
    # 8 each of 64: at random, 28 pairs overlap by one lease each on average;
    # the same order for all would overlap by all 8 (224 in all).
    assert overlaps < 56


@pytest.mark.parametrize("count", [0, 3, 48, 65537, 1 << 17])
def test_the_partition_count_is_a_power_of_two(count: int) -> None:
    with pytest.raises(ConfigurationError):
        check_partition_count(count)


def test_one_partition_holds_everything() -> None:
    assert {partition_of(f"acc-{n}", 1) for n in range(100)} == {0}


def test_the_advertised_address_is_the_listen_address_with_the_bound_port() -> None:
    assert advertised_address(listen="127.0.0.1:0", port=41234) == "127.0.0.1:41234"
    assert advertised_address(listen="0.0.0.0:50051", port=50051) == f"{socket.gethostname()}:50051"
    assert advertised_address(listen="[::]:50051", port=50051) == f"{socket.gethostname()}:50051"
    assert advertised_address(listen="0.0.0.0:50051", port=50051, advertise="chronicle-2.internal:443") == (
        "chronicle-2.internal:443"
    )
    # one process of several: the host it was given, its own port
    assert with_port("chronicle-2.internal:50051", 40123) == "chronicle-2.internal:40123"


def test_scale_out_settings_are_checked() -> None:
    settings = settings_from(["--partitions", "16", "--advertise-address", "a.internal:50051"], {})
    assert (settings.partitions, settings.advertise_address, settings.lease_seconds) == (16, "a.internal:50051", 3.0)
    with pytest.raises(ConfigurationError):
        Settings(partitions=48)
    for bad in (
        {"lease_seconds": 0.0},
        {"lease_seconds": 0.1},  # a heartbeat every 33 ms
        {"lease_seconds": float("inf")},  # heartbeats could not say when their leases lapse
        {"shutdown_grace": float("inf")},
        {"partitions": 8192},  # a heartbeat renews every lease of the group
        {"processes": 1000},
        {"advertise_address": "a.internal"},
        {"advertise_address": ":50051"},
        {"advertise_address": "a.internal:0"},
    ):
        with pytest.raises(ConfigurationError):
            Settings(**bad)
    with pytest.raises(ConfigurationError):
        Settings(process_listen="127.0.0.1")


async def test_on_a_store_of_one_process_the_process_owns_every_partition() -> None:
    store = MemoryStore()
    keeper = LeaseKeeper(store, member=LeaseMember("me", "127.0.0.1:1"), groups=[partition_group(8)], ttl=3.0)
    await keeper.beat()
    ownership = Ownership(keeper, 8)
    assert ownership.owned() == list(range(8))
    assert all(ownership.owns(f"acc-{n}") for n in range(50))
    assert ownership.topology().owners == ("me",) * 8
    fencing = keeper.fencing("partitions/8", "3")
    assert fencing is not None and fencing.epoch == 1
    await keeper.stop(leave=True)
    assert ownership.owned() == []
    assert ownership.topology().owners == ("",) * 8
    assert ownership.topology().members == ()


def test_a_read_database_is_a_postgresql_standby_of_a_postgresql_primary() -> None:
    with pytest.raises(ConfigurationError):
        Settings(read_database_url="postgresql://standby/db")  # the primary is SQLite
    with pytest.raises(ConfigurationError):
        Settings(database_url="postgresql://primary/db", read_database_url="sqlite:///x.db")
    settings = Settings(database_url="postgresql://primary/db", read_database_url="postgresql://standby/db")
    assert settings.read_wait_seconds == 5.0


class TakingTurns(LocalLeases):
    """Leases whose changes wait for the loop once, as a round trip does:
    members beating at once all read the group before any of them changes it."""

    async def change_leases(self, group: str, member_id: str, **changes: Any) -> list[Lease]:
        await asyncio.sleep(0)
        return await super().change_leases(group, member_id, **changes)


async def test_survivors_take_a_dead_members_leases_within_one_heartbeat_though_they_want_the_same() -> None:
    now = [0.0]
    store = TakingTurns(clock=lambda: now[0])
    group = partition_group(64)
    keepers = [
        LeaseKeeper(store, member=LeaseMember(name, f"{name}:1"), groups=[group], ttl=3.0, clock=lambda: now[0])
        for name in ("a", "b", "c")
    ]
    for _ in range(10):  # everyone at its share
        await asyncio.gather(*(keeper.beat() for keeper in keepers))
    assert sorted(len(keeper.held(group.name)) for keeper in keepers) == [21, 21, 22]
    for _ in range(3):  # c stopped beating; a and b go on, a heartbeat a second
        now[0] += 1.0
        await asyncio.gather(*(keeper.beat() for keeper in keepers[:2]))
    # c's leases lapsed at 3 s: the first heartbeat after takes them all.
    assert sorted(len(keeper.held(group.name)) for keeper in keepers[:2]) == [32, 32]


def test_a_member_gives_up_a_lease_it_stepped_aside_from_whatever_its_share() -> None:
    owners: dict[str, str | None] = {"p": "a", "q": "b", "r": None}
    plan = plan_changes(view(owners, ["a", "b"]), "a", frozenset(owners), shunned=frozenset({"p"}))
    assert plan.release == ("p",)
    assert "p" not in plan.acquire  # nor takes it again meanwhile


def test_a_free_lease_nobody_took_is_adopted_above_the_share_and_kept() -> None:
    owners: dict[str, str | None] = {"p": None, "q": "b"}
    members = ["a", "b"]
    # b is at its share (1 of 2): a free lease is not its to take, until nobody took it.
    assert plan_changes(view(owners, members), "b", frozenset(owners)).acquire == ()
    assert plan_changes(view(owners, members), "b", frozenset(owners), unwanted=frozenset({"p"})).acquire == ("p",)
    # Above its share, it gives up the lease it did not adopt.
    held: dict[str, str | None] = {"p": "b", "q": "b"}
    adopted = plan_changes(view(held, members), "b", frozenset(held), adopted=frozenset({"p"}))
    assert adopted.release == ("q",)


def _projection_keepers(now: list[float], names: tuple[str, ...]) -> list[LeaseKeeper]:
    """Members of a group that adopts, over one store, on the clock ``now``."""
    store = LocalLeases(clock=lambda: now[0])
    group = LeaseGroup("projections", ("totals",), adopts=True)
    return [
        LeaseKeeper(store, member=LeaseMember(name, f"{name}:1"), groups=[group], ttl=3.0, clock=lambda: now[0])
        for name in names
    ]


async def _beats(now: list[float], keepers: tuple[LeaseKeeper, ...], seconds: int) -> None:
    for _ in range(seconds):  # a heartbeat a second (ttl 3)
        now[0] += 1.0
        for keeper in keepers:
            await keeper.beat()


async def test_a_lease_stepped_aside_from_goes_to_another_member_and_stays_there() -> None:
    now = [0.0]
    a, b = _projection_keepers(now, ("a", "b"))
    await _beats(now, (a, b), 3)  # one of them holds it, as their shares say
    holder, other = (a, b) if a.holds("projections", "totals") else (b, a)
    holder.step_aside("projections", "totals")
    assert not holder.holds("projections", "totals")  # at once, before the store hears of it
    await _beats(now, (a, b), 6)
    assert other.holds("projections", "totals")
    await _beats(now, (a, b), 3 * 3 + 6)  # past the pause: it does not come back
    assert other.holds("projections", "totals") and not holder.holds("projections", "totals")


async def test_alone_a_member_takes_back_what_it_stepped_aside_from_after_its_pause() -> None:
    now = [0.0]
    (a,) = _projection_keepers(now, ("a",))
    await a.beat()
    a.step_aside("projections", "totals")
    await _beats(now, (a,), 8)
    assert not a.holds("projections", "totals")
    await _beats(now, (a,), 2)  # 3 lease times after it stepped aside
    assert a.holds("projections", "totals")


def test_where_a_taken_lease_came_from_a_member_that_left_died_or_had_lapsed_already() -> None:
    """A member that leaves frees its leases with time left on its
    membership; one that died is gone once its membership lapsed; one
    already missing while it still held a lease never freed it."""
    previous = LeaseView(
        (
            LeaseMember("me", "a:1", lapses_in=1.4),
            LeaseMember("leaver", "b:1", lapses_in=1.2),
            LeaseMember("dead", "c:1", lapses_in=0.3),
            LeaseMember("live", "d:1", lapses_in=1.0),
        ),
        (
            Lease("0", "leaver", 1),
            Lease("1", "dead", 1),
            Lease("2", "ghost", 1),
            Lease("3", "live", 1),
            Lease("4", None, 1),
        ),
    )
    now = LeaseView((LeaseMember("me", "a:1"), LeaseMember("live", "d:1")), ())
    found = origins(previous, now, ["0", "1", "2", "3", "4"], elapsed=0.5, slack=0.25)
    assert found == {
        "0": Origin("leaver", "b:1", expired=False),
        "1": Origin("dead", "c:1", expired=True),
        "2": Origin("ghost", "", expired=True),
        "3": Origin("live", "d:1", expired=False),
        "4": Origin(None),
    }
    assert origins(None, now, ["0"], elapsed=None) == {"0": Origin(None)}
