"""``ChronicleClient.subscribe`` against real servers: catch-up then live,
resumed after a broken stream and after a server restart without a gap or a
repeat, and resumed from the last saved checkpoint by a restarted
subscriber."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import grpc
import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.client import (
    ChronicleClient,
    Event,
    FileCheckpoints,
    InvalidArgument,
    LogRewound,
    MemoryCheckpoints,
    RetryPolicy,
    Subscription,
)
from service.store.memory import MemoryStore
from tests.support.broken_calls import BreakFirstStream
from tests.support.grpc_client import running_server
from tests.support.processes import free_port, server_process

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)
# Long enough to outlast a server restart (a few seconds), short enough for CI.
PATIENT = RetryPolicy(max_attempts=200, initial_backoff=0.05, max_backoff=0.2)


async def take(events: AsyncGenerator[Event, None], count: int) -> list[Event]:
    """The next ``count`` events (bounded in time, so a broken build fails);
    the iterator stays open."""
    async with asyncio.timeout(30):
        return [await anext(events) for _ in range(count)]


async def finish(subscription: Subscription, events: AsyncGenerator[Event, None], count: int) -> list[Event]:
    """Process ``count`` events completely, then stop, as a subscriber would."""
    taken = await take(events, count)
    await subscription.processed(taken[-1])
    await events.aclose()
    return taken


async def open_account(client: ChronicleClient, aggregate_id: str, deposits: int) -> None:
    await client.submit(aggregate_id, bank.OpenAccount(owner="ann"))
    for amount in range(1, deposits + 1):
        await client.submit(aggregate_id, bank.Deposit(amount=amount))


def versions(events: list[Event]) -> list[int]:
    return [e.version for e in events]


@pytest.fixture
async def address() -> AsyncIterator[str]:
    async with running_server(MemoryStore()) as (app, _):
        yield app.address


async def test_a_subscription_catches_up_then_goes_live(address: str) -> None:
    async with ChronicleClient.connect(address, retry=FAST) as client:
        await open_account(client, "acc-1", deposits=1)
        subscription = client.subscribe(aggregate_id="acc-1")
        events = aiter(subscription)
        caught_up = await take(events, 2)
        await client.submit("acc-1", bank.Deposit(amount=5))
        (live,) = await take(events, 1)
        await events.aclose()
    assert versions(caught_up) == [1, 2]
    assert (live.version, live.payload) == (3, bank.MoneyDeposited(amount=5))
    assert subscription.caught_up.is_set()


@pytest.mark.parametrize(
    "code",
    # CANCELLED: what a server that is stopping answers to calls it had not started.
    [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED],
)
async def test_a_broken_stream_resumes_after_the_last_event_processed(address: str, code: grpc.StatusCode) -> None:
    async with ChronicleClient.connect(address) as writer:
        await open_account(writer, "acc-1", deposits=4)
    breaking = BreakFirstStream(after=2, code=code)
    channel = grpc.aio.insecure_channel(address, interceptors=[breaking])
    async with ChronicleClient(channel, retry=FAST, owns_channel=True) as client:
        events = aiter(client.subscribe(aggregate_id="acc-1"))
        received = await take(events, 5)
        await events.aclose()
    assert versions(received) == [1, 2, 3, 4, 5]
    first, second = breaking.requests
    assert (first.after_position, second.after_position) == (0, received[1].position)


async def test_a_restarted_subscriber_resumes_after_its_saved_checkpoint(address: str, tmp_path: Path) -> None:
    checkpoints = FileCheckpoints(tmp_path / "projector.pos")
    async with ChronicleClient.connect(address, retry=FAST) as client:
        await open_account(client, "acc-1", deposits=4)
        first = client.subscribe(aggregate_id="acc-1", checkpoints=checkpoints)
        first_run = await finish(first, aiter(first), 3)
        # A restart: a new subscription that knows only the file.
        second = client.subscribe(aggregate_id="acc-1", checkpoints=checkpoints)
        second_run = await finish(second, aiter(second), 2)
    assert versions(first_run) == [1, 2, 3]
    assert versions(second_run) == [4, 5]
    assert await checkpoints.load() == second_run[-1].position


async def test_an_event_being_processed_when_the_subscriber_stops_comes_again(address: str) -> None:
    checkpoints = MemoryCheckpoints()
    async with ChronicleClient.connect(address, retry=FAST) as client:
        await open_account(client, "acc-1", deposits=2)
        interrupted = aiter(client.subscribe(aggregate_id="acc-1", checkpoints=checkpoints))
        await take(interrupted, 2)
        await interrupted.aclose()  # stopped while handling version 2: it never finished
        again = aiter(client.subscribe(aggregate_id="acc-1", checkpoints=checkpoints))
        redelivered = await take(again, 2)
        await again.aclose()
    assert versions(redelivered) == [2, 3]  # at least once: 2 again, 1 not


async def test_save_every_saves_less_often_and_still_keeps_finished_events(address: str) -> None:
    saved: list[int] = []

    class Recording(MemoryCheckpoints):
        async def save(self, position: int) -> None:
            saved.append(position)
            await super().save(position)

    async with ChronicleClient.connect(address, retry=FAST) as client:
        await open_account(client, "acc-1", deposits=5)
        positions = [e.position for e in await client.read_all("acc-1")]
        events = aiter(client.subscribe(aggregate_id="acc-1", checkpoints=Recording(), save_every=4))
        await take(events, 6)  # the sixth is being handled when the subscriber stops
        await events.aclose()
    assert saved == [positions[3], positions[4]]  # after four finished events, then the fifth on stopping


async def test_a_new_subscriber_from_the_end_sees_only_new_events(address: str) -> None:
    async with ChronicleClient.connect(address, retry=FAST) as client:
        await open_account(client, "acc-1", deposits=2)
        subscription = client.subscribe(from_end=True, aggregate_types=["Account"])
        events = aiter(subscription)
        pending = asyncio.ensure_future(anext(events))
        async with asyncio.timeout(30):
            await subscription.caught_up.wait()
        await client.submit("acc-1", bank.Deposit(amount=9))
        event = await asyncio.wait_for(pending, 30)
        await events.aclose()
    assert (event.version, event.payload) == (4, bank.MoneyDeposited(amount=9))


@pytest.mark.slow
async def test_a_subscription_survives_a_server_restart_without_a_gap_or_a_repeat(tmp_path: Path) -> None:
    """The server stops (streams end UNAVAILABLE, SHUTTING_DOWN) and comes
    back on the same address and database: the subscriber reconnects and goes
    on after the last event it processed."""
    url = f"sqlite:///{tmp_path}/events.db"
    port = free_port()
    with server_process(url, port=port) as server:
        async with ChronicleClient.connect(server.address, retry=PATIENT) as client:
            await open_account(client, "acc-1", deposits=2)
            events = aiter(client.subscribe(aggregate_id="acc-1"))
            received = await take(events, 3)
            pending = asyncio.ensure_future(anext(events))  # waiting for version 4 while the server goes
            assert server.stop() == 0
            with server_process(url, port=port):
                await client.submit("acc-1", bank.Deposit(amount=3))
                received.append(await asyncio.wait_for(pending, 60))
                await client.submit("acc-1", bank.Deposit(amount=4))
                received += await take(events, 1)
                await events.aclose()
    assert versions(received) == [1, 2, 3, 4, 5]


async def test_a_checkpoint_of_another_store_is_refused_beyond_its_end_and_below_it(
    tmp_path: Path,
) -> None:
    """docs/clients.md on greeted.pos: a position saved with the id of the
    event seen there is refused LOG_REWOUND by another store, beyond its
    end (that log never held it: it was POSITION_BEYOND_END, called "the
    harmless case") and below it (that log holds another event there),
    where it skipped that store's events up to it. Saved without the id
    (an older client's file), beyond the end it is POSITION_BEYOND_END, and
    below it still skips."""
    saved = FileCheckpoints(tmp_path / "greeted.pos")
    async with running_server(MemoryStore()) as (one, _), ChronicleClient.connect(one.address) as client:
        await open_account(client, "acc-1", deposits=5)  # positions 1 to 6
        async for event in (subscription := client.subscribe(checkpoints=saved)):
            if event.position == 6:
                await subscription.processed(event)
                break
    assert await saved.load() == 6
    async with running_server(MemoryStore()) as (other, _), ChronicleClient.connect(other.address) as client:
        await open_account(client, "acc-2", deposits=1)  # positions 1 and 2: 6 is beyond the end
        with pytest.raises(LogRewound) as beyond:
            await asyncio.wait_for(anext(aiter(client.subscribe(checkpoints=saved))), 10)
        assert beyond.value.metadata == {"position": "6", "log_head": "2"}
        (tmp_path / "old.pos").write_text("6\n")  # an older client's file: the position alone
        with pytest.raises(InvalidArgument) as refused:
            await asyncio.wait_for(
                anext(aiter(client.subscribe(checkpoints=FileCheckpoints(tmp_path / "old.pos")))), 10
            )
        assert (refused.value.reason, refused.value.metadata["log_head"]) == ("POSITION_BEYOND_END", "2")
        await open_account(client, "acc-3", deposits=4)  # positions 3 to 7: now 6 is below the head
        with pytest.raises(LogRewound) as rewound:
            await asyncio.wait_for(anext(aiter(client.subscribe(checkpoints=saved))), 10)
        assert rewound.value.metadata == {"position": "6", "log_head": "7"}
        (tmp_path / "greeted.pos").write_text("6\n")  # an older client's file: the position alone
        first = await asyncio.wait_for(anext(aiter(client.subscribe(checkpoints=saved))), 10)
    assert (first.aggregate_id, first.position) == ("acc-3", 7)  # acc-2 and most of acc-3, skipped
