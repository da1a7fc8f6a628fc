"""A subscription-group consumer whose client stops reading while its
connection lives (its gRPC library still answers keepalive pings), over real
sockets on PostgreSQL: once the server has waited in one write to it, with
no ack or nack, for the group's ack timeout, its stream ends (ABORTED,
CONSUMER_STALLED, which the client reads after the message gRPC held), its
unacknowledged events go to the group's other consumer with their attempt
counted, and its segments with them; a consumer that reads slowly but acks
within the ack timeout is not cut (docs/subscriptions.md, "A consumer that
stops reading")."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from chronicle.v1 import subscription_group_service_pb2 as pb
from chronicle.v1 import subscription_group_service_pb2_grpc as pb_grpc
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.client import ChronicleClient
from service.groups import ConsumerSession
from service.store.postgres import PostgresStore
from tests.support.grpc_client import Client, command, connect, reason_of, running_server
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

ACCOUNTS = 20
ROUNDS = 6  # each account opened, then deposits: 20 events of ~8 KiB a round
TOTAL = ACCOUNTS * ROUNDS
ACK_TIMEOUT = 1  # seconds: the stall bound too (MIN_STALL_SECONDS)
LEASE_SECONDS = 1.5  # a consumer's heartbeat every 0.5 s
# The consumers that stop or read slowly keep HTTP/2's 64 KiB window (no
# BDP probe to widen it): a message of deliveries (up to 512 KiB) waits in
# the server's write until they read.
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0)]


async def _fill_log(client: Client, rounds: int = ROUNDS, accounts_count: int = ACCOUNTS) -> None:
    padding = {"pad1": "x" * 4000, "pad2": "y" * 4000}
    accounts = [f"acc-{i}" for i in range(accounts_count)]
    for round_ in range(rounds):
        message = bank.OpenAccount(owner="o") if round_ == 0 else bank.Deposit(amount=round_)
        await asyncio.gather(*(client.submit(command(a, message, metadata=padding)) for a in accounts))


async def _create_group(
    client: Client, name: str, ack_timeout: int = ACK_TIMEOUT
) -> pb_grpc.SubscriptionGroupServiceStub:
    groups = pb_grpc.SubscriptionGroupServiceStub(client.channel)
    await groups.CreateGroup(
        pb.CreateGroupRequest(
            name=name,
            filter=pb.GroupFilter(aggregate_types=["Account"]),
            ack_timeout=duration_pb2.Duration(seconds=ack_timeout),
            retry_backoff=duration_pb2.Duration(nanos=100_000_000),
        )
    )
    return groups


async def _join(stub: pb_grpc.SubscriptionGroupServiceStub, group: str, consumer: str, in_flight: int) -> Any:
    stream = stub.Consume()
    start = pb.ConsumeStart(group=group, consumer=consumer, max_in_flight=in_flight)
    await stream.write(pb.ConsumeRequest(start=start))
    assert (await stream.read()).HasField("joined")
    return stream


async def test_a_consumer_that_stops_reading_is_cut_and_its_events_and_segments_go_to_the_other(
    postgres_url: str,
) -> None:
    store: Any = PostgresStore(postgres_url, pool_size=8)
    async with (
        running_server(store, anonymous_admin=True, poll_seconds=0.2, lease_seconds=LEASE_SECONDS) as (app, client),
        connect(app.address, options=SMALL_WINDOW) as stopping_client,
    ):
        await _fill_log(client)
        groups = await _create_group(client, "billing")
        stopped = await _join(pb_grpc.SubscriptionGroupServiceStub(stopping_client.channel), "billing", "stops", 100)
        await asyncio.sleep(0.3)  # it holds every segment, its first message waiting in the write: it reads no more
        began = time.monotonic()
        attempts: dict[str, list[int]] = defaultdict(list)
        other = await _join(groups, "billing", "reads", 100)

        acked: set[str] = set()

        async def read_everything() -> None:
            while len(acked) < TOTAL:
                response = await other.read()
                batch = list(response.deliveries.deliveries)
                for delivery in batch:
                    attempts[delivery.event.event_id].append(delivery.attempt)
                ids = [d.event.event_id for d in batch]
                await other.write(pb.ConsumeRequest(ack=pb.Ack(event_ids=ids)))
                acked.update(ids)

        # Cut after the ack timeout; its segments taken at the other's next
        # heartbeat (a third of the lease); its events read and sent again.
        bound = ACK_TIMEOUT + LEASE_SECONDS + 3.0
        await asyncio.wait_for(read_everything(), bound)
        took = time.monotonic() - began
        assert len(acked) == TOTAL, f"the other consumer got {len(acked)} of {TOTAL} events in {took:.1f}s"

        # The stopped consumer reads again: the message gRPC held, then why its stream ended.
        held: set[str] = set()

        async def read_to_the_end() -> None:
            while True:
                response = await asyncio.wait_for(stopped.read(), 5)
                for delivery in response.deliveries.deliveries:
                    assert delivery.attempt == 1
                    held.add(delivery.event.event_id)

        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await read_to_the_end()
        assert ended.value.code() == grpc.StatusCode.ABORTED
        assert reason_of(ended.value) == "CONSUMER_STALLED"
        assert held, "the stopped consumer had a message of deliveries waiting"
        # Each event's attempts: the stopped consumer's delivery counted, so
        # the other got the events it held as their second attempt.
        assert {e: seen[0] for e, seen in attempts.items()} == {e: 2 if e in held else 1 for e in attempts}

        # Nothing acknowledged lost, nothing skipped, nothing parked; the
        # stopped consumer holds no segment.
        async def settled() -> bool:
            listed = await groups.ListGroups(pb.ListGroupsRequest())
            (info,) = [g for g in listed.groups if g.name == "billing"]
            assert info.parked == 0 and info.acknowledged <= TOTAL
            assert [c.consumer.split("#")[0] for c in info.consumers] == ["reads"]
            return bool(info.acknowledged == TOTAL and info.lag == 0)

        await eventually(settled, what="every acknowledgement committed")
        other.cancel()


async def test_a_consumer_that_reads_slowly_and_acks_in_time_is_not_cut(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []  # how long each write waited for the consumer to take its message in
    written = ConsumerSession.written

    def timed(session: ConsumerSession) -> None:
        assert session._write_began is not None
        waits.append(time.monotonic() - session._write_began)
        written(session)

    monkeypatch.setattr(ConsumerSession, "written", timed)
    store: Any = PostgresStore(postgres_url, pool_size=8)
    async with (
        running_server(store, anonymous_admin=True, poll_seconds=0.2, lease_seconds=LEASE_SECONDS) as (app, client),
        connect(app.address, options=SMALL_WINDOW) as slow_client,
    ):
        accounts, rounds = 120, 2  # 240 events: 120 aggregates, so 100 may be in flight
        await _fill_log(client, rounds, accounts)
        await _create_group(client, "billing", ack_timeout=2)
        # A message holds about 60 events (512 KiB): with 100 in flight, the
        # next one waits in its write while the consumer handles this one,
        # 0.8 s, then acks it and reads the next: each event acked within
        # about 1.6 s of its sending, inside the ack timeout of 2 s.
        slow = await _join(pb_grpc.SubscriptionGroupServiceStub(slow_client.channel), "billing", "slow", 100)
        attempts: dict[str, list[int]] = defaultdict(list)
        began = time.monotonic()
        while len(attempts) < accounts * rounds:
            response = await asyncio.wait_for(slow.read(), 5)
            batch = list(response.deliveries.deliveries)
            for delivery in batch:
                attempts[delivery.event.event_id].append(delivery.attempt)
            await asyncio.sleep(0.8)
            await slow.write(pb.ConsumeRequest(ack=pb.Ack(event_ids=[d.event.event_id for d in batch])))
        assert time.monotonic() - began > 2 * 2  # twice the ack timeout: long enough to have been cut
        assert sum(wait > 0.5 for wait in waits) >= 2, f"the writes did not wait for the consumer: {waits}"
        assert all(seen == [1] for seen in attempts.values())  # each once, none timed out
        assert app.groups.active == 1 and not slow.done()
        slow.cancel()


async def test_a_python_consumer_held_up_past_the_ack_timeout_is_cut_then_consumes_again(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store: Any = PostgresStore(postgres_url, pool_size=8)
    async with running_server(store, anonymous_admin=True, poll_seconds=0.2, lease_seconds=LEASE_SECONDS) as (
        app,
        client,
    ):
        await _fill_log(client)
        await _create_group(client, "billing")
        members: list[str] = []
        async with (
            ChronicleClient(grpc.aio.insecure_channel(app.address, options=SMALL_WINDOW), owns_channel=True) as python,
            python.consume("billing", consumer="py") as consumer,
        ):

            async def handle() -> None:
                held_up = False
                async for delivery in consumer:
                    if consumer.member not in members:
                        members.append(consumer.member)
                    if not held_up:
                        # A handler that holds the loop up, once: the
                        # consumer reads nothing and answers nothing meanwhile.
                        held_up = True
                        await asyncio.sleep(3 * ACK_TIMEOUT)
                    if len(members) == 2:
                        # Not on the stream cut: an ack there changes
                        # nothing, and one written as the stream ends can
                        # make grpc.aio lose the status (``status_lost``):
                        # then the client consumes again all the same, but
                        # cannot say why.
                        await delivery.ack()

            handling = asyncio.ensure_future(handle())

            async def all_acknowledged() -> bool:
                info = await python.groups.get("billing")
                return bool(info.acknowledged == TOTAL and info.lag == 0)

            try:
                await eventually(all_acknowledged, what="every event acknowledged by the consumer's next stream")
            finally:
                handling.cancel()
        assert len(members) == 2, members  # cut once, then joined again by itself
        (said,) = [r for r in caplog.records if r.name == "service.client.groups" and r.levelno == logging.WARNING]
        assert "ABORTED CONSUMER_STALLED" in said.getMessage()  # the client says why it consumed again
