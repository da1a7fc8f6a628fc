"""Guarded leases (service/cluster/leases.py, "Guarding"): while a member
behind the cluster features is live, a member that honours them keeps the
leases whose storage a feature changed (tenant_keyed projections), and
takes them when free, whatever its fair share; fair shares again once the
old member is gone. Over the local lease store, on a clock the test turns."""

from __future__ import annotations

from service.cluster.leases import LeaseGroup, LeaseKeeper, plan_changes
from service.store.leasing import Lease, LeaseMember, LeaseView
from service.store.local_leases import LocalLeases

FEATURES_SINCE = 29  # the schema that made the features table, in these tests
GROUP = "projections"
GUARDED = frozenset({"p", "q"})


def view(owners: dict[str, str | None], members: list[str]) -> LeaseView:
    return LeaseView(
        tuple(LeaseMember(m, f"{m}:1") for m in sorted(members)),
        tuple(Lease(name, owner, 1) for name, owner in sorted(owners.items())),
    )


def test_a_member_above_its_share_gives_up_only_leases_that_are_not_guarded() -> None:
    owners: dict[str, str | None] = {"p": "n", "q": "n", "r": "n"}
    plan = plan_changes(view(owners, ["a", "n"]), "n", frozenset(owners), guarded=GUARDED)
    assert plan.release == ("r",)  # its share is 1 of 3 (a is first by id): p and q stay
    assert plan_changes(view(owners, ["a", "n"]), "n", frozenset(owners)).release != ("r",)  # unguarded: 2 go


def test_a_member_at_its_share_takes_a_free_guarded_lease_at_once() -> None:
    owners: dict[str, str | None] = {"p": None, "q": "n"}
    assert plan_changes(view(owners, ["a", "n"]), "n", frozenset(owners)).acquire == ()
    assert plan_changes(view(owners, ["a", "n"]), "n", frozenset(owners), guarded=GUARDED).acquire == ("p",)


def _keeper(store: LocalLeases, now: list[float], member_id: str, *, schema: int, guard: bool) -> LeaseKeeper:
    group = LeaseGroup(GROUP, ("p", "q"), adopts=True, guarded=GUARDED)
    return LeaseKeeper(
        store,
        member=LeaseMember(member_id, f"{member_id}:1", schema_version=schema),
        groups=[group],
        ttl=3.0,
        clock=lambda: now[0],
        guard_below_schema=FEATURES_SINCE if guard else None,
    )


async def _beats(now: list[float], keepers: tuple[LeaseKeeper, ...], seconds: int) -> None:
    for _ in range(seconds):  # a heartbeat a second (ttl 3)
        now[0] += 1.0
        for keeper in keepers:
            await keeper.beat()


async def _old_member_joins(*, guard: bool) -> tuple[LeaseKeeper, LeaseKeeper, list[float], LocalLeases]:
    """``n`` (this version) holds both leases alone; then ``a`` joins, a
    member whose code knows a schema below the features table's (first by
    id: the fair shares give it one of the two)."""
    now = [0.0]
    store = LocalLeases(clock=lambda: now[0])
    new = _keeper(store, now, "n", schema=FEATURES_SINCE + 1, guard=guard)
    await _beats(now, (new,), 2)
    assert new.held(GROUP) == ["p", "q"]
    # An old member: it knows no guarding (as 0.3.0's keeper), only fair shares.
    old = _keeper(store, now, "a", schema=FEATURES_SINCE - 1, guard=False)
    await _beats(now, (new, old), 6)
    return new, old, now, store


async def test_the_new_member_keeps_its_guarded_leases_while_an_old_member_is_live() -> None:
    new, old, _, _ = await _old_member_joins(guard=True)
    assert new.held(GROUP) == ["p", "q"]
    assert old.held(GROUP) == []


async def test_without_guarding_the_fair_share_hands_one_to_the_old_member() -> None:
    new, old, _, _ = await _old_member_joins(guard=False)  # what the test above would see unfixed
    assert len(new.held(GROUP)) == 1 and len(old.held(GROUP)) == 1


async def test_fair_shares_again_once_the_old_member_left() -> None:
    new, old, now, store = await _old_member_joins(guard=True)
    await old.leave(GROUP)
    other = _keeper(store, now, "b", schema=FEATURES_SINCE + 1, guard=True)
    await _beats(now, (new, other), 6)  # no longer guarded: shared out as any lease
    assert len(new.held(GROUP)) == 1 and len(other.held(GROUP)) == 1
