"""Which topologies a routing client (``service.client.routing.Routes``)
takes, by epoch and partition count: epochs order the topologies of one
partition group only, so a topology of another partition count is taken
whatever its epoch (replicas restarted with another ``--partitions``); of
the client's group a lower epoch is a view behind the client's and is not
taken, unless fetches keep answering a lower one (the database's epochs
went back: a fresh or restored database), and a hint with a lower epoch
makes the client fetch. The members are stand-in channels whose
GetTopology answers what the test says, and the clock is the test's."""

from __future__ import annotations

from chronicle.v1 import cluster_service_pb2 as cluster_pb
from service.client.routing import NOT_OWNER_KEY, TOPOLOGY_EPOCH_KEY
from tests.support.routing_channels import Clock, StandIn, refreshed, routes_with


def topology(epoch: int, count: int = 64, owner: str = "a") -> cluster_pb.Topology:
    members = [cluster_pb.Member(member_id=name, address=f"{name}:1") for name in ("a", "b")]
    return cluster_pb.Topology(
        epoch=epoch,
        partition_count=count,
        hash=cluster_pb.PARTITION_HASH_CRC32,
        members=members,
        partition_owners=[owner] * count,
    )


def hint(epoch: int) -> list[tuple[str, str]]:
    """The trailing metadata of a command a member executed without owning it."""
    return [(NOT_OWNER_KEY, "7"), (TOPOLOGY_EPOCH_KEY, str(epoch))]


async def test_a_topology_of_another_partition_count_is_taken_whatever_its_epoch() -> None:
    """Replicas restarted one by one with --partitions 128 instead of 64
    answer with the partitions/128 group's topology, whose epoch (the sum of
    that group's lease epochs) is far below the partitions/64 one the client
    holds: the watch's is taken, and so is a fetch's after a hint."""
    clock = Clock()
    seed = StandIn(topology(342, count=128, owner="b"))
    async with routes_with(seed, clock) as routes:
        routes.adopt(topology(3275))
        routes.adopt(topology(342, count=128, owner="b"))  # from the watch
        assert routes.topology is not None
        assert (routes.topology.partition_count, routes.topology.epoch) == (128, 342)
        assert routes.owner_of("acc-1") == "b:1"

        routes.adopt(topology(3275))  # back to the 64 group (a member of it answered)
        assert routes.topology.partition_count == 64
        routes.hinted(hint(342))  # a partitions/128 member, which does not own acc-1
        await refreshed(routes)
        assert seed.fetches == 1
        assert routes.topology is not None
        assert (routes.topology.partition_count, routes.topology.epoch) == (128, 342)


async def test_lower_epochs_fetched_for_two_seconds_are_taken_and_a_lagging_view_is_not() -> None:
    """The database's epochs went back (a restored database): every member
    answers a lower epoch than the client's for good, and hints say the
    client routes wrong. A lower hint fetches once a second at most, and the
    third lower fetch in a row, two seconds after the first, is taken. A
    view a heartbeat behind (fetched lower once, then the held epoch again)
    is not, nor a lower topology from the watch, nor lower fetches in quick
    succession."""
    clock = Clock()
    held = topology(3275, owner="a")
    seed = StandIn(topology(3274, owner="b"))  # its view lags a heartbeat
    async with routes_with(seed, clock) as routes:
        routes.adopt(held)
        routes.hinted(hint(3274))
        await refreshed(routes)
        assert (seed.fetches, routes.topology) == (1, held)
        for n in range(5):  # members failing fetch at once, but lower fetches count once a second
            routes.unreachable(f"m{n}:1")
            await refreshed(routes)
            clock.now += 0.1
        assert seed.fetches == 6
        assert routes.topology == held
        clock.now += 1
        seed.answer = held  # caught up
        routes.hinted(hint(3274))
        await refreshed(routes)
        assert (seed.fetches, routes.topology) == (7, held)
        seed.answer = topology(3274, owner="b")
        for _ in range(3):  # the lower topology of the watch is never taken
            clock.now += 1
            routes.adopt(seed.answer)
        assert routes.topology == held

        restored = topology(342, owner="b")
        seed.answer = restored
        clock.now += 1
        routes.hinted(hint(342))
        await refreshed(routes)
        assert (seed.fetches, routes.topology) == (8, held)  # one lower fetch: the count starts again
        clock.now += 0.5
        routes.hinted(hint(342))  # within the second: no fetch
        await refreshed(routes)
        assert (seed.fetches, routes.topology) == (8, held)
        clock.now += 0.5
        routes.hinted(hint(342))
        await refreshed(routes)
        assert (seed.fetches, routes.topology) == (9, held)
        clock.now += 1
        routes.hinted(hint(342))
        await refreshed(routes)
        assert seed.fetches == 10
        assert routes.topology == restored
        assert routes.owner_of("acc-1") == "b:1"
        routes.adopt(topology(343, owner="a"))  # and the watch's next one follows
        assert routes.owner_of("acc-1") == "a:1"
