"""A client that vanishes without closing its connection: the server's
keepalive pings find it out and end its calls, so its subscriptions' places
are free again (without them, until the kernel gave up on the socket)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import grpc

from chronicle.v1 import event_service_pb2, event_service_pb2_grpc
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.store.memory import MemoryStore
from tests.support.grpc_client import TEST_SETTINGS, command, running_server
from tests.support.silent_proxy import SilentProxy
from tests.support.waiting import eventually

# Pings every 0.3 s, each given 0.3 s to be answered.
PINGS = replace(TEST_SETTINGS, keepalive_seconds=0.3, keepalive_timeout_seconds=0.3)


async def test_a_subscriber_that_went_silent_is_dropped_and_its_place_freed() -> None:
    async with (
        running_server(MemoryStore(), settings=PINGS) as (app, _),
        SilentProxy(app.port).running() as proxy,
        grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as channel,
    ):
        gate = app.gate
        assert gate is not None
        call = event_service_pb2_grpc.EventServiceStub(channel).Subscribe(event_service_pb2.SubscribeRequest())
        assert (await call.read()).HasField("caught_up")
        assert gate.subscriptions == 1
        # Idle for many pings first: a subscriber lost while the log is
        # quiet (nothing sent for a while) is found out too.
        await asyncio.sleep(2)
        proxy.silence()  # the client's host is gone; its connection is not closed
        await eventually(lambda: gate.subscriptions == 0, what="the subscription ended")
        call.cancel()


async def test_an_idle_subscriber_that_answers_the_pings_stays_subscribed() -> None:
    async with (
        running_server(MemoryStore(), settings=PINGS) as (app, client),
        SilentProxy(app.port).running() as proxy,
        grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as channel,
    ):
        gate = app.gate
        assert gate is not None
        call = event_service_pb2_grpc.EventServiceStub(channel).Subscribe(event_service_pb2.SubscribeRequest())
        assert (await call.read()).HasField("caught_up")
        # Many pings' worth of silence from the log: nothing to send,
        # and pings go on without data in between.
        await asyncio.sleep(3)
        assert gate.subscriptions == 1
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        while not (response := await call.read()).HasField("event"):
            pass
        assert response.event.aggregate_id == "acc-1"
        call.cancel()
