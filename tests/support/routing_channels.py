"""Stand-ins for a routing client's (``service.client.routing.Routes``)
channels and clock, for tests of what it decides without a server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from chronicle.v1 import cluster_service_pb2 as cluster_pb
from service.client.routing import Routes


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class StandIn:
    """A channel to a member whose GetTopology answers ``answer`` (the
    client's calls counted); nothing else is called on it here."""

    def __init__(self, answer: cluster_pb.Topology) -> None:
        self.answer = answer
        self.fetches = 0

    def unary_unary(self, method: str, **_: Any) -> Callable[..., Any]:
        if method != "/chronicle.v1.ClusterService/GetTopology":
            return never(method)

        async def call(_request: Any, **__: Any) -> cluster_pb.GetTopologyResponse:
            self.fetches += 1
            return cluster_pb.GetTopologyResponse(topology=self.answer)

        return call

    def unary_stream(self, method: str, **_: Any) -> Callable[..., Any]:
        return never(method)

    def stream_unary(self, method: str, **_: Any) -> Callable[..., Any]:
        return never(method)

    def stream_stream(self, method: str, **_: Any) -> Callable[..., Any]:
        return never(method)

    async def close(self) -> None:
        pass


def never(method: str) -> Callable[..., Any]:
    def called(*_: Any, **__: Any) -> Any:
        raise AssertionError(f"{method} called: only GetTopology is, here")

    return called


@asynccontextmanager
async def routes_with(seed: StandIn, clock: Clock) -> AsyncIterator[Routes]:
    routes = Routes(seed, open_channel=lambda _address: StandIn(seed.answer), clock=clock)
    try:
        yield routes
    finally:
        await routes.close()


async def refreshed(routes: Routes) -> None:
    """Once the fetch a hint or a failure started (if any) is done."""
    if routes._refresh is not None:
        await routes._refresh
