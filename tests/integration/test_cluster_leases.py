"""Leases on PostgreSQL: replicas share partitions fairly, rebalance when
one joins or leaves, take over a dead one's after the lease time, and a
fencing token stops a stale holder's commit.

Each replica here is a real ``LeaseKeeper`` on a store of its own (its own
connections), all on one database: the heartbeats are called one after the
other (``beat``) so that the order of events is the test's, not the
scheduler's, except where concurrency is the point."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack

import psycopg
import pytest

from service.cluster.leases import LeaseGroup, LeaseKeeper
from service.cluster.ownership import Ownership, partition_group
from service.errors import ConcurrencyConflict
from service.store.leasing import LeaseMember
from service.store.postgres import PostgresStore
from service.store.records import DocumentWrite
from tests.support.contents import contents
from tests.support.events import new_event
from tests.support.faults import appends_blocked, wait_for_waiters

pytestmark = pytest.mark.postgres

PARTITIONS = partition_group(64)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def stores(postgres_url: str) -> AsyncIterator[Callable[[], PostgresStore]]:
    """Open a store of its own for each replica (closed at the end)."""
    async with AsyncExitStack() as stack:
        opened: list[PostgresStore] = []

        def new() -> PostgresStore:
            store = PostgresStore(postgres_url, pool_size=2)
            opened.append(store)
            return store

        for_open = new()
        await for_open.open()  # migrate once
        stack.push_async_callback(_close_all, opened)
        yield new


async def _close_all(opened: list[PostgresStore]) -> None:
    for store in opened:
        await store.close()


def keeper(
    store: PostgresStore,
    number: int,
    *,
    groups: Sequence[LeaseGroup] = (PARTITIONS,),
    ttl: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
) -> LeaseKeeper:
    member = LeaseMember(f"member-{number:02d}", f"10.0.0.{number}:50051")
    return LeaseKeeper(store, member=member, groups=groups, ttl=ttl, clock=clock)


async def rounds(keepers: Sequence[LeaseKeeper], count: int) -> None:
    for _ in range(count):
        for each in keepers:
            await each.beat()


def shares(keepers: Sequence[LeaseKeeper], group: str = PARTITIONS.name) -> list[int]:
    return [len(k.held(group)) for k in keepers]


def database_owners(url: str, group: str = PARTITIONS.name) -> dict[str, str | None]:
    """Who holds each lease, read from the tables directly."""
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT name, CASE WHEN expires_at > now() THEN owner END FROM chronicle.leases WHERE lease_group = %s",
            (group,),
        ).fetchall()
    return {str(name): owner for name, owner in found}


async def test_a_lone_replica_takes_every_partition_in_its_first_heartbeat(
    stores: Callable[[], PostgresStore], postgres_url: str
) -> None:
    alone = keeper(stores(), 1)
    await alone.beat()
    assert alone.held(PARTITIONS.name) == sorted(str(p) for p in range(64))
    assert set(database_owners(postgres_url).values()) == {"member-01"}
    ownership = Ownership(alone, 64)
    topology = ownership.topology()
    assert topology.owners == ("member-01",) * 64
    assert [m.address for m in topology.members] == ["10.0.0.1:50051"]
    assert topology.epoch == 64  # each partition taken once
    assert ownership.owns("acc-1")


async def test_a_second_replica_gets_half_within_two_heartbeats_each(
    stores: Callable[[], PostgresStore], postgres_url: str
) -> None:
    first, second = keeper(stores(), 1), keeper(stores(), 2)
    await first.beat()
    # The newcomer sees nothing free yet; the first sees it and gives up
    # its excess; the newcomer takes it at its next heartbeat.
    await second.beat()
    assert shares([first, second]) == [64, 0]
    await first.beat()
    assert shares([first, second]) == [32, 0]
    await second.beat()
    assert shares([first, second]) == [32, 32]
    owners = database_owners(postgres_url)
    assert sorted(owners.values()) == ["member-01"] * 32 + ["member-02"] * 32  # type: ignore[type-var]
    # Both know the same topology after one more round, and it has grown
    # by one per change of owner (64 taken, 32 given up, 32 taken).
    await rounds([first, second], 1)
    one, two = Ownership(first, 64).topology(), Ownership(second, 64).topology()
    assert one.owners == two.owners
    assert one.epoch == two.epoch == 64 + 32 + 32
    assert not set(first.held(PARTITIONS.name)) & set(second.held(PARTITIONS.name))


async def test_sixteen_replicas_share_64_partitions_evenly_and_rebalance_when_four_leave(
    stores: Callable[[], PostgresStore], postgres_url: str
) -> None:
    keepers = [keeper(stores(), n) for n in range(16)]
    await rounds(keepers, 3)
    assert shares(keepers) == [4] * 16
    assert len(set(database_owners(postgres_url).values())) == 16
    for leaving in keepers[:4]:
        await leaving.stop(leave=True)
    staying = keepers[4:]
    # The moment they left, their partitions were free: no one waits for
    # a lease to expire.
    assert sum(1 for owner in database_owners(postgres_url).values() if owner is None) == 16
    await rounds(staying, 2)
    counts = shares(staying)
    assert sum(counts) == 64
    assert max(counts) - min(counts) <= 1  # 64 / 12: four hold 6, eight hold 5
    assert sorted(counts) == [5] * 8 + [6] * 4
    assert None not in database_owners(postgres_url).values()


async def test_concurrent_heartbeats_converge_without_a_lease_held_twice(
    stores: Callable[[], PostgresStore], postgres_url: str
) -> None:
    keepers = [keeper(stores(), n) for n in range(8)]
    # Members racing for the last free leases may need a few rounds (each
    # round, the database gives every contested lease to one of them).
    for _ in range(20):
        await asyncio.gather(*(k.beat() for k in keepers))
        held = [name for k in keepers for name in k.held(PARTITIONS.name)]
        assert len(held) == len(set(held)), "a partition held by two replicas at once"
        if shares(keepers) == [8] * 8:
            break
    assert shares(keepers) == [8] * 8


async def test_a_dead_replicas_partitions_are_taken_over_after_the_lease_time(
    stores: Callable[[], PostgresStore], postgres_url: str
) -> None:
    ttl = 1.0
    survivor, victim = keeper(stores(), 1, ttl=ttl), keeper(stores(), 2, ttl=ttl)
    await rounds([survivor, victim], 2)
    assert shares([survivor, victim]) == [32, 32]
    lost = victim.held(PARTITIONS.name)
    before = {lease.name: lease.epoch for lease in victim.view(PARTITIONS.name).leases}  # type: ignore[union-attr]
    # The victim dies: no more heartbeats, nothing given up.
    died = time.monotonic()
    # Until its leases expire, the survivor cannot take them.
    await survivor.beat()
    assert len(survivor.held(PARTITIONS.name)) == 32
    while len(survivor.held(PARTITIONS.name)) < 64:
        assert time.monotonic() - died < 10 * ttl, "the dead replica's partitions were never taken over"
        await asyncio.sleep(ttl / 5)
        await survivor.beat()
    taken_after = time.monotonic() - died
    assert taken_after >= ttl * 0.9  # not before the victim's lease could have run out
    after = {lease.name: lease.epoch for lease in survivor.view(PARTITIONS.name).leases}  # type: ignore[union-attr]
    assert all(after[name] == before[name] + 1 for name in lost)  # a new epoch: the old holder is fenced off
    # The victim, had it only been paused, would by now hold nothing by its own clock.
    assert victim.held(PARTITIONS.name) == []


async def test_a_replica_stops_treating_leases_as_its_own_when_heartbeats_stop(
    stores: Callable[[], PostgresStore],
) -> None:
    clock = Clock()
    alone = keeper(stores(), 1, ttl=3.0, clock=clock)
    await alone.beat()
    assert len(alone.held(PARTITIONS.name)) == 64
    clock.now += 2.9
    assert alone.holds(PARTITIONS.name, "7")
    assert alone.fencing(PARTITIONS.name, "7") is not None
    clock.now += 0.2  # 3.1 s after the heartbeat was sent
    assert not alone.holds(PARTITIONS.name, "7")
    assert alone.fencing(PARTITIONS.name, "7") is None
    assert alone.held(PARTITIONS.name) == []


async def test_a_stale_fencing_token_cannot_commit_a_projection_batch(
    stores: Callable[[], PostgresStore], postgres_url: str
) -> None:
    group = LeaseGroup("projections", ("bank.balances_by_owner",))
    ttl = 0.3
    store = stores()
    old, new = keeper(store, 1, groups=[group], ttl=ttl), keeper(stores(), 2, groups=[group], ttl=ttl)
    await old.beat()
    stale = old.fencing("projections", "bank.balances_by_owner")
    assert stale is not None
    await store.commit_projection(
        "bank.balances_by_owner", expected_position=0, new_position=3, writes=[], fencing=stale
    )
    # The old holder stalls past its lease; the other replica takes over.
    deadline = time.monotonic() + 10
    while new.fencing("projections", "bank.balances_by_owner") is None:
        assert time.monotonic() < deadline
        await asyncio.sleep(ttl / 3)
        await new.beat()
    current = new.fencing("projections", "bank.balances_by_owner")
    assert current is not None and current.epoch == stale.epoch + 1
    # The stale runner wakes up with a batch from the checkpoint it read:
    # even though the checkpoint has not moved, its commit is refused whole.
    before = await contents(store)
    with pytest.raises(ConcurrencyConflict):
        await store.commit_projection(
            "bank.balances_by_owner",
            expected_position=3,
            new_position=9,
            writes=[DocumentWrite("owner:ann", "bank.v1.OwnerBalance", b"\x08\x01")],
            fencing=stale,
        )
    assert (await contents(store)).changes_since(before) == {}
    await store.commit_projection(
        "bank.balances_by_owner", expected_position=3, new_position=9, writes=[], fencing=current
    )
    assert await store.projection_position("bank.balances_by_owner") == 9
    # A rebuild moves the checkpoint back to 0: the stale runner, finding it
    # there, applies the log from the start with its old cache; its commit
    # from 0 is refused by its token all the same, and writes nothing back.
    await store.reset_projection("bank.balances_by_owner")
    before = await contents(store)
    with pytest.raises(ConcurrencyConflict):
        await store.commit_projection(
            "bank.balances_by_owner",
            expected_position=0,
            new_position=9,
            writes=[DocumentWrite("owner:ann", "bank.v1.OwnerBalance", b"\x08\x01")],
            fencing=stale,
        )
    assert (await contents(store)).changes_since(before) == {}
    await store.commit_projection(
        "bank.balances_by_owner", expected_position=0, new_position=9, writes=[], fencing=current
    )


async def test_replicas_configured_with_another_partition_count_form_a_group_of_their_own(
    stores: Callable[[], PostgresStore],
) -> None:
    sixty_four = keeper(stores(), 1)
    sixteen = keeper(stores(), 2, groups=[partition_group(16)])
    await rounds([sixty_four, sixteen], 2)
    assert len(sixty_four.held(PARTITIONS.name)) == 64
    assert len(sixteen.held("partitions/16")) == 16
    assert [m.member_id for m in Ownership(sixty_four, 64).topology().members] == ["member-01"]


async def test_the_version_moves_when_the_owners_change_and_wakes_a_waiter(
    stores: Callable[[], PostgresStore],
) -> None:
    first, second = keeper(stores(), 1), keeper(stores(), 2)
    await first.beat()
    version = first.version
    waiter = asyncio.ensure_future(first.wait_for_change(version, max_wait=30))
    await first.beat()  # nothing changed
    await asyncio.sleep(0)
    assert not waiter.done()
    await second.beat()
    await first.beat()  # it sees the newcomer and gives up half
    assert await asyncio.wait_for(waiter, 5) > version


async def test_heartbeats_are_not_held_up_by_appends_waiting_for_the_position_lock(
    stores: Callable[[], PostgresStore], postgres_url: str
) -> None:
    store = stores()
    alone = keeper(store, 1)
    await alone.beat()
    with appends_blocked(postgres_url):
        blocked = asyncio.ensure_future(store.append("a-1", [new_event()], 0))
        await asyncio.to_thread(wait_for_waiters, postgres_url)
        # Queued behind the append, the heartbeat would wait for the lock
        # timeout (5 s); on a connection of its own it does not wait at all.
        await asyncio.wait_for(alone.beat(), 2)
        assert not blocked.done()
    await asyncio.wait_for(blocked, 10)
