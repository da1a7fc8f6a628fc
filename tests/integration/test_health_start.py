"""A starting server and its health: from the moment its port takes calls
until its first store check has passed, Check answers NOT_SERVING for the
server as a whole ("") and for every service it serves (not gRPC's default
SERVING for "" and NOT_FOUND for the rest), so a load balancer sends nothing
to a server that has not yet reached its store; a Watch opened meanwhile
hears NOT_SERVING, then SERVING once the check passes."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.api.health import LIVENESS, SERVICE_NAMES
from service.app import start
from service.store.base import StoreAdapter
from service.store.memory import MemoryStore
from tests.support.grpc_client import TEST_SETTINGS, connect
from tests.support.processes import free_port
from tests.support.waiting import eventually

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HeldPing:
    """Delegates to ``inner``; every ping waits until ``gate`` is set, and
    ``pinged`` is set once one waits."""

    def __init__(self, inner: StoreAdapter) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.pinged = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def ping(self) -> None:
        self.pinged.set()
        await self.gate.wait()
        await self.inner.ping()


async def test_a_server_is_not_serving_until_its_first_store_check_passes() -> None:
    store = HeldPing(MemoryStore())
    address = f"127.0.0.1:{free_port()}"
    settings = replace(TEST_SETTINGS, listen=address, health_interval=0.2)
    starting = asyncio.ensure_future(start(settings, store=store))
    try:
        async with asyncio.timeout(20):
            await store.pinged.wait()  # the port takes calls; the first check is held
        async with connect(address) as client:
            health = health_pb2_grpc.HealthStub(client.channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
            assert (await asyncio.wait_for(watch.read(), 10)).status == NOT_SERVING
            for name in ("", *SERVICE_NAMES):
                checked = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
                assert checked.status == NOT_SERVING, name
            listed = await health.List(health_pb2.HealthListRequest(), timeout=10)
            assert {name: s.status for name, s in listed.statuses.items()} == {
                **dict.fromkeys(("", *SERVICE_NAMES), NOT_SERVING),
                LIVENESS: SERVING,  # alive while it waits for its store: no reason to restart it
            }
            store.gate.set()
            await asyncio.wait_for(asyncio.shield(starting), 20)
            assert (await asyncio.wait_for(watch.read(), 10)).status == SERVING
            for name in ("", *SERVICE_NAMES):

                async def serving(name: str = name) -> bool:
                    checked = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
                    return bool(checked.status == SERVING)

                await eventually(serving, what=f"{name!r} SERVING")
            watch.cancel()
    finally:
        store.gate.set()
        app = await asyncio.wait_for(starting, 20)
        await app.stop(grace=1.0)
