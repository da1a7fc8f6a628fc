"""docs/scaling.md, claim by claim, where no other test asserted the claim:
real servers on one PostgreSQL (short leases: tests/support/cluster.py),
the stores of one process, a routing client, a hot standby.

- the defaults (64 partitions, leases of 3 s, a heartbeat each second), the
  advertised address, and the one member of a store of one process;
- a replica that stops gives its partitions up as it starts draining (and
  serves on meanwhile, with the hint), its projections after its runners,
  and leaves both groups at once rather than letting them lapse;
- a paused replica holds nothing by its own clock once another took its
  partitions, and still executes commands, with the hint;
- a member whose heartbeats fail lets its leases lapse; a lease taken as
  its member leaves is not held after;
- replicas with other partition counts form groups of their own and share
  the projections;
- routing clients: the first topology waits two seconds at most; a member
  marked down is tried again after a second; a client whose seed stops
  watches another member; a stale topology is corrected by the hint;
  while a partition has no owner, commands go to any member;
- only the replica that runs a reaction replays or dismisses its parked
  commands;
- with a standby, projections, the topology and commands stay on the
  primary, and reads are UNAVAILABLE while the standby is down.

Where a test waits, it waits for an outcome (``eventually``); the bounds
only make a broken build fail rather than hang."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

import service.app
from chronicle.v1 import cluster_service_pb2 as cluster_pb
from chronicle.v1 import cluster_service_pb2_grpc as cluster_grpc
from chronicle.v1 import command_service_pb2
from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import projection_service_pb2 as projection_pb
from chronicle.v1 import reaction_service_pb2 as reaction_pb
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.client import ChronicleClient, Command, RetryPolicy
from service.client.routing import DOWN_SECONDS, Routes
from service.cluster.hashing import partition_of
from service.cluster.leases import LeaseKeeper
from service.cluster.ownership import partition_group
from service.errors import StoreUnavailable
from service.settings import Settings
from service.store.base import LeaseStore
from service.store.leasing import Lease, LeaseMember, LeaseView
from service.store.memory import MemoryStore
from service.store.postgres import PostgresStore
from service.store.sqlite import SqliteStore
from tests.support.cluster import replica, settled
from tests.support.grpc_client import TEST_SETTINGS, Client, command, details_of, running_server
from tests.support.processes import free_port
from tests.support.silent_proxy import SilentProxy
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

FAST = RetryPolicy(initial_backoff=0.02, max_backoff=0.2, max_attempts=20)
PARTITIONS = partition_group(64)
PROJECTIONS = "projections"  # the lease group of projections and reactions
TRANSFERS = "bank.transfers"  # the bank's reaction (the discovered plugins': one projection, one reaction)
NOT_OWNER = "chronicle-not-owner"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def topology_of(client: Client) -> cluster_pb.Topology:
    stub = cluster_grpc.ClusterServiceStub(client.channel)
    response: cluster_pb.GetTopologyResponse = await stub.GetTopology(cluster_pb.GetTopologyRequest(), timeout=10)
    return response.topology


def owned_by(app: Application, count: int = 1) -> list[str]:
    """``count`` account ids whose partition ``app`` owns now."""
    return [a for a in (f"acc-{n}" for n in range(10_000)) if app.ownership.owns(a)][:count]


def not_owner(metadata: Any) -> str | None:
    """The partition a response's not-owner hint names, if it has one."""
    found = dict(metadata or ())
    return str(found[NOT_OWNER]) if NOT_OWNER in found else None


async def knows_the_holders(client: Client, apps: Sequence[Application]) -> bool:
    """Whether the replica ``client`` reaches has seen every partition's
    holder (its view may be a heartbeat behind the holders' own)."""
    owners = (await topology_of(client)).partition_owners
    return all(owners[p] == app.leases.member_id for app in apps for p in app.ownership.owned())


def projection_shares(apps: Sequence[Application]) -> list[int]:
    return [len(app.leases.held(PROJECTIONS)) for app in apps]


# -- defaults, addresses, stores of one process ------------------------------------


async def test_by_default_64_partitions_leases_of_3_s_a_heartbeat_each_second_and_the_address_given() -> None:
    assert (Settings().partitions, Settings().lease_seconds) == (64, 3.0)
    settings = replace(TEST_SETTINGS, advertise_address="chronicle-7.internal:443")
    async with running_server(MemoryStore(), settings=settings) as (app, client):
        topology = await topology_of(client)
        assert (app.leases.ttl, app.leases.interval) == (3.0, 1.0)  # a heartbeat every third of the lease
    assert topology.partition_count == 64
    assert [m.address for m in topology.members] == ["chronicle-7.internal:443"]  # not its listen address


async def test_on_sqlite_the_one_process_is_the_one_member_and_holds_every_lease(tmp_path: Path) -> None:
    async with running_server(SqliteStore(tmp_path / "events.db")) as (app, client):
        topology = await topology_of(client)
        projections = app.leases.held(PROJECTIONS)
    (member,) = topology.members
    assert member.address == app.address
    assert list(topology.partition_owners) == [member.member_id] * 64
    assert projections == sorted(["bank.balances_by_owner", TRANSFERS])


# -- leases: stopping, pausing, failing heartbeats, leaving ------------------------

_DRAIN = 97.0  # seconds of drain no test waits for: _HeldDrain holds it instead


class _HeldDrain:
    """``service.app``'s ``asyncio``, except that the drain of a stopping
    server (its sleep of ``_DRAIN`` seconds) lasts until ``released``: the
    test looks at the cluster while one replica drains, for as long as it
    needs, without a timing of its own."""

    def __init__(self) -> None:
        self.draining = asyncio.Event()
        self.released = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, delay: float, result: Any = None) -> Any:
        if delay != _DRAIN:
            return await asyncio.sleep(delay, result)
        self.draining.set()
        await self.released.wait()
        return result


def lease_rows(url: str, member_id: str) -> tuple[int, int]:
    """(its member rows, the leases it holds), read from the tables: a
    member that left has neither; one that died keeps its rows for an hour
    and holds its leases until they are taken."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM chronicle.lease_members WHERE member_id = %s),"
            " (SELECT count(*) FROM chronicle.leases WHERE owner = %s)",
            (member_id, member_id),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def test_a_stopping_replica_gives_its_partitions_up_as_it_starts_draining_and_its_projections_after(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with replica(postgres_url) as (staying, _), replica(postgres_url) as (leaving, to_leaving):
        apps = [staying, leaving]
        await settled(apps)
        await eventually(lambda: projection_shares(apps) == [1, 1], what="a projection lease each")
        account = owned_by(leaving)[0]
        drain = _HeldDrain()
        monkeypatch.setattr(service.app, "asyncio", drain)
        stopping = asyncio.ensure_future(leaving.stop(grace=1.0, drain=_DRAIN))
        try:
            await asyncio.wait_for(drain.draining.wait(), 20)
            # Draining (health NOT_SERVING, calls still served): its
            # partitions are given up already, and the other takes them.
            assert leaving.ownership.owned() == []
            await eventually(lambda: len(staying.ownership.owned()) == 64, what="the partitions taken over")
            # Its runners still run: their leases go after they stopped.
            assert len(leaving.leases.held(PROJECTIONS)) == 1
            # A command that reaches it now is executed, with the hint.
            partition = partition_of(account, 64)
            call = to_leaving.commands.Submit(
                command_service_pb2.SubmitRequest(command=command(account, bank.OpenAccount(owner="o")))
            )
            assert (await call).version == 1
            assert not_owner(await call.trailing_metadata()) == str(partition)
        finally:
            drain.released.set()
            await asyncio.wait_for(stopping, 20)
        # It left both groups, given up at once rather than left to lapse.
        assert await asyncio.to_thread(lease_rows, postgres_url, leaving.leases.member_id) == (0, 0)
        await eventually(lambda: projection_shares([staying]) == [2], what="the projections taken over")


async def test_a_paused_replica_holds_nothing_once_taken_over_and_still_executes_commands_with_the_hint(
    postgres_url: str,
) -> None:
    async with replica(postgres_url) as (other, _), replica(postgres_url) as (paused, to_paused):
        await settled([other, paused])
        account = owned_by(paused)[0]
        opened = to_paused.commands.Submit(
            command_service_pb2.SubmitRequest(command=command(account, bank.OpenAccount(owner="o")))
        )
        await opened
        assert not_owner(await opened.trailing_metadata()) is None  # its owner: no hint
        # The pause: no more heartbeats, nothing given up; it goes on serving.
        await paused.leases.stop(leave=False)
        await eventually(lambda: len(other.ownership.owned()) == 64, what="its partitions taken over")
        # By the time another holds them, its own clock says it holds nothing.
        assert paused.ownership.owned() == []
        deposit = to_paused.commands.Submit(
            command_service_pb2.SubmitRequest(command=command(account, bank.Deposit(amount=5)))
        )
        assert (await deposit).version == 2
        assert not_owner(await deposit.trailing_metadata()) == str(partition_of(account, 64))


class _Switchable:
    """A lease store that can become unreachable, as a database can."""

    def __init__(self, store: LeaseStore) -> None:
        self._store = store
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("the database cannot be reached")

    async def renew_leases(self, group: str, member: LeaseMember, names: Sequence[str], ttl: float) -> LeaseView:
        self._check()
        return await self._store.renew_leases(group, member, names, ttl)

    async def change_leases(
        self, group: str, member_id: str, *, release: Sequence[str], acquire: Sequence[str], ttl: float
    ) -> list[Lease]:
        self._check()
        return await self._store.change_leases(group, member_id, release=release, acquire=acquire, ttl=ttl)

    async def leave_group(self, group: str, member_id: str) -> None:
        self._check()
        await self._store.leave_group(group, member_id)


async def test_a_member_whose_heartbeats_fail_lets_its_leases_lapse_after_the_lease_time(
    postgres_store: PostgresStore,
) -> None:
    clock = Clock()
    store = _Switchable(postgres_store)
    member = LeaseKeeper(store, member=LeaseMember("m-1", "10.0.0.1:50051"), groups=[PARTITIONS], ttl=3.0, clock=clock)
    await member.beat_safely()
    assert len(member.held(PARTITIONS.name)) == 64
    store.down = True
    clock.now += 2.0
    await member.beat_safely()  # fails: said in the log, not raised
    assert len(member.held(PARTITIONS.name)) == 64  # within the lease time of the last heartbeat that went through
    clock.now += 1.1
    await member.beat_safely()
    assert member.held(PARTITIONS.name) == []
    assert member.fencing(PARTITIONS.name, "0") is None
    store.down = False
    await member.beat_safely()  # the database back: its leases (still its own there) are renewed
    assert len(member.held(PARTITIONS.name)) == 64


class _TakesSlowly:
    """A lease store whose ``change_leases`` returns (what the database
    gave) only when the test says so."""

    def __init__(self, store: LeaseStore) -> None:
        self._store = store
        self.taken = asyncio.Event()
        self.answer = asyncio.Event()

    async def renew_leases(self, group: str, member: LeaseMember, names: Sequence[str], ttl: float) -> LeaseView:
        return await self._store.renew_leases(group, member, names, ttl)

    async def change_leases(
        self, group: str, member_id: str, *, release: Sequence[str], acquire: Sequence[str], ttl: float
    ) -> list[Lease]:
        taken = await self._store.change_leases(group, member_id, release=release, acquire=acquire, ttl=ttl)
        self.taken.set()
        await self.answer.wait()
        return taken

    async def leave_group(self, group: str, member_id: str) -> None:
        await self._store.leave_group(group, member_id)


async def test_leases_taken_as_their_member_leaves_are_not_held_after_it_left(
    postgres_store: PostgresStore, postgres_url: str
) -> None:
    slow = _TakesSlowly(postgres_store)
    leaving = LeaseKeeper(slow, member=LeaseMember("m-1", "10.0.0.1:50051"), groups=[PARTITIONS], ttl=30.0)
    beat = asyncio.ensure_future(leaving.beat())  # finds all 64 free, and takes them
    await asyncio.wait_for(slow.taken.wait(), 10)
    # It stops while the database's answer is on its way: it leaves,
    # giving up at once what it had just been given.
    await leaving.leave(PARTITIONS.name)
    slow.answer.set()
    await asyncio.wait_for(beat, 10)
    assert leaving.held(PARTITIONS.name) == []
    other_store = PostgresStore(postgres_url, pool_size=2)
    try:
        other = LeaseKeeper(other_store, member=LeaseMember("m-2", "10.0.0.2:50051"), groups=[PARTITIONS], ttl=30.0)
        await other.beat()
        assert len(other.held(PARTITIONS.name)) == 64  # free at once: nothing left to lapse
        assert not any(leaving.holds(PARTITIONS.name, str(p)) for p in range(64))  # never two holders
    finally:
        await other_store.close()


async def test_replicas_with_another_partition_count_answer_with_their_own_group_and_share_the_projections(
    postgres_url: str,
) -> None:
    async with replica(postgres_url) as (wide, to_wide), replica(postgres_url, partitions=16) as (narrow, to_narrow):

        def alone(topology: cluster_pb.Topology, app: Application, count: int) -> bool:
            me = app.leases.member_id
            seen = (topology.partition_count, list(topology.partition_owners), [m.member_id for m in topology.members])
            return seen == (count, [me] * count, [me])

        async def own_groups() -> bool:
            return alone(await topology_of(to_wide), wide, 64) and alone(await topology_of(to_narrow), narrow, 16)

        await eventually(own_groups, what="each replica the one member of its own partitions group")
        # The projections are one group: a lease each.
        await eventually(lambda: projection_shares([wide, narrow]) == [1, 1], what="the projections shared")
        members = {m.member_id for m in (wide.leases.view(PROJECTIONS) or LeaseView((), ())).members}
        assert members == {wide.leases.member_id, narrow.leases.member_id}


# -- routing clients ------------------------------------------------------------------


async def test_a_routing_client_whose_first_topology_does_not_come_starts_all_the_same() -> None:
    async with running_server(MemoryStore()) as (app, _), SilentProxy(app.port).running() as proxy:
        proxy.silence()  # connections open, nothing answered
        async with asyncio.timeout(20):  # the fetch gives up after two seconds; 20 only bounds a broken build
            async with ChronicleClient.connect(f"127.0.0.1:{proxy.port}", routing=True) as client:
                assert client.routes is not None
                assert client.routes.topology is None
        assert proxy.connections >= 1  # it did ask


async def test_a_member_that_did_not_answer_is_tried_again_after_a_second() -> None:
    assert DOWN_SECONDS == 1.0
    clock = Clock()
    async with running_server(MemoryStore()) as (app, client):
        routes = Routes(client.channel, open_channel=grpc.aio.insecure_channel, clock=clock)
        try:
            await routes.first_topology()
            assert routes.route("acc-1")[1] == app.address
            routes.unreachable(app.address)
            assert routes.route("acc-1")[1] is None  # down, and no other member: the address given
            clock.now += 0.99
            assert routes.route("acc-1")[1] is None
            clock.now += 0.01
            assert routes.route("acc-1")[1] == app.address  # tried again
        finally:
            await routes.close()


async def test_a_routing_client_whose_seed_stops_watches_another_member_and_follows_the_new_owners(
    postgres_url: str,
) -> None:
    async with replica(postgres_url) as (seed, _), replica(postgres_url) as (other, _):
        await settled([seed, other])
        async with ChronicleClient.connect(seed.address, routing=True, retry=FAST) as client:
            routes = client.routes
            assert routes is not None
            both = {seed.leases.member_id, other.leases.member_id}
            await asyncio.wait_for(routes.wait_for_topology(lambda t: set(t.partition_owners) == both), 20)
            await seed.stop(grace=1.0, drain=0.0)  # its watch stream ends (UNAVAILABLE)
            alone = [other.leases.member_id]

            def followed(topology: cluster_pb.Topology) -> bool:
                members = [m.member_id for m in topology.members]
                return list(topology.partition_owners) == alone * 64 and members == alone

            await asyncio.wait_for(routes.wait_for_topology(followed), 20)
            assert routes.refreshes == 0  # heard by watching: no command failed or was hinted
            await client.submit("acc-1", bank.OpenAccount(owner="o"))
            assert (routes.not_owner, routes.failovers) == (0, 0)  # straight to the new owner


async def test_a_stale_routing_client_s_command_is_executed_where_it_lands_and_the_hint_corrects_it(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with replica(postgres_url) as (first, to_first), replica(postgres_url) as (second, _):
        await settled([first, second])
        await eventually(lambda: knows_the_holders(to_first, [first, second]), what="the first knowing who holds what")
        client = ChronicleClient.connect(first.address, routing=True, retry=FAST)
        try:
            routes = client.routes
            assert routes is not None
            monkeypatch.setattr(routes, "start", lambda: None)  # no watch: only the hint can correct it
            stale = cluster_pb.Topology()
            stale.CopyFrom(await topology_of(to_first))
            stale.epoch = 1
            stale.partition_owners[:] = [first.leases.member_id] * 64
            routes.adopt(stale)
            account = owned_by(second)[0]
            assert routes.owner_of(account) == first.address
            assert (await client.submit(account, bank.OpenAccount(owner="o"))).version == 1
            assert routes.not_owner == 1
            await eventually(lambda: routes.owner_of(account) == second.address, what="the topology fetched again")
            # A batch goes to its aggregate's owner too.
            batch = await client.submit_batch([Command(account, bank.Deposit(amount=n)) for n in (1, 2)])
            assert batch.version == 3
            assert routes.not_owner == 1
        finally:
            await client.close()


async def test_while_a_partition_has_no_owner_a_routing_client_sends_to_any_member(postgres_url: str) -> None:
    async with replica(postgres_url) as (first, _), replica(postgres_url) as (second, _):
        apps = [first, second]
        await settled(apps)
        async with ChronicleClient.connect(first.address, routing=True, retry=FAST) as client:
            routes = client.routes
            assert routes is not None
            await asyncio.wait_for(routes.wait_for_topology(lambda t: len(t.members) == 2), 20)
            assert routes.topology is not None
            ownerless = cluster_pb.Topology()
            ownerless.CopyFrom(routes.topology)
            ownerless.epoch = 1 << 62  # newer than any the watch brings
            ownerless.partition_owners[:] = [""] * 64
            routes.adopt(ownerless)
            for n in range(6):
                assert (await client.submit(f"acc-{n}", bank.OpenAccount(owner="o"))).version == 1
        # Executed by both members, not only the address given.
        assert all(app.router.live_workers > 0 for app in apps)
        assert sum(app.router.live_workers for app in apps) == 6


# -- reactions ---------------------------------------------------------------------------


async def refused(call: Any) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return details_of(error.value)


async def test_only_the_replica_that_runs_a_reaction_replays_or_dismisses_its_parked_commands(
    postgres_url: str,
) -> None:
    async with (
        replica(postgres_url, anonymous_admin=True) as (a, to_a),
        replica(postgres_url, anonymous_admin=True) as (b, to_b),
    ):
        apps = [(a, to_a), (b, to_b)]
        await eventually(lambda: projection_shares([a, b]) == [1, 1], what="a projection lease each")
        ((runner, to_runner),) = [(app, c) for app, c in apps if app.reactions.runners[TRANSFERS].holds_lease]
        ((_, to_other),) = [(app, c) for app, c in apps if app is not runner]
        running = [
            (await c.reactions.GetReaction(reaction_pb.GetReactionRequest(name=TRANSFERS))).running for _, c in apps
        ]
        assert running == [app is runner for app, _ in apps]
        command_id = str(uuid.uuid4())

        async def told_where() -> bool:
            request = reaction_pb.ReplayParkedCommandRequest(reaction=TRANSFERS, command_id=command_id)
            details = await refused(to_other.reactions.ReplayParkedCommand(request))
            assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "REACTION_RUNS_ELSEWHERE")
            return bool(details.metadata.get("runner") == runner.address)

        await eventually(told_where, what="the other replica naming the runner")
        dismiss = reaction_pb.DismissParkedCommandRequest(reaction=TRANSFERS, command_id=command_id)
        details = await refused(to_other.reactions.DismissParkedCommand(dismiss))
        assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "REACTION_RUNS_ELSEWHERE")
        # The runner looks for it (there is none).
        details = await refused(to_runner.reactions.DismissParkedCommand(dismiss))
        assert (details.code, details.reason) == (grpc.StatusCode.NOT_FOUND, "PARKED_COMMAND_NOT_FOUND")


# -- a hot standby -------------------------------------------------------------------------


async def test_with_a_standby_projections_the_topology_and_commands_stay_on_the_primary(
    standby_urls: tuple[str, str],
) -> None:
    primary_url, standby_url = standby_urls
    settings = replace(
        TEST_SETTINGS, database_url=primary_url, read_database_url=standby_url, read_wait_seconds=0.5, poll_seconds=0.1
    )
    async with running_server(PostgresStore(primary_url, pool_size=4), settings=settings) as (app, client):
        opened = await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))

        async def replayed() -> bool:
            request = ev.GetAggregateRequest(aggregate_id="acc-1", min_position=opened.events[0].position)
            try:
                await client.events.GetAggregate(request)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.UNAVAILABLE:  # the schema or the event not replayed yet
                    return False
                raise
            return True

        await eventually(replayed, what="the account on the standby")
        with psycopg.connect(standby_url, autocommit=True) as standby:
            standby.execute("SELECT pg_wal_replay_pause()")
            try:
                deposited = await client.submit(command("acc-1", bank.Deposit(amount=5)))
                position = deposited.events[0].position
                # The read model: from the primary, so it has the deposit.
                document = await client.projections.GetDocument(
                    projection_pb.GetDocumentRequest(
                        projection="bank.balances_by_owner", key="owner:ann", min_position=position
                    ),
                    timeout=20,
                )
                balance = bank.OwnerBalance()
                document.document.Unpack(balance)
                assert balance.balance == 5
                # The topology: from the primary's leases.
                assert list((await topology_of(client)).partition_owners) == [app.leases.member_id] * 64
                # The aggregate's events, paged too: from the standby, without the deposit.
                pages = client.events.ReadAggregatePages(ev.ReadAggregateRequest(aggregate_id="acc-1"))
                assert [e.version async for page in pages for e in page.events] == [1]
            finally:
                standby.execute("SELECT pg_wal_replay_resume()")


async def test_while_the_standby_is_down_reads_are_unavailable_and_commands_go_on(postgres_url: str) -> None:
    nowhere = f"postgresql://chronicle@127.0.0.1:{free_port()}/nothing"
    settings = replace(TEST_SETTINGS, database_url=postgres_url, read_database_url=nowhere, read_wait_seconds=0.5)
    async with running_server(PostgresStore(postgres_url, pool_size=4), settings=settings) as (_, client):
        assert (await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))).version == 1
        details = await refused(client.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="acc-1"), timeout=20))
        assert details.code == grpc.StatusCode.UNAVAILABLE
