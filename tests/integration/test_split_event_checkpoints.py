"""A checkpoint never skips the second half of a split event.

The ledger plugin (tests/support/plugins.py) splits a stored AccountOpened
v2 into AccountOpened v3 + MoneyDeposited, both at the stored event's
position. A Python subscriber that dies while handling the second piece,
restarted from its saved checkpoint, must get it (the first possibly
again); one whose stream breaks between the two must get each once. On a
real PostgreSQL store, over a real socket; docs/subscriptions.md
("Keeping your own position")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.client import ChronicleClient, Event, FileCheckpoints, MemoryCheckpoints, RetryPolicy
from service.plugins.registry import Registry
from service.store.postgres import PostgresStore
from service.store.records import NewEvent
from tests.support import plugins
from tests.support.broken_calls import BreakFirstStream
from tests.support.events import new_event
from tests.support.grpc_client import running_server

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)


class Died(Exception):
    """The consumer's process dying while it handles an event."""


def opened_at_v2(owner: str) -> NewEvent:
    return new_event(
        "bank.v1.AccountOpened",
        aggregate_type="Book",
        payload=bank.AccountOpened(owner=owner).SerializeToString(),
        schema_version=2,
    )


def deposited_at_v1(amount: int) -> NewEvent:
    return new_event(
        "bank.v1.MoneyDeposited",
        aggregate_type="Book",
        payload=bank.MoneyDeposited(amount=amount).SerializeToString(),
        schema_version=1,
    )


@pytest.fixture
async def ledger(postgres_store: PostgresStore) -> AsyncIterator[str]:
    """A ledger server over books written years ago: book-1 opened at
    AccountOpened v2 (split in two when read) and a v1 deposit, then book-2
    likewise, opened last, so the log ends with a split event."""
    await postgres_store.append("book-1", [opened_at_v2("ann"), deposited_at_v1(3)], 0)
    await postgres_store.append("book-2", [opened_at_v2("bob")], 0)
    async with running_server(postgres_store, registry=Registry([plugins.ledger])) as (app, _):
        yield app.address


def seen(events: list[Event]) -> list[tuple[str, int, str]]:
    return [(e.aggregate_id, e.version, e.event_type) for e in events]


OPENED = ("book-1", 1, "bank.v1.AccountOpened")
BONUS = ("book-1", 1, "bank.v1.MoneyDeposited")
DEPOSIT = ("book-1", 2, "bank.v1.MoneyDeposited")
BOB_OPENED = ("book-2", 1, "bank.v1.AccountOpened")
BOB_BONUS = ("book-2", 1, "bank.v1.MoneyDeposited")


async def run_until_death(
    client: ChronicleClient, checkpoints: FileCheckpoints, dies_on: tuple[str, int, str]
) -> list[Event]:
    handled: list[Event] = []
    try:
        async with asyncio.timeout(30):  # a broken build fails, not hangs
            async for event in client.subscribe(checkpoints=checkpoints):
                handled.append(event)
                if seen([event]) == [dies_on]:
                    raise Died
    except Died:
        return handled
    raise AssertionError("the subscription ended")


async def run_until(client: ChronicleClient, checkpoints: FileCheckpoints, count: int) -> list[Event]:
    handled: list[Event] = []
    async with asyncio.timeout(30):
        async for event in (subscription := client.subscribe(checkpoints=checkpoints)):
            handled.append(event)
            if len(handled) == count:
                await subscription.processed(event)
                break
    return handled


async def test_a_consumer_that_died_on_the_second_piece_gets_it_after_a_restart(ledger: str, tmp_path: Path) -> None:
    checkpoints = FileCheckpoints(tmp_path / "consumer.pos")
    async with ChronicleClient.connect(ledger, retry=FAST) as client:
        first_run = await run_until_death(client, checkpoints, dies_on=BONUS)
        saved = await checkpoints.load()
        restarted = await run_until(client, checkpoints, 3)
    assert seen(first_run) == [OPENED, BONUS]
    assert saved == 0  # not the split event's position: its second piece was not finished
    assert seen(restarted) == [OPENED, BONUS, DEPOSIT]  # the first piece again, the second not skipped


async def test_the_last_piece_of_the_log_is_checkpointed_when_the_server_says_it_is_the_last(
    ledger: str, tmp_path: Path
) -> None:
    """The log ends with a split event: nothing after it says its position is
    complete but the server's ``completes_position`` (or the caught-up mark,
    which ``processed`` does not wait for)."""
    checkpoints = FileCheckpoints(tmp_path / "consumer.pos")
    async with ChronicleClient.connect(ledger, retry=FAST) as client:
        positions = {e.aggregate_id: e.position for e in await client.read_all("book-2")}
        everything = await run_until(client, checkpoints, 5)
        after_all = await checkpoints.load()
        # Again, dying on book-2's second piece: the checkpoint stays before it.
        await checkpoints.save(positions["book-2"] - 1)
        died = await run_until_death(client, checkpoints, dies_on=BOB_BONUS)
        after_death = await checkpoints.load()
    assert seen(everything) == [OPENED, BONUS, DEPOSIT, BOB_OPENED, BOB_BONUS]
    assert after_all == positions["book-2"]
    assert seen(died) == [BOB_OPENED, BOB_BONUS]
    assert after_death == positions["book-2"] - 1


async def test_processed_on_a_first_piece_keeps_the_checkpoint_before_its_position(ledger: str) -> None:
    checkpoints = MemoryCheckpoints()
    async with ChronicleClient.connect(ledger, retry=FAST) as client:
        async for event in (subscription := client.subscribe(checkpoints=checkpoints)):
            await subscription.processed(event)
            break
    assert (seen([event]), await checkpoints.load(), subscription.position) == ([OPENED], 0, 0)


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED])
async def test_a_stream_broken_between_the_pieces_resumes_with_the_second_once(
    ledger: str, code: grpc.StatusCode
) -> None:
    breaking = BreakFirstStream(after=1, code=code)  # right after book-1's first piece
    channel = grpc.aio.insecure_channel(ledger, interceptors=[breaking])
    async with ChronicleClient(channel, retry=FAST, owns_channel=True) as client:
        received: list[Event] = []
        async with asyncio.timeout(30):
            async for event in client.subscribe():
                received.append(event)
                if len(received) == 5:
                    break
    assert seen(received) == [OPENED, BONUS, DEPOSIT, BOB_OPENED, BOB_BONUS]
    first, second = breaking.requests
    assert (first.after_position, second.after_position) == (0, 0)  # the split event's position again
