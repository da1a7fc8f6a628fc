"""A nack's action, over a real socket with the Python client, on SQLite
and on PostgreSQL: PARK parks an event at once with the consumer's reason,
SKIP settles it unprocessed (neither parked nor acknowledged, counted as
skipped), neither is delivered again, and an action the server does not
know ends the stream INVALID_ARGUMENT (BAD_NACK_ACTION). The group's counts
of what it did not process (skipped, dismissed) survive a restart and read
the same from every server of the store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import grpc
import pytest

from chronicle.v1 import subscription_group_service_pb2 as pb
from chronicle.v1 import subscription_group_service_pb2_grpc as pb_grpc
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.client import ChronicleClient, Command, Delivery
from service.store.sqlite import SqliteStore
from tests.support.cluster import replica
from tests.support.grpc_client import details_of, running_server
from tests.support.waiting import eventually

Key = tuple[str, int]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Application]:
    if request.param == "sqlite":
        store = SqliteStore(request.getfixturevalue("tmp_path") / "groups.db")
        async with running_server(store, anonymous_admin=True, poll_seconds=0.2, lease_seconds=1.5) as (app, _):
            yield app
    else:
        async with replica(request.getfixturevalue("postgres_url"), anonymous_admin=True) as (app, _):
            yield app


@pytest.fixture
async def client(server: Application) -> AsyncIterator[ChronicleClient]:
    async with ChronicleClient.connect(server.address) as connected:
        yield connected


async def open_accounts(client: ChronicleClient) -> None:
    """acc-1 and acc-2, each opened and given one deposit: four events."""
    commands = [Command(name, bank.OpenAccount(owner="ann")) for name in ("acc-1", "acc-2")]
    commands += [Command(name, bank.Deposit(amount=5)) for name in ("acc-1", "acc-2")]
    async for result in client.submit_stream(commands):
        result.result()


def key(delivery: Delivery) -> Key:
    return delivery.event.aggregate_id, delivery.event.version


async def consume(
    client: ChronicleClient, group: str, answer: Callable[[Delivery], Awaitable[None]], seen: list[tuple[Key, bool]]
) -> None:
    async with client.consume(group, consumer="worker") as deliveries:
        async for delivery in deliveries:
            seen.append((key(delivery), delivery.replayed))
            await answer(delivery)


async def settled(
    client: ChronicleClient, group: str, *, acknowledged: int, parked: int, skipped: int = 0, dismissed: int = 0
) -> None:
    wanted = (acknowledged, parked, skipped, dismissed, 0)

    async def counted() -> bool:
        info = await client.groups.get(group)
        return (info.acknowledged, info.parked, info.skipped, info.dismissed, info.lag) == wanted

    what = f"{acknowledged} acknowledged, {parked} parked, {skipped} skipped, {dismissed} dismissed, no lag"
    await eventually(counted, what=what)


async def test_a_parked_event_is_parked_at_once_with_its_reason_and_not_delivered_again(
    client: ChronicleClient,
) -> None:
    await open_accounts(client)
    await client.groups.create("billing", max_delivery_attempts=5, retry_backoff=0.01, segments=2)
    seen: list[tuple[Key, bool]] = []

    async def answer(delivery: Delivery) -> None:
        if key(delivery) == ("acc-1", 1) and not delivery.replayed:
            await delivery.park("poison: no owner")
        else:
            await delivery.ack()

    task = asyncio.ensure_future(consume(client, "billing", answer, seen))
    try:
        await settled(client, "billing", acknowledged=3, parked=1)
        (parked,) = await client.groups.parked("billing")
        assert (parked.aggregate_id, parked.attempts, parked.reason) == ("acc-1", 1, "poison: no owner")
        await asyncio.sleep(0.3)  # five attempts were allowed: a retry would have come by now
        assert [k for k, _ in seen].count(("acc-1", 1)) == 1
        assert ("acc-1", 2) in [k for k, _ in seen]  # the aggregate went on past it

        assert await client.groups.replay("billing") == 1
        await settled(client, "billing", acknowledged=4, parked=0)
        assert seen[-1] == (("acc-1", 1), True)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_skipped_event_is_settled_neither_parked_nor_acknowledged_nor_delivered_again(
    client: ChronicleClient,
) -> None:
    await open_accounts(client)
    await client.groups.create("billing", max_delivery_attempts=5, retry_backoff=0.01, segments=2)
    seen: list[tuple[Key, bool]] = []

    async def answer(delivery: Delivery) -> None:
        if key(delivery) == ("acc-2", 1):
            await delivery.skip()
        else:
            await delivery.ack()

    task = asyncio.ensure_future(consume(client, "billing", answer, seen))
    try:
        await settled(client, "billing", acknowledged=3, parked=0, skipped=1)
        info = await client.groups.get("billing")
        assert info.position == info.log_head  # the skipped event is behind the checkpoint
        await asyncio.sleep(0.3)
        assert [k for k, _ in seen].count(("acc-2", 1)) == 1
        assert await client.groups.parked("billing") == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_skipped_replay_leaves_the_parked_list_without_counting_as_acknowledged(
    client: ChronicleClient,
) -> None:
    await open_accounts(client)
    await client.groups.create("billing", segments=2)
    seen: list[tuple[Key, bool]] = []

    async def answer(delivery: Delivery) -> None:
        if key(delivery) != ("acc-1", 2):
            await delivery.ack()
        elif delivery.replayed:
            await delivery.skip()
        else:
            await delivery.nack("later", action="park")

    task = asyncio.ensure_future(consume(client, "billing", answer, seen))
    try:
        await settled(client, "billing", acknowledged=3, parked=1)
        assert await client.groups.replay("billing") == 1

        async def gone() -> bool:
            return await client.groups.parked("billing") == []

        await eventually(gone, what="the skipped replay out of the parked list")
        await settled(client, "billing", acknowledged=3, parked=0, skipped=1)  # a consumer's skip, not a dismissal
        await asyncio.sleep(0.3)
        assert seen.count((("acc-1", 2), True)) == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def read_until_the_end(call: grpc.aio.StreamStreamCall[pb.ConsumeRequest, pb.ConsumeResponse]) -> None:
    while True:
        await call.read()


async def test_an_unknown_nack_action_ends_the_stream_with_its_reason(
    client: ChronicleClient, server: Application
) -> None:
    await open_accounts(client)
    await client.groups.create("billing")
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = pb_grpc.SubscriptionGroupServiceStub(channel).Consume()
        await call.write(pb.ConsumeRequest(start=pb.ConsumeStart(group="billing", consumer="worker")))
        assert (await call.read()).WhichOneof("kind") == "joined"
        first = (await call.read()).deliveries.deliveries[0].event.event_id
        await call.write(pb.ConsumeRequest(nack=pb.Nack(event_ids=[first], action=7)))  # type: ignore[arg-type]
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await read_until_the_end(call)
    details = details_of(raised.value)
    assert (details.code, details.reason, details.field_violations) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "BAD_NACK_ACTION",
        ["nack.action"],
    )
    info = await client.groups.get("billing")
    assert (info.acknowledged, info.parked) == (0, 0)


ServerOf = Callable[[], AbstractAsyncContextManager[tuple[Application, object]]]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def servers(request: pytest.FixtureRequest) -> ServerOf:
    """Opens servers on one store: SQLite processes' file, or PostgreSQL replicas' database."""
    if request.param == "sqlite":
        path = request.getfixturevalue("tmp_path") / "groups.db"
        return lambda: running_server(SqliteStore(path), anonymous_admin=True, poll_seconds=0.2, lease_seconds=1.5)
    url = request.getfixturevalue("postgres_url")
    return lambda: replica(url, anonymous_admin=True)


async def counts(server: Application) -> tuple[int, int, int, int]:
    async with ChronicleClient.connect(server.address) as client:
        info = await client.groups.get("billing")
    return info.acknowledged, info.skipped, info.dismissed, info.parked


async def test_what_a_group_did_not_process_is_counted_once_survives_a_restart_and_reads_the_same_everywhere(
    servers: ServerOf,
) -> None:
    """Skipped: an event skipped, a replay skipped; dismissed: a parked event
    an operator dismissed; each counted once, in the store."""
    async with servers() as (first, _), ChronicleClient.connect(first.address) as client:
        await open_accounts(client)
        await client.groups.create("billing", segments=2)
        seen: list[tuple[Key, bool]] = []

        async def answer(delivery: Delivery) -> None:
            if key(delivery) == ("acc-2", 1) or delivery.replayed:
                await delivery.skip()
            elif delivery.event.version == 2:
                await delivery.park("handled by hand")
            else:
                await delivery.ack()

        task = asyncio.ensure_future(consume(client, "billing", answer, seen))
        try:
            await settled(client, "billing", acknowledged=1, parked=2, skipped=1)
            by_aggregate = {p.aggregate_id: p.event_id for p in await client.groups.parked("billing")}
            assert await client.groups.replay("billing", [by_aggregate["acc-1"]]) == 1
            await settled(client, "billing", acknowledged=1, parked=1, skipped=2)
            assert await client.groups.dismiss("billing", [by_aggregate["acc-2"]]) == 1
            await settled(client, "billing", acknowledged=1, parked=0, skipped=2, dismissed=1)
            await asyncio.sleep(0.3)  # a skip or a dismissal counted twice would show by now
            async with servers() as (second, _):
                assert await counts(second) == await counts(first) == (1, 2, 1, 0)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        once = [(("acc-1", 1), False), (("acc-1", 2), False), (("acc-2", 1), False), (("acc-2", 2), False)]
        assert sorted(seen) == sorted([*once, (("acc-1", 2), True)])
    async with servers() as (restarted, _):
        assert await counts(restarted) == (1, 2, 1, 0)
