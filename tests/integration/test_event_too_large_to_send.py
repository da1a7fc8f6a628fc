"""A stored event larger than the server sends in a message (imported
before imports held events to --max-event-bytes: the walkthrough's 5 MiB
KurrentDB event) is refused by name wherever a client would be sent it
(service/processing/sendable.py), over a real server on SQLite and
PostgreSQL. Before: every read and subscription that reached it ended with
gRPC's RESOURCE_EXHAUSTED "Sent message larger than max", which clients
retry, and a group consumer's stream broke at it for ever (nothing parked,
an ExecuteBatchError traceback in the server's log)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import export_pb2
from service.client import ChronicleClient
from service.store.base import Store, StoreAdapter
from service.transfer.importer import Importer
from tests.integration.test_import_what_commands_could_carry import opened, stream
from tests.support.grpc_client import details_of, running_server
from tests.support.stores import STORES, store_site
from tests.support.transfer import exported

MIB = 1024 * 1024
TOO_LARGE = "EVENT_TOO_LARGE_TO_SEND"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreAdapter]:
    """A store holding a-1, then big-1 (5 MiB), then a-2, as an import
    without the size check (a larger limit) left it."""
    async with STORES[request.param](store_site(request, tmp_path)) as opened_store:
        importer = Importer(Store.of(opened_store), max_event_bytes=8 * MIB)
        await importer.run(_records(stream(opened("a-1"), opened("big-1", owner="x" * (5 * MIB)), opened("a-2"))))
        yield opened_store


async def _records(records: list[export_pb2.ExportRecord]) -> AsyncIterator[export_pb2.ExportRecord]:
    for record in records:
        yield record


def _refusal(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    details = details_of(error)
    return details.code, details.reason, details.metadata


async def test_reads_and_subscriptions_end_at_it_naming_it(store: StoreAdapter) -> None:
    (big,) = await store.read_aggregate("big-1")
    async with running_server(store, anonymous_admin=True) as (_, client):
        for read in (client.events.ReadAggregate, client.events.ReadAggregatePages):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                _ = [message async for message in read(ev.ReadAggregateRequest(aggregate_id="big-1"), timeout=10)]
            code, reason, metadata = _refusal(refused.value)
            assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, TOO_LARGE)
            assert metadata["event_id"] == big.event_id and metadata["position"] == str(big.position)
            assert metadata["max_sent_event_bytes"] == str(2 * MIB) and int(metadata["size"]) > 5 * MIB
            assert "--max-message-bytes" in refused.value.details()

        for pages in (False, True):
            seen: list[str] = []

            async def subscribe(pages: bool = pages, seen: list[str] = seen) -> None:
                async for response in client.events.Subscribe(ev.SubscribeRequest(pages=pages), timeout=10):
                    events = response.page.events if response.HasField("page") else [response.event]
                    seen += [event.aggregate_id for event in events if event.aggregate_id]

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await subscribe()
            assert _refusal(refused.value)[:2] == (grpc.StatusCode.FAILED_PRECONDITION, TOO_LARGE)
            assert _refusal(refused.value)[2]["event_id"] == big.event_id
            # One event a message: those before it were sent. In pages: the page holding it is refused whole.
            assert seen == ([] if pages else ["a-1"])


async def test_a_group_parks_it_and_delivers_the_rest(store: StoreAdapter) -> None:
    (big,) = await store.read_aggregate("big-1")
    async with running_server(store, anonymous_admin=True) as (app, _), ChronicleClient.connect(app.address) as client:
        await client.groups.create("ledger")
        delivered: list[str] = []
        async with client.consume("ledger", consumer="c1") as deliveries:

            async def take() -> None:
                async for delivery in deliveries:
                    delivered.append(delivery.event.aggregate_id)
                    await delivery.ack()
                    if len(delivered) == 2:
                        return

            await asyncio.wait_for(take(), timeout=20)
            # The session writes its parks with its checkpoints, soon after: looked for while it runs.
            for _ in range(200):
                if found := await client.groups.parked("ledger"):
                    break
                await asyncio.sleep(0.1)
        assert delivered == ["a-1", "a-2"]
        (parked,) = found
        assert parked.event_id == big.event_id and parked.reason.startswith(f"{TOO_LARGE}: "), parked
        # Replayed, it is parked again (still too large), not delivered.
        assert await client.groups.replay("ledger", [big.event_id]) == 1
        again: list[str] = []
        async with client.consume("ledger", consumer="c2") as deliveries:

            async def take_any() -> None:
                async for delivery in deliveries:
                    again.append(delivery.event.event_id)

            taking = asyncio.create_task(take_any())
            for _ in range(200):
                (parked,) = await client.groups.parked("ledger")
                if not parked.replaying:
                    break
                await asyncio.sleep(0.1)
            taking.cancel()
            with pytest.raises(asyncio.CancelledError):
                await taking
        assert not parked.replaying and parked.reason.startswith(f"{TOO_LARGE}: "), parked
        assert again == []


async def test_an_export_through_the_server_ends_at_it_naming_it(store: StoreAdapter) -> None:
    """Before: RESOURCE_EXHAUSTED "Sent message larger than max"."""
    (big,) = await store.read_aggregate("big-1")
    async with running_server(store, anonymous_admin=True) as (_, client):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await exported(client)
    code, reason, metadata = _refusal(refused.value)
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, TOO_LARGE)
    assert metadata["event_id"] == big.event_id and "chronicle export --database-url" in refused.value.details()
