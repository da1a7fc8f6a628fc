"""The routing client's topology watch outlives an unexpected error."""

from __future__ import annotations

import grpc
import pytest

from chronicle.v1 import cluster_service_pb2
from service.client.routing import Routes
from service.store.memory import MemoryStore
from tests.support.grpc_client import running_server
from tests.support.waiting import eventually


async def test_a_topology_that_fails_to_be_adopted_does_not_end_the_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    # If the watch ended, the client would route by a stale topology (or
    # none) for good: after any error it must watch again.
    async with running_server(MemoryStore()) as (app, client):
        routes = Routes(client.channel, open_channel=grpc.aio.insecure_channel)
        original = routes.adopt
        calls = 0

        def failing_once(topology: cluster_service_pb2.Topology, *, from_seed: bool = False) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("a topology this client cannot take")
            original(topology, from_seed=from_seed)

        monkeypatch.setattr(routes, "adopt", failing_once)
        try:
            routes.start()  # the watch only: no first fetch, so the watch meets the failure
            watcher = routes._watcher
            assert watcher is not None
            # Watching again waits _WATCH_BACKOFF[0] (0.2 s) first.
            await eventually(lambda: routes.changes >= 1, what="a topology adopted after the failure")
            assert calls >= 2
            assert routes.owner_of("acc-1") == app.address
            assert not watcher.done()
        finally:
            await routes.close()
