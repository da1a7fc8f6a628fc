"""Leases on PostgreSQL, and on SQLite between server processes on one
file: replicas share partitions fairly, rebalance when one joins or leaves,
take over a dead one's after the lease time, and a fencing token stops a
stale holder's commit.

Each replica here is a real ``LeaseKeeper`` on a store of its own (its own
connections), all on one database (one file): the heartbeats are called
one after the other (``beat``) so that the order of events is the test's,
not the scheduler's, except where concurrency is the point."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from service.cluster.leases import LeaseGroup, LeaseKeeper
from service.cluster.ownership import Ownership, partition_group
from service.errors import ConcurrencyConflict
from service.store.base import StoreAdapter
from service.store.leasing import LeaseMember
from service.store.postgres import PostgresStore
from service.store.records import DocumentWrite
from service.store.sqlite import SqliteStore
from tests.support.contents import contents
from tests.support.events import new_event
from tests.support.faults import appends_blocked, wait_for_waiters

PARTITIONS = partition_group(64)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Replicas:
    """Stores of one database for replicas: ``await new()`` opens one more
    (its own connections; on SQLite, another process's would be the same),
    ``owners(group)`` reads who holds each lease from the tables directly."""

    new: Callable[[], Awaitable[StoreAdapter]]
    owners: Callable[[str], dict[str, str | None]]


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"])
async def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Replicas]:
    """A ``Replicas`` of a fresh database (closed at the end)."""
    async with AsyncExitStack() as stack:
        opened: list[StoreAdapter] = []
        stack.push_async_callback(_close_all, opened)
        if request.param == "postgres":
            url = str(request.getfixturevalue("postgres_url"))

            async def new() -> StoreAdapter:
                opened.append(PostgresStore(url, pool_size=2))
                await opened[-1].open()
                return opened[-1]

            yield Replicas(new, lambda group: _postgres_owners(url, group))
        else:
            path = str(tmp_path / "shared.db")

            async def new() -> StoreAdapter:
                opened.append(SqliteStore(path))
                await opened[-1].open()
                return opened[-1]

            yield Replicas(new, lambda group: _sqlite_owners(path, group))


async def _close_all(opened: list[StoreAdapter]) -> None:
    for store in opened:
        await store.close()


def keeper(
    store: StoreAdapter,
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


def _postgres_owners(url: str, group: str) -> dict[str, str | None]:
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT name, CASE WHEN expires_at > now() THEN owner END FROM chronicle.leases WHERE lease_group = %s",
            (group,),
        ).fetchall()
    return {str(name): owner for name, owner in found}


def _sqlite_owners(path: str, group: str) -> dict[str, str | None]:
    conn = sqlite3.connect(path)
    try:
        found = conn.execute(
            "SELECT name, CASE WHEN expires_at_us > ? THEN owner END FROM leases WHERE lease_group = ?",
            (time.time_ns() // 1000, group),
        ).fetchall()
    finally:
        conn.close()
    return {str(name): owner for name, owner in found}


def _member_expiry(path: Path, member_id: str = "member-01") -> int:
    conn = sqlite3.connect(path)
    try:
        (expiry,) = conn.execute("SELECT expires_at_us FROM lease_members WHERE member_id = ?", (member_id,)).fetchone()
    finally:
        conn.close()
    return int(expiry)


def database_owners(replicas: Replicas, group: str = PARTITIONS.name) -> dict[str, str | None]:
    """Who holds each lease, read from the tables directly."""
    return replicas.owners(group)


async def test_a_lone_replica_takes_every_partition_in_its_first_heartbeat(replicas: Replicas) -> None:
    alone = keeper(await replicas.new(), 1)
    await alone.beat()
    assert alone.held(PARTITIONS.name) == sorted(str(p) for p in range(64))
    assert set(database_owners(replicas).values()) == {"member-01"}
    ownership = Ownership(alone, 64)
    topology = ownership.topology()
    assert topology.owners == ("member-01",) * 64
    assert [m.address for m in topology.members] == ["10.0.0.1:50051"]
    assert topology.epoch == 64  # each partition taken once
    assert ownership.owns("acc-1")


async def test_a_second_replica_gets_half_within_two_heartbeats_each(replicas: Replicas) -> None:
    first, second = keeper(await replicas.new(), 1), keeper(await replicas.new(), 2)
    await first.beat()
    # The newcomer sees nothing free yet; the first sees it and gives up
    # its excess; the newcomer takes it at its next heartbeat.
    await second.beat()
    assert shares([first, second]) == [64, 0]
    await first.beat()
    assert shares([first, second]) == [32, 0]
    await second.beat()
    assert shares([first, second]) == [32, 32]
    owners = database_owners(replicas)
    assert sorted(owners.values()) == ["member-01"] * 32 + ["member-02"] * 32  # type: ignore[type-var]
    # Both know the same topology after one more round, and it has grown
    # by one per change of owner (64 taken, 32 given up, 32 taken).
    await rounds([first, second], 1)
    one, two = Ownership(first, 64).topology(), Ownership(second, 64).topology()
    assert one.owners == two.owners
    assert one.epoch == two.epoch == 64 + 32 + 32
    assert not set(first.held(PARTITIONS.name)) & set(second.held(PARTITIONS.name))


async def test_sixteen_replicas_share_64_partitions_evenly_and_rebalance_when_four_leave(replicas: Replicas) -> None:
    keepers = [keeper(await replicas.new(), n) for n in range(16)]
    await rounds(keepers, 3)
    assert shares(keepers) == [4] * 16
    assert len(set(database_owners(replicas).values())) == 16
    for leaving in keepers[:4]:
        await leaving.stop(leave=True)
    staying = keepers[4:]
    # The moment they left, their partitions were free: no one waits for
    # a lease to expire.
    assert sum(1 for owner in database_owners(replicas).values() if owner is None) == 16
    await rounds(staying, 2)
    counts = shares(staying)
    assert sum(counts) == 64
    assert max(counts) - min(counts) <= 1  # 64 / 12: four hold 6, eight hold 5
    assert sorted(counts) == [5] * 8 + [6] * 4
    assert None not in database_owners(replicas).values()


async def test_concurrent_heartbeats_converge_without_a_lease_held_twice(replicas: Replicas) -> None:
    keepers = [keeper(await replicas.new(), n) for n in range(8)]
    # Members racing for the last free leases may need a few rounds (each
    # round, the database gives every contested lease to one of them).
    for _ in range(20):
        await asyncio.gather(*(k.beat() for k in keepers))
        held = [name for k in keepers for name in k.held(PARTITIONS.name)]
        assert len(held) == len(set(held)), "a partition held by two replicas at once"
        if shares(keepers) == [8] * 8:
            break
    assert shares(keepers) == [8] * 8


async def test_a_dead_replicas_partitions_are_taken_over_after_the_lease_time(replicas: Replicas) -> None:
    ttl = 1.0
    survivor, victim = keeper(await replicas.new(), 1, ttl=ttl), keeper(await replicas.new(), 2, ttl=ttl)
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
    replicas: Replicas,
) -> None:
    clock = Clock()
    alone = keeper(await replicas.new(), 1, ttl=3.0, clock=clock)
    await alone.beat()
    assert len(alone.held(PARTITIONS.name)) == 64
    clock.now += 2.9
    assert alone.holds(PARTITIONS.name, "7")
    assert alone.fencing(PARTITIONS.name, "7") is not None
    clock.now += 0.2  # 3.1 s after the heartbeat was sent
    assert not alone.holds(PARTITIONS.name, "7")
    assert alone.fencing(PARTITIONS.name, "7") is None
    assert alone.held(PARTITIONS.name) == []


async def test_a_stale_fencing_token_cannot_commit_a_projection_batch(replicas: Replicas) -> None:
    group = LeaseGroup("projections", ("bank.balances_by_owner",))
    ttl = 0.3
    store = await replicas.new()
    old, new = keeper(store, 1, groups=[group], ttl=ttl), keeper(await replicas.new(), 2, groups=[group], ttl=ttl)
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
    replicas: Replicas,
) -> None:
    sixty_four = keeper(await replicas.new(), 1)
    sixteen = keeper(await replicas.new(), 2, groups=[partition_group(16)])
    await rounds([sixty_four, sixteen], 2)
    assert len(sixty_four.held(PARTITIONS.name)) == 64
    assert len(sixteen.held("partitions/16")) == 16
    assert [m.member_id for m in Ownership(sixty_four, 64).topology().members] == ["member-01"]


async def test_the_version_moves_when_the_owners_change_and_wakes_a_waiter(
    replicas: Replicas,
) -> None:
    first, second = keeper(await replicas.new(), 1), keeper(await replicas.new(), 2)
    await first.beat()
    version = first.version
    waiter = asyncio.ensure_future(first.wait_for_change(version, max_wait=30))
    await first.beat()  # nothing changed
    await asyncio.sleep(0)
    assert not waiter.done()
    await second.beat()
    await first.beat()  # it sees the newcomer and gives up half
    assert await asyncio.wait_for(waiter, 5) > version


@pytest.mark.postgres
async def test_heartbeats_are_not_held_up_by_appends_waiting_for_the_position_lock(postgres_url: str) -> None:
    store = PostgresStore(postgres_url, pool_size=2)
    await store.open()
    try:
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
    finally:
        await store.close()


async def test_sqlite_heartbeats_are_not_queued_behind_the_stores_own_work(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "one.db")
    await store.open()
    try:
        alone = keeper(store, 1)
        await alone.beat()
        # The store's one thread is busy (a long read: an export's page, a
        # catch-up): a heartbeat queued behind it would wait for it all.
        started, release = threading.Event(), threading.Event()

        def long_work(db: sqlite3.Connection) -> bool:
            started.set()
            return release.wait(10)

        busy = asyncio.ensure_future(store._writer.run(long_work))
        try:
            assert await asyncio.to_thread(started.wait, 5)
            before = _member_expiry(tmp_path / "one.db")
            await asyncio.wait_for(alone.beat(), 2)
            assert not busy.done()
            assert _member_expiry(tmp_path / "one.db") > before  # renewed in the file meanwhile
        finally:
            release.set()
        assert await busy is True
    finally:
        await store.close()
