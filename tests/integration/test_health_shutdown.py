"""A stopping server and its health watchers: each Watch stream hears
NOT_SERVING while the server drains, then ends with UNAVAILABLE
(SHUTTING_DOWN), so a load balancer that holds a Watch open does not hold
the server's stop for the whole grace period; a Watch opened after that is
refused the same way."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.store.memory import MemoryStore
from tests.support.grpc_client import details_of, running_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_a_stopping_server_ends_health_watches_after_they_heard_not_serving() -> None:
    async with running_server(MemoryStore()) as (app, client):
        health = health_pb2_grpc.HealthStub(client.channel)
        watches = [
            health.Watch(health_pb2.HealthCheckRequest(service=name)) for name in ("", "chronicle.v1.CommandService")
        ]
        for watch in watches:
            assert (await watch.read()).status == SERVING
        stopping = asyncio.ensure_future(app.stop(grace=3600.0, drain=0.2))
        for watch in watches:
            assert (await asyncio.wait_for(watch.read(), 10)).status == NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await asyncio.wait_for(watch.read(), 10)
            details = details_of(ended.value)
            assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
        async with asyncio.timeout(10):  # not the hour of grace: no call was left open
            await stopping
        assert app.health.servicer.watches == 0


async def test_a_watch_that_arrives_after_the_watchers_were_ended_is_refused() -> None:
    async with running_server(MemoryStore()) as (app, client):
        app.health.close()  # as ``stop`` does after the drain, before gRPC's stop
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_pb2_grpc.HealthStub(client.channel).Watch(health_pb2.HealthCheckRequest()).read()
        details = details_of(refused.value)
        assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
        checked = await health_pb2_grpc.HealthStub(client.channel).Check(health_pb2.HealthCheckRequest())
        assert checked.status == SERVING  # Check answers until gRPC stops taking calls
