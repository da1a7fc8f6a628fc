"""Where a routing client's reads go (``Routes.reader``): the address given
while it is not marked down, else the other live members in turn, and the
address given again once its down period ends; a client that does not know
the address it was given (``seed_address`` None) keeps reads on its
channel. The clock is the test's; the members are stand-ins."""

from __future__ import annotations

import pytest

from chronicle.v1 import cluster_service_pb2 as cluster_pb
from service.client.routing import DOWN_SECONDS, Routes
from tests.support.routing_channels import Clock, StandIn

SEED, B, C = "seed:1", "b:1", "c:1"


def topology() -> cluster_pb.Topology:
    members = [cluster_pb.Member(member_id=address, address=address) for address in (SEED, B, C)]
    return cluster_pb.Topology(
        epoch=1,
        partition_count=4,
        hash=cluster_pb.PARTITION_HASH_CRC32,
        members=members,
        partition_owners=[SEED, B, C, SEED],
    )


def routes_of(clock: Clock, monkeypatch: pytest.MonkeyPatch, seed_address: str | None) -> Routes:
    seed = StandIn(topology())
    routes = Routes(seed, open_channel=lambda _address: StandIn(seed.answer), clock=clock, seed_address=seed_address)
    monkeypatch.setattr(routes, "start", lambda: None)  # no watch: the topology is the test's
    routes.adopt(topology())
    return routes


async def test_reads_go_to_the_address_given_while_it_is_up_else_to_the_live_members_in_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    routes = routes_of(clock, monkeypatch, SEED)
    try:
        assert [routes.reader() for _ in range(3)] == [SEED] * 3
        routes.unreachable(SEED)  # a read found it gone
        elsewhere = [routes.reader() for _ in range(4)]
        assert set(elsewhere) == {B, C} and elsewhere[0] != elsewhere[1]
        routes.unreachable(B)
        assert [routes.reader() for _ in range(2)] == [C, C]
        routes.unreachable(C)
        assert routes.reader() == SEED  # none live: the address given, as a command goes to the seed
        clock.now += DOWN_SECONDS + 0.01
        assert routes.reader() == SEED  # its down period over: back to the address given
    finally:
        await routes.close()


async def test_a_client_that_does_not_know_the_address_given_keeps_reads_on_its_channel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    routes = routes_of(Clock(), monkeypatch, None)
    try:
        routes.unreachable(SEED)
        assert routes.reader() is None
    finally:
        await routes.close()
