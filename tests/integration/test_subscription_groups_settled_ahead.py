"""A consumer that leaves in order hands the events it settled above a
segment's checkpoint over with the segment (docs/subscriptions.md, "What a
move delivers again"), over a real socket with the Python client, on each
store a server runs on (memory, SQLite, PostgreSQL). The log's shape is a walkthrough's: an aggregate's
second event, queued behind its first's ack, is still unsent when the
consumer leaves, so the segment's checkpoint stays before it while the
consumer acks the later events of other aggregates in that segment. Before
the fix those acks were counted nowhere and their events were delivered
again to the next consumer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.client import ChronicleClient, Command, Delivery
from service.store.base import StoreAdapter
from service.store.memory import MemoryStore
from service.store.postgres import PostgresStore
from service.store.sqlite import SqliteStore
from tests.support.grpc_client import running_server
from tests.support.waiting import eventually

OTHERS = 30  # aggregates after the held one, all in the group's one segment
TAKEN = 20  # deliveries the first consumer acks before it leaves


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def client(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ChronicleClient]:
    store: StoreAdapter
    if request.param == "memory":
        store = MemoryStore()
    elif request.param == "sqlite":
        store = SqliteStore(tmp_path / "groups.db")
    else:
        store = PostgresStore(request.getfixturevalue("postgres_url"), pool_size=4)
    app: Application
    async with (
        running_server(store, anonymous_admin=True, poll_seconds=0.2, lease_seconds=1.5) as (app, _),
        ChronicleClient.connect(app.address) as connected,
    ):
        yield connected


async def write(client: ChronicleClient, commands: Sequence[Command]) -> None:
    async for result in client.submit_stream(commands):
        result.result()


async def acked(consumer: AsyncIterator[Delivery], count: int) -> list[Delivery]:
    taken = []
    async for delivery in consumer:
        await delivery.ack()
        taken.append(delivery)
        if len(taken) == count:
            break
    return taken


async def test_events_acked_behind_an_unsent_one_are_not_delivered_again_to_the_next_consumer(
    client: ChronicleClient,
) -> None:
    # acc-held: opened, then a deposit (positions 1, 2); then OTHERS accounts opened.
    await write(
        client, [Command("acc-held", bank.OpenAccount(owner="ann")), Command("acc-held", bank.Deposit(amount=1))]
    )
    await write(client, [Command(f"acc-{n}", bank.OpenAccount(owner="bob")) for n in range(OTHERS)])
    await client.groups.create("billing", segments=1)
    async with client.consume("billing", consumer="first", max_in_flight=5) as consumer:
        first = await acked(aiter(consumer), TAKEN)
    first_ids = {d.event.envelope.event_id for d in first}
    assert len(first_ids) == TAKEN
    # The log's shape: the held aggregate's deposit (position 2) was not sent
    # (it waits behind the other aggregates queued before its first ack), so
    # the segment's checkpoint stays at 1 with later events acked.
    assert ("acc-held", 2) not in {(d.event.aggregate_id, d.event.version) for d in first}
    group = await client.groups.get("billing")
    assert group.position == 1

    second: list[Delivery] = []
    async with client.consume("billing", consumer="second") as consumer:
        async with asyncio.timeout(30):
            async for delivery in consumer:
                await delivery.ack()
                second.append(delivery)
                if len(second) == OTHERS + 2 - TAKEN:
                    break
    again = [(d.event.aggregate_id, d.event.version) for d in second if d.event.envelope.event_id in first_ids]
    assert again == []
    assert ("acc-held", 2) in {(d.event.aggregate_id, d.event.version) for d in second}

    # Every event counted once, and the group at the end of the log.
    async def caught_up() -> bool:
        group = await client.groups.get("billing")
        return group.acknowledged == OTHERS + 2 and group.lag == 0

    await eventually(caught_up, what="every event acknowledged once, the group caught up")
