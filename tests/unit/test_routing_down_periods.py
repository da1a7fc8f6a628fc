"""How long a routing client (``service.client.routing.Routes``) leaves a
member that failed alone: one outage seen by many calls is one down period
of a second, however many calls were in flight when the member was marked
down or were sent to it all the same while it was; only probes, the calls
sent once its down period ended, double it (2, 4, 8 s … up to 30 s), and
one answer puts it back to a second. The clock is the test's."""

from __future__ import annotations

from chronicle.v1 import cluster_service_pb2 as cluster_pb
from service.client.routing import DOWN_SECONDS, MOST_DOWN_SECONDS, Routes
from tests.support.routing_channels import Clock, StandIn, refreshed, routes_with

MEMBER = "a:1"


def assert_down_for(routes: Routes, clock: Clock, seconds: float) -> None:
    """``MEMBER`` stays marked down for ``seconds`` from now, no more."""
    assert routes.is_down(MEMBER) == (seconds > 0)
    if seconds == 0:
        return
    start = clock.now
    try:
        clock.now = start + seconds - 1e-6
        assert routes.is_down(MEMBER), f"down for less than {seconds} s"
        clock.now = start + seconds + 1e-6
        assert not routes.is_down(MEMBER), f"down for more than {seconds} s"
    finally:
        clock.now = start


async def test_calls_in_flight_when_a_member_is_marked_down_add_no_down_time() -> None:
    assert (DOWN_SECONDS, MOST_DOWN_SECONDS) == (1.0, 30.0)
    clock = Clock()
    async with routes_with(StandIn(cluster_pb.Topology()), clock) as routes:
        sent = clock.now  # six calls sent to the member
        clock.now += 12  # SIGSTOP for 12 s: they all fail, one after another
        for _ in range(6):
            routes.unreachable(MEMBER)
            clock.now += 0.01
        assert routes.failovers == 6
        assert_down_for(routes, clock, 0.94)  # one down period: a second from the first failure

        clock.now += 0.5
        routes.unreachable(MEMBER, clock.now - 0.2)  # sent to it while it was down (the address given)
        assert_down_for(routes, clock, 0.44)

        clock.now += 0.45  # its down period ended
        routes.unreachable(MEMBER, sent)  # one more call sent before it was marked down
        assert_down_for(routes, clock, 0)
        probes = [clock.now, clock.now + 0.1]  # calls sent now are probes
        clock.now += 0.5
        for probe in probes:
            routes.unreachable(MEMBER, probe)
        assert_down_for(routes, clock, 2.0)  # the first probe's failure doubles it, once
        for down in (2.0, 4.0, 8.0, 16.0, 30.0, 30.0):  # probes that keep failing
            clock.now += down + 0.01
            routes.unreachable(MEMBER, clock.now)
            assert_down_for(routes, clock, min(down * 2, MOST_DOWN_SECONDS))

        clock.now += 1
        routes.answered(MEMBER)  # a call in flight came back: it is alive
        clock.now += 29.5
        routes.unreachable(MEMBER, clock.now)
        assert_down_for(routes, clock, 1.0)  # back to a second
        await refreshed(routes)
        assert routes.failovers == 6 + 1 + 1 + 2 + 6 + 1
