"""No event that cannot be sent back is written, and no stored event makes a
reader stuck: commands whose events would be too large are refused before
anything is written (EVENT_TOO_LARGE, RESULT_TOO_LARGE), and events that
together exceed the message limit reach every kind of reader in pages."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from chronicle.v1 import command_pb2
from chronicle.v1 import command_service_pb2 as cs
from chronicle.v1 import event_service_pb2 as ev
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.client import ChronicleClient, Event, Subscription
from service.store.base import StoreAdapter
from tests.support.grpc_client import command, details_of, running_server

MiB = 1024 * 1024
# The server's defaults: 4 MiB messages, events of at most 1 MiB.
BIG_OWNER = "o" * (MiB - 10_000)  # an event just under the limit
HUGE_OWNER = "o" * (MiB + 10_000)  # just over


async def log_length(client: object) -> int:
    stream = client.events.Subscribe(ev.SubscribeRequest(pages=True))  # type: ignore[attr-defined]
    seen = 0
    async for message in stream:
        if message.HasField("page"):
            seen += len(message.page.events)
        elif message.HasField("caught_up"):
            break
    stream.cancel()
    return seen


async def test_a_command_whose_event_is_too_large_is_refused_and_writes_nothing(store: StoreAdapter) -> None:
    async with running_server(store) as (_, client):
        sent = command("acc-1", bank.OpenAccount(owner=HUGE_OWNER))
        for _ in range(2):  # a retry of the same command id is refused the same way
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.submit(sent)
            details = details_of(refused.value)
            assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "EVENT_TOO_LARGE")
            assert details.metadata["event_type"] == "bank.v1.AccountOpened"
            assert int(details.metadata["size"]) > int(details.metadata["max_event_bytes"]) == MiB
        assert await log_length(client) == 0
        # the aggregate is untouched: it can still be opened
        opened = await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        assert opened.version == 1


async def test_a_batch_whose_events_add_up_to_too_much_is_refused_whole(store: StoreAdapter) -> None:
    # Metadata is copied to every event: ten events of ~260 KB each are 2.6 MB,
    # more than a result may carry (half the 4 MiB message limit).
    metadata = {f"k{i}": "m" * 4000 for i in range(64)}

    def batch(count: int) -> list[command_pb2.Command]:
        opening = [command("acc-1", bank.OpenAccount(owner="ann"), metadata=metadata)]
        return opening + [command("acc-1", bank.Deposit(amount=1), metadata=metadata) for _ in range(count - 1)]

    commands = batch(10)
    async with running_server(store) as (_, client):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.commands.SubmitBatch(cs.SubmitBatchRequest(commands=commands))
        details = details_of(refused.value)
        assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "RESULT_TOO_LARGE")
        assert details.metadata["max_result_bytes"] == str(2 * MiB)
        assert await log_length(client) == 0
        # the refusal is the batch's answer for good (retried, it is replayed)
        with pytest.raises(grpc.aio.AioRpcError) as replayed:
            await client.commands.SubmitBatch(cs.SubmitBatchRequest(commands=commands[:7]))
        assert details_of(replayed.value).reason == "RESULT_TOO_LARGE"
        # Seven such events fit (1.8 MB): a batch of seven new commands is accepted.
        accepted = await client.commands.SubmitBatch(cs.SubmitBatchRequest(commands=batch(7)))
        assert accepted.version == 7


async def test_events_larger_together_than_a_message_reach_every_reader(store: StoreAdapter) -> None:
    # Six events of almost 1 MiB: 6 MB in all, one and a half message limits.
    async with running_server(store) as (app, client):
        for i in range(6):
            await client.submit(command(f"acc-{i}", bank.OpenAccount(owner=BIG_OWNER)))
        # a subscriber asking for pages, and one taking events one by one
        assert await log_length(client) == 6
        single = client.events.Subscribe(ev.SubscribeRequest())
        owners = []
        async for message in single:
            if message.HasField("caught_up"):
                break
            owners.append(len(message.event.payload.value))
        single.cancel()
        assert len(owners) == 6 and min(owners) > MiB - 20_000
        # a long aggregate's paged read; the Python client reads in pages
        async with ChronicleClient.connect(app.address) as python:
            for amount in range(1, 4):
                await python.submit("acc-0", bank.Deposit(amount=amount))
            history = await python.read_all("acc-0")
            assert [e.version for e in history] == [1, 2, 3, 4]
            assert len([event async for event in _first(python.subscribe(), 9)]) == 9


async def _first(subscription: Subscription, count: int) -> AsyncIterator[Event]:
    taken = 0
    async for event in subscription:
        yield event
        taken += 1
        if taken == count:
            return
