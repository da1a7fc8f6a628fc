"""What the server holds for subscription-group consumers that stop reading
and answering, over real sockets on PostgreSQL, by its own count
(``chronicle_subscription_held_bytes``) and by what it read for them: the
consumers' read ahead is under the server's room for subscriptions
(``--subscription-read-ahead-bytes``), a stalled one lets go of it, and
each, once it reads again, gets every event once, each aggregate in order
(docs/subscriptions.md, "Memory"; docs/security.md)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest
from google.protobuf import duration_pb2

from chronicle.v1 import subscription_group_service_pb2 as pb
from chronicle.v1 import subscription_group_service_pb2_grpc as pb_grpc
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.groups import MAX_BATCH_BYTES
from service.store.postgres import PostgresStore
from service.store.records import LogFilter
from tests.integration.test_subscriptions_never_skip import ObservedReads
from tests.support.grpc_client import command, connect, running_server
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

ACCOUNTS = 40
ROUNDS = 21  # each account opened, then 20 deposits: 840 events of ~8 KiB, about 7 MiB
EVENT_BYTES = 8 * 1024 + 300  # an event's stored_size at most: its padding metadata, payload, envelope
PAGE_BYTES = 1024 * 1024 + EVENT_BYTES  # a store read ends with the event that reaches 1 MiB
ROOM = 1024 * 1024
CONSUMERS = 4
IN_FLIGHT = 30


async def test_stopped_consumers_hold_a_bounded_total_then_get_every_event_in_order(postgres_url: str) -> None:
    store: Any = ObservedReads(PostgresStore(postgres_url, pool_size=8))
    small_window = [("grpc.http2.bdp_probe", 0)]  # the consumers' windows stay at 64 KiB
    async with (
        running_server(
            store,
            anonymous_admin=True,
            poll_seconds=0.2,
            subscription_stall_seconds=0.2,
            subscription_read_ahead_bytes=ROOM,
        ) as (app, client),
        connect(app.address, options=small_window) as slow_client,
    ):
        padding = {"pad1": "x" * 4000, "pad2": "y" * 4000}
        accounts = [f"acc-{i}" for i in range(ACCOUNTS)]
        for round_ in range(ROUNDS):
            message = bank.OpenAccount(owner="o") if round_ == 0 else bank.Deposit(amount=round_)
            await asyncio.gather(*(client.submit(command(a, message, metadata=padding)) for a in accounts))
        total = ACCOUNTS * ROUNDS
        groups = pb_grpc.SubscriptionGroupServiceStub(client.channel)
        consuming = pb_grpc.SubscriptionGroupServiceStub(slow_client.channel)
        streams = []
        received: list[list[Any]] = []
        for n in range(CONSUMERS):
            # A group each: every consumer's session reads the whole log.
            await groups.CreateGroup(
                pb.CreateGroupRequest(
                    name=f"billing-{n}",
                    filter=pb.GroupFilter(aggregate_types=["Account"]),
                    ack_timeout=duration_pb2.Duration(seconds=600),  # no redelivery while stopped
                )
            )
            stream = consuming.Consume()
            await stream.write(
                pb.ConsumeRequest(start=pb.ConsumeStart(group=f"billing-{n}", consumer="c", max_in_flight=IN_FLIGHT))
            )
            assert (await stream.read()).HasField("joined")
            first = await stream.read()  # then it neither reads nor answers
            streams.append(stream)
            received.append(list(first.deliveries.deliveries))
        held = app.groups.held
        most = 0

        def let_go() -> bool:
            nonlocal most
            most = max(most, held.bytes)
            return held.let_go >= CONSUMERS

        await eventually(let_go, what="every stopped consumer's session letting go of its read ahead")
        await asyncio.sleep(1.0)  # five sweeps: a read under way at a let-go has come back (and been dropped)
        most = max(most, held.bytes)
        # While they moved: the page each read holding nothing, and more only
        # while all held less than the room (each read ahead may overshoot
        # its estimate by a page). Each would have read the whole log ahead
        # otherwise (its own bounds: 1,000 events, 32 MiB).
        bound = ROOM + CONSUMERS * PAGE_BYTES
        assert 0 < most <= bound < CONSUMERS * total * EVENT_BYTES // 2
        read = store.events_read_for(LogFilter(aggregate_types=frozenset({"Account"})))
        assert read * 8 * 1024 <= bound, f"read {read} events ahead for consumers that took none"
        # Stalled: what each sent and has not had answered, nothing read ahead.
        assert held.bytes <= CONSUMERS * (MAX_BATCH_BYTES + EVENT_BYTES)
        await asyncio.sleep(1.0)  # five sweeps more
        assert store.events_read_for(LogFilter(aggregate_types=frozenset({"Account"}))) == read  # none read again

        async def resume(stream: Any, deliveries: list[Any]) -> None:
            await stream.write(pb.ConsumeRequest(ack=pb.Ack(event_ids=[d.event.event_id for d in deliveries])))
            while len(deliveries) < total:
                response = await asyncio.wait_for(stream.read(), 20)
                batch = list(response.deliveries.deliveries)
                deliveries += batch
                await stream.write(pb.ConsumeRequest(ack=pb.Ack(event_ids=[d.event.event_id for d in batch])))

        await asyncio.gather(*(resume(s, r) for s, r in zip(streams, received, strict=True)))
        for deliveries in received:
            assert len({d.event.event_id for d in deliveries}) == len(deliveries) == total  # each once
            versions: dict[str, list[int]] = defaultdict(list)
            for delivery in deliveries:
                versions[delivery.event.aggregate_id].append(delivery.event.version)
            assert versions == {a: list(range(1, ROUNDS + 1)) for a in accounts}  # each aggregate in order
        await eventually(lambda: held.bytes == 0, what="every acknowledged event let go of")
        for stream in streams:
            stream.cancel()
