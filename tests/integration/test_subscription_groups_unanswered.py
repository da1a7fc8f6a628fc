"""A subscription-group consumer that takes its deliveries in but never
acks or nacks them (docs/subscriptions.md, "A consumer that answers
nothing"), over real sockets on SQLite and PostgreSQL: with the group's
max_unanswered_timeouts at 0 it holds its segment for good while the other
consumer (the Python client) idles and the group falls behind; once an
UpdateGroup sets it to 2, the silent consumer is cut (ABORTED,
CONSUMER_UNRESPONSIVE) after two ack timeouts in a row, its segment goes
to the other, which acknowledges every event, none parked. A Python
consumer cut so says it as a warning and consumes again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from chronicle.v1 import subscription_group_service_pb2 as pb
from chronicle.v1 import subscription_group_service_pb2_grpc as pb_grpc
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.client import ChronicleClient, Command
from service.store.sqlite import SqliteStore
from tests.support.cluster import replica
from tests.support.grpc_client import details_of, running_server
from tests.support.waiting import eventually

ACCOUNTS = 40


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Application]:
    if request.param == "sqlite":
        store = SqliteStore(request.getfixturevalue("tmp_path") / "groups.db")
        async with running_server(store, anonymous_admin=True, poll_seconds=0.2, lease_seconds=1.5) as (app, _):
            yield app
    else:
        async with replica(request.getfixturevalue("postgres_url"), anonymous_admin=True) as (app, _):
            yield app


async def read_until_the_end(stream: Any, delivered: list[pb.Delivery]) -> grpc.aio.AioRpcError:
    """Take every message in, answering none; the status that ends it."""
    try:
        while True:
            message = await stream.read()
            assert message is not grpc.aio.EOF, "the stream ended without a status"
            delivered += message.deliveries.deliveries
    except grpc.aio.AioRpcError as ended:
        return ended


async def test_a_consumer_that_answers_nothing_is_cut_once_the_group_bounds_it_and_the_other_gets_its_events(
    server: Application,
) -> None:
    async with ChronicleClient.connect(server.address) as client:
        commands = [Command(f"acc-{n}", bank.OpenAccount(owner="ann")) for n in range(ACCOUNTS)]
        async for result in client.submit_stream(commands):
            result.result()
        created = await client.groups.create(
            "billing",
            segments=2,
            ack_timeout=0.3,
            retry_backoff=0.05,
            max_retry_backoff=0.05,
            max_delivery_attempts=100,
            max_unanswered_timeouts=0,  # never cut: the behaviour before the bound
        )
        assert created.max_unanswered_timeouts == 0

        channel = grpc.aio.insecure_channel(server.address)
        silent = pb_grpc.SubscriptionGroupServiceStub(channel).Consume()
        await silent.write(pb.ConsumeRequest(start=pb.ConsumeStart(group="billing", consumer="silent")))
        assert (await silent.read()).HasField("joined")
        silently: list[pb.Delivery] = []
        ending = asyncio.ensure_future(read_until_the_end(silent, silently))
        await eventually(lambda: len(silently) >= ACCOUNTS, what="the silent consumer taking both segments' events")

        acked: list[str] = []

        async def work() -> None:
            async with client.consume("billing", consumer="worker") as deliveries:
                async for delivery in deliveries:
                    acked.append(delivery.event.aggregate_id)
                    await delivery.ack()

        worker = asyncio.ensure_future(work())
        try:
            await eventually(lambda: len(acked) > 0, what="the worker getting a segment of its own")
            await asyncio.sleep(2)  # six ack timeouts and more: the silent one holds its segment all along
            info = await client.groups.get("billing")
            assert not ending.done()
            assert info.acknowledged < ACCOUNTS and info.parked == 0 and info.lag > 0
            assert len(silently) > ACCOUNTS  # its events went to it again and again

            updated = await client.groups.update("billing", max_unanswered_timeouts=2)
            assert updated.max_unanswered_timeouts == 2
            ended = await asyncio.wait_for(ending, 10)
            details = details_of(ended)
            assert (details.code, details.reason) == (grpc.StatusCode.ABORTED, "CONSUMER_UNRESPONSIVE")

            async def all_acknowledged() -> bool:
                info = await client.groups.get("billing")
                return (info.acknowledged, info.parked, info.lag) == (ACCOUNTS, 0, 0)

            await eventually(all_acknowledged, within=20, what="every event acknowledged by the worker")
            assert sorted(set(acked)) == sorted(f"acc-{n}" for n in range(ACCOUNTS))
        finally:
            worker.cancel()
            ending.cancel()
            await asyncio.gather(worker, ending, return_exceptions=True)
            await channel.close()


async def test_a_python_consumer_cut_as_unresponsive_says_so_and_consumes_again(
    server: Application, caplog: pytest.LogCaptureFixture
) -> None:
    async with ChronicleClient.connect(server.address) as client:
        commands = [Command(f"acc-{n}", bank.OpenAccount(owner="ann")) for n in range(3)]
        async for result in client.submit_stream(commands):
            result.result()
        await client.groups.create(
            "billing", ack_timeout=0.2, retry_backoff=0.05, max_delivery_attempts=10, max_unanswered_timeouts=2
        )
        attempts: list[int] = []

        async def work() -> None:
            async with client.consume("billing", consumer="forgetful") as deliveries:
                async for delivery in deliveries:
                    attempts.append(delivery.attempt)
                    if delivery.attempt >= 3:  # answers nothing to its first two deliveries of each
                        await delivery.ack()

        worker = asyncio.ensure_future(work())
        try:

            async def all_acknowledged() -> bool:
                info = await client.groups.get("billing")
                return (info.acknowledged, info.parked, info.lag) == (3, 0, 0)

            with caplog.at_level("WARNING", logger="service.client"):
                await eventually(all_acknowledged, what="every event acknowledged on the stream after the cut")
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
    said = [r.getMessage() for r in caplog.records if r.name.startswith("service.client")]
    assert any("CONSUMER_UNRESPONSIVE" in message and "consuming again" in message for message in said), said
    assert sorted(attempts)[-3:] == [3, 3, 3]  # the third attempt, on the stream after the cut
