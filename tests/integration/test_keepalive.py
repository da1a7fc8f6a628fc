"""A client that vanishes without closing its connection: the server's
keepalive pings find it out and end its calls, so its subscriptions' places
are free again (without them, until the kernel gave up on the socket)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import grpc

from chronicle.v1 import event_service_pb2, event_service_pb2_grpc
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.api.gate import RpcGate
from service.store.memory import MemoryStore
from tests.support.grpc_client import TEST_SETTINGS, Client, command, running_server
from tests.support.silent_proxy import SilentProxy
from tests.support.waiting import eventually

# Pings every 0.3 s, each given 0.3 s to be answered.
PINGS = replace(TEST_SETTINGS, keepalive_seconds=0.3, keepalive_timeout_seconds=0.3)


@dataclass
class Subscriber:
    gate: RpcGate
    client: Client  # straight to the server
    proxy: SilentProxy  # between the server and the subscriber
    call: Any  # the subscriber's Subscribe, caught up


@asynccontextmanager
async def subscribed_through_a_proxy() -> AsyncIterator[Subscriber]:
    async with (
        running_server(MemoryStore(), settings=PINGS) as (app, client),
        SilentProxy(app.port).running() as proxy,
        grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as channel,
    ):
        assert app.gate is not None
        call = event_service_pb2_grpc.EventServiceStub(channel).Subscribe(event_service_pb2.SubscribeRequest())
        assert (await call.read()).HasField("caught_up")
        try:
            yield Subscriber(app.gate, client, proxy, call)
        finally:
            call.cancel()


async def test_a_subscriber_that_went_silent_is_dropped_and_its_place_freed() -> None:
    async with subscribed_through_a_proxy() as subscriber:
        assert subscriber.gate.subscriptions == 1
        # Idle for many pings first: a subscriber lost while the log is
        # quiet (nothing sent for a while) is found out too.
        await asyncio.sleep(2)
        subscriber.proxy.silence()  # the client's host is gone; its connection is not closed
        await eventually(lambda: subscriber.gate.subscriptions == 0, what="the subscription ended")


async def test_an_idle_subscriber_that_answers_the_pings_stays_subscribed() -> None:
    async with subscribed_through_a_proxy() as subscriber:
        # Many pings' worth of silence from the log: nothing to send,
        # and pings go on without data in between.
        await asyncio.sleep(3)
        assert subscriber.gate.subscriptions == 1
        await subscriber.client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        while not (response := await subscriber.call.read()).HasField("event"):
            pass
        assert response.event.aggregate_id == "acc-1"
