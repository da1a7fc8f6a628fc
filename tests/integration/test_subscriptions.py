"""EventService.Subscribe over a real socket, on every store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from chronicle.v1 import event_service_pb2 as pb
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2
from service.store.base import StoreAdapter
from tests.support.grpc_client import Client, command, details_of, running_server


@pytest.fixture
async def client(store: StoreAdapter) -> AsyncIterator[Client]:
    async with running_server(store, checkpoint_seconds=0.0, poll_seconds=0.2) as (_, connected):
        yield connected


class Stream:
    """A subscription read one message at a time. Every test runs twice: with
    events one per message, and with the request asking for pages."""

    pages = False

    def __init__(self, client: Client, **request: Any) -> None:
        self.call = client.events.Subscribe(pb.SubscribeRequest(pages=self.pages, **request))

    async def next(self) -> pb.SubscribeResponse:
        response: pb.SubscribeResponse = await asyncio.wait_for(self.call.read(), timeout=20)
        assert response is not grpc.aio.EOF
        # each kind of stream carries its own kind of event message only
        assert not response.HasField("page" if not self.pages else "event"), response
        return response

    @staticmethod
    def carried(response: pb.SubscribeResponse) -> list[Any]:
        if response.HasField("page"):
            assert response.page.events  # a page is never empty
            return list(response.page.events)
        return [response.event] if response.HasField("event") else []

    async def until_caught_up(self) -> tuple[list[Any], int]:
        events: list[Any] = []
        while True:
            response = await self.next()
            if response.HasField("caught_up"):
                return events, response.caught_up.position
            events += self.carried(response)

    async def events(self, count: int) -> list[Any]:
        found: list[Any] = []
        while len(found) < count:
            found += self.carried(await self.next())
        return found

    async def checkpoint(self) -> int:
        while True:
            response = await self.next()
            assert not self.carried(response), f"unexpected events {self.carried(response)}"
            if response.HasField("checkpoint"):
                return int(response.checkpoint.position)


@pytest.fixture(autouse=True, params=[False, True], ids=["events", "pages"])
def pages(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(Stream, "pages", request.param)
    return bool(request.param)


async def deposit(client: Client, account: str, amount: int, **options: Any) -> None:
    await client.submit(command(account, bank.Deposit(amount=amount), **options))


async def open_account(client: Client, account: str) -> None:
    await client.submit(command(account, bank.OpenAccount(owner="ann")))


async def test_an_empty_request_streams_the_whole_log_then_caught_up_then_live(client: Client) -> None:
    await open_account(client, "acc-1")
    await deposit(client, "acc-1", 5)
    stream = Stream(client)
    history, caught_up_at = await stream.until_caught_up()
    assert [e.event_type for e in history] == ["bank.v1.AccountOpened", "bank.v1.MoneyDeposited"]
    assert caught_up_at == history[-1].position
    await deposit(client, "acc-1", 7)
    (live,) = await stream.events(1)
    assert live.event_type == "bank.v1.MoneyDeposited"
    assert live.position > caught_up_at
    stream.call.cancel()


async def test_from_end_streams_only_what_commits_afterwards(client: Client) -> None:
    await open_account(client, "acc-1")
    stream = Stream(client, from_end=True)
    history, _ = await stream.until_caught_up()
    assert history == []
    await deposit(client, "acc-1", 3)
    (live,) = await stream.events(1)
    assert live.version == 2
    stream.call.cancel()


async def test_resuming_after_a_position_loses_nothing_and_repeats_nothing(client: Client) -> None:
    await open_account(client, "acc-1")
    for amount in range(1, 6):
        await deposit(client, "acc-1", amount)
    first = Stream(client)
    seen = await first.events(3)
    first.call.cancel()
    resumed = Stream(client, after_position=seen[-1].position)
    rest, _ = await resumed.until_caught_up()
    resumed.call.cancel()
    assert [e.version for e in seen + rest] == [1, 2, 3, 4, 5, 6]


async def test_filters_select_by_aggregate_type_event_type_aggregate_and_origin(client: Client) -> None:
    await open_account(client, "acc-1")
    await open_account(client, "acc-2")
    await client.submit(command("box-1", box_pb2.CreateBox(name="b")))
    await deposit(client, "acc-2", 4, origin="batch")

    async def caught_up(**request: Any) -> list[tuple[str, str]]:
        stream = Stream(client, **request)
        events, _ = await stream.until_caught_up()
        stream.call.cancel()
        return [(e.aggregate_id, e.event_type) for e in events]

    assert await caught_up(aggregate_types=["Box"]) == [("box-1", "box.v1.BoxCreated")]
    assert await caught_up(event_types=["bank.v1.MoneyDeposited"]) == [("acc-2", "bank.v1.MoneyDeposited")]
    assert await caught_up(aggregate_id="acc-2") == [
        ("acc-2", "bank.v1.AccountOpened"),
        ("acc-2", "bank.v1.MoneyDeposited"),
    ]
    assert await caught_up(origin="batch") == [("acc-2", "bank.v1.MoneyDeposited")]
    assert await caught_up(aggregate_types=["Account"], event_types=["bank.v1.AccountOpened"]) == [
        ("acc-1", "bank.v1.AccountOpened"),
        ("acc-2", "bank.v1.AccountOpened"),
    ]


async def test_a_filter_that_matches_nothing_still_gets_checkpoints(client: Client) -> None:
    stream = Stream(client, aggregate_types=["Box"])
    _, start = await stream.until_caught_up()
    await open_account(client, "acc-1")
    await deposit(client, "acc-1", 1)
    position = 0
    while position < start + 2:  # both events are past, unseen but covered
        position = await stream.checkpoint()
    stream.call.cancel()
    # resuming from the checkpoint re-reads none of the world
    resumed = Stream(client, after_position=position, aggregate_types=["Box"])
    events, caught_up_at = await resumed.until_caught_up()
    resumed.call.cancel()
    assert events == []
    assert caught_up_at == position


async def test_the_stream_applies_upcasters_the_same_way_reads_do(client: Client) -> None:
    await open_account(client, "acc-1")
    stream = Stream(client, event_types=["bank.v1.AccountOpened"])
    events, _ = await stream.until_caught_up()
    stream.call.cancel()
    read = [e async for e in client.events.ReadAggregate(pb.ReadAggregateRequest(aggregate_id="acc-1"))]
    assert [e.SerializeToString() for e in events] == [e.SerializeToString() for e in read]


@pytest.mark.parametrize(
    ("request_fields", "reason", "field"),
    [
        ({"after_position": 10**6}, "POSITION_BEYOND_END", ""),
        ({"event_types": ["bank.v1.Nope"]}, "INVALID_FILTER", "event_types"),
        ({"aggregate_types": ["Nope"]}, "INVALID_FILTER", "aggregate_types"),
        ({"aggregate_types": [""]}, "INVALID_FILTER", "aggregate_types[0]"),
        ({"aggregate_id": "a\nb"}, "INVALID_FILTER", "aggregate_id"),
        ({"origin": "x" * 300}, "INVALID_FILTER", "origin"),
    ],
)
async def test_bad_subscriptions_are_invalid_argument(
    client: Client, request_fields: dict[str, Any], reason: str, field: str
) -> None:
    stream = Stream(client, **request_fields)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stream.next()
    details = details_of(raised.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
    if field:
        assert details.field_violations == [field]


async def test_server_shutdown_ends_streams_with_unavailable(store: StoreAdapter) -> None:
    async with running_server(store, poll_seconds=0.2) as (app, client):
        stream = Stream(client)
        await stream.until_caught_up()
        stopping = asyncio.create_task(app.stop(grace=5))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stream.next()
        details = details_of(raised.value)
        assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
        await stopping
