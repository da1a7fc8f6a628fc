"""docs/architecture.md, claim by claim, where no other test held it to its
word: servers on real sockets over the memory store, SQLite or the suite's
PostgreSQL, and a projection runner on its own.

- a command id sent again while the first is still queued (both taken into
  one series) runs once: the second gets the original result, replayed, and
  the commands queued with them are not failed;
- a command stream keeps each aggregate's order: a dry run decides on what
  the commands before it left and nothing after, and a plugin middleware
  whose hook waits does not let a later command overtake;
- a lost uniqueness claim is recorded like any refusal: its retry is
  refused alike, even once the value is free;
- commands queued for one aggregate run as series of at most 64, each
  series one append;
- no command record is read on the happy path, only for a retry;
- ReadAggregate reads 500 stored events at a time; a catch-up starts with a
  page of 100 events, then pages of --read-page-events (1,000);
- anything but a Chronicle error is INTERNAL, reason INTERNAL, without its
  text;
- a projection's document cache evicts the least recently used (a read
  counts as a use);
- SQLite: WAL, synchronous=FULL;
- PostgreSQL: appends of no events (refusals) never take the position lock;
  group commit has one batch in flight, the appends made meanwhile forming
  the next; an append behind a transaction stuck on the position lock fails
  after lock_timeout (UNAVAILABLE, worth a retry) instead of waiting on.

Where a test waits, it waits for an outcome (``eventually``); the bounds
only make a broken build fail rather than hang."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from chronicle.v1 import command_service_pb2 as pb
from chronicle.v1 import event_service_pb2 as ev
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.users.protos.users.v1 import users_pb2 as users
from service.plugins import CommandCall, Documents, Middleware, Plugin, ProjectedEvent
from service.plugins.registry import Registry
from service.processing.commands import CommandRequest
from service.processing.executor import CommandExecutor
from service.processing.projections import ProjectionRunner
from service.processing.upcasting import EventReader
from service.store.base import Store, StoreAdapter
from service.store.memory import MemoryStore
from service.store.postgres import PostgresStore
from service.store.records import AggregateHead, ClaimChange, CommandRecord, NewEvent, RecordedEvent
from service.store.sqlite import SqliteStore
from tests.support.blocking import GatedStore
from tests.support.events import new_event
from tests.support.faults import appends_blocked, wait_for_waiters
from tests.support.grpc_client import Client, command, details_of, running_server
from tests.support.waiting import eventually

BANK = Registry([bank_account.plugin])


async def refusal(call: Any) -> grpc.aio.AioRpcError:
    """The error a call the server refuses ends with."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


async def in_one_page(client: Client, requests: Sequence[pb.SubmitRequest]) -> list[pb.SubmitStreamResponse]:
    """``requests`` as one SubmitStreamPages message: the server starts them
    one after another with no wait between them; the answers unpacked."""
    pages = client.commands.SubmitStreamPages(iter([pb.SubmitPage(requests=requests)]), timeout=30)
    return [answer async for page in pages for answer in page.results]


def deposited(response: pb.SubmitResponse) -> list[int]:
    """The amounts of the deposits a response holds."""
    amounts = []
    for event in response.events:
        money = bank.MoneyDeposited()
        assert event.payload.Unpack(money)
        amounts.append(money.amount)
    return amounts


class Counting(MemoryStore):
    """Counts the command records read and the commands each append carries."""

    def __init__(self) -> None:
        super().__init__()
        self.records_read = 0
        self.appended: list[int] = []

    async def find_command(self, command_id: str) -> CommandRecord | None:
        self.records_read += 1
        return await super().find_command(command_id)

    async def append(
        self,
        aggregate_id: str,
        events: Sequence[NewEvent],
        expected_version: int,
        *,
        commands: Sequence[CommandRecord] = (),
        claims: Sequence[ClaimChange] = (),
    ) -> list[RecordedEvent]:
        self.appended.append(len(commands))
        return await super().append(aggregate_id, events, expected_version, commands=commands, claims=claims)


# -- idempotency and order ----------------------------------------------------------


def gated(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> GatedStore:
    """A SQLite or PostgreSQL store whose appends wait for the test's gate."""
    inner: StoreAdapter = (
        SqliteStore(tmp_path / "events.db")
        if kind == "sqlite"
        else PostgresStore(request.getfixturevalue("postgres_url"), pool_size=2)
    )
    return GatedStore(inner)


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_a_command_id_sent_again_while_it_queues_runs_once_and_its_queue_mates_run_too(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store = gated(kind, tmp_path, request)
    async with running_server(store) as (app, client):
        opening = asyncio.ensure_future(client.submit(command("acc-1", bank.OpenAccount(owner="ann"))))
        await store.entered.wait()  # the aggregate's worker is busy: what comes now queues up
        twice = command("acc-1", bank.Deposit(amount=5))
        sent = [command("acc-1", bank.Deposit(amount=1)), twice, twice, command("acc-1", bank.Deposit(amount=2))]
        calls = [asyncio.ensure_future(client.submit(c)) for c in sent]
        await eventually(lambda: app.router.queued == 4, what="four commands queued behind the first")
        store.gate.set()  # they go as one series
        assert (await opening).version == 1
        answers = await asyncio.gather(*calls)
        events = [e async for e in client.events.ReadAggregate(ev.ReadAggregateRequest(aggregate_id="acc-1"))]
    first, again = answers[1], answers[2]
    assert sorted([first.replayed, again.replayed]) == [False, True]  # one ran, the other got its result
    assert (first.version, [e.event_id for e in first.events]) == (again.version, [e.event_id for e in again.events])
    assert sorted(a.version for a in answers if not a.replayed) == [2, 3, 4]
    assert [e.version for e in events] == [1, 2, 3, 4]
    assert sorted(e.command_id for e in events[1:]) == sorted({c.command_id for c in sent})


async def test_a_dry_run_in_a_command_stream_decides_on_the_commands_before_it_and_none_after() -> None:
    async with running_server(MemoryStore()) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        dry = pb.SubmitRequest(command=command("acc-1", bank.Deposit(amount=5)), dry_run=True)
        after = pb.SubmitRequest(command=command("acc-1", bank.Deposit(amount=7)))
        preview, done = await in_one_page(client, [dry, after])
    assert (preview.ok.version, deposited(preview.ok)) == (2, [5])  # on the opened account alone
    assert (done.ok.version, deposited(done.ok)) == (2, [7])  # the dry run wrote nothing


class Dawdling(Middleware):
    """A before hook that waits (as one asking another service would), the
    longer for a deposit of 1."""

    name = "dawdling"

    async def before(self, call: CommandCall) -> None:
        if isinstance(call.message, bank.Deposit) and call.message.amount == 1:
            for _ in range(20):
                await asyncio.sleep(0)


dawdling = Plugin("dawdling")
dawdling.add_middleware(Dawdling())


async def test_a_middleware_hook_that_waits_lets_no_command_of_a_stream_overtake_another() -> None:
    async with running_server(MemoryStore(), registry=Registry([bank_account.plugin, dawdling])) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        sent = [pb.SubmitRequest(command=command("acc-1", bank.Deposit(amount=n))) for n in (1, 2, 3)]
        answers = await in_one_page(client, sent)
    assert [(a.ok.version, deposited(a.ok)) for a in answers] == [(2, [1]), (3, [2]), (4, [3])]


async def test_a_lost_claim_is_recorded_so_its_retry_is_refused_alike_even_once_the_value_is_free() -> None:
    email = "ann@example.com"
    async with running_server(MemoryStore()) as (_, client):
        await client.submit(command("user-1", users.RegisterUser(email=email, name="Ann")))
        second = command("user-2", users.RegisterUser(email=email, name="Ann"))
        lost = details_of(await refusal(client.submit(second)))
        await client.submit(command("user-1", users.DeactivateUser()))  # the value is free now
        retried = details_of(await refusal(client.submit(second)))
        fresh = await client.submit(command("user-2", users.RegisterUser(email=email, name="Ann")))
    assert (lost.code, lost.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_UNIQUE")
    assert (retried.code, retried.reason, retried.metadata) == (lost.code, lost.reason, lost.metadata)
    assert fresh.version == 1  # a new command id is decided anew


async def test_commands_queued_for_one_aggregate_run_as_series_of_at_most_64_each_one_append() -> None:
    store = Counting()
    async with running_server(store, queue_depth=256) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))  # warm: decided at once
        store.appended.clear()
        sent = [pb.SubmitRequest(command=command("acc-1", bank.Deposit(amount=1))) for _ in range(200)]
        answers = await in_one_page(client, sent)
    assert [a.ok.version for a in answers] == list(range(2, 202))
    # The first went alone; the 199 that queued behind it, 64 at a time.
    assert store.appended == [1, 64, 64, 64, 7]


async def test_no_command_record_is_read_on_the_happy_path_only_for_a_retry() -> None:
    store = Counting()
    async with running_server(store) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))  # cold: loaded, then decided
        deposit = command("acc-1", bank.Deposit(amount=5))
        await client.submit(deposit)  # warm: decided at once
        await in_one_page(client, [pb.SubmitRequest(command=command("acc-1", bank.Deposit(amount=n))) for n in (1, 2)])
        assert store.records_read == 0
        retried = await client.submit(deposit)
    assert (retried.replayed, retried.version) == (True, 2)
    assert store.records_read >= 1  # the store said "recorded"; then the original result was read


# -- reading in pages -----------------------------------------------------------------


def _bank_event(message: Message) -> NewEvent:
    return new_event(message.DESCRIPTOR.full_name, aggregate_type="Account", payload=message.SerializeToString())


async def _account_of(events: int) -> MemoryStore:
    """A store holding acc-1: opened, then ``events`` - 1 deposits."""
    store = MemoryStore()
    await store.append("acc-1", [_bank_event(bank.AccountOpened(owner="ann"))], 0)
    deposits = [_bank_event(bank.MoneyDeposited(amount=1)) for _ in range(events - 1)]
    for start in range(0, len(deposits), 400):
        await store.append("acc-1", deposits[start : start + 400], start + 1)
    return store


async def test_read_aggregate_reads_500_stored_events_at_a_time() -> None:
    async with running_server(await _account_of(1_200)) as (_, client):
        request = ev.ReadAggregateRequest(aggregate_id="acc-1")
        pages = [len(page.events) async for page in client.events.ReadAggregatePages(request)]
    assert pages == [500, 500, 200]


async def test_a_catch_up_starts_with_a_page_of_100_events_then_pages_of_1000() -> None:
    async with running_server(await _account_of(1_200)) as (app, client):
        assert app.settings.read_page_events == 1_000
        pages = []
        async for response in client.events.Subscribe(ev.SubscribeRequest(pages=True), timeout=30):
            if response.HasField("caught_up"):
                break
            pages.append(len(response.page.events))
    assert pages == [100, 1_000, 100]


# -- errors ---------------------------------------------------------------------------


class Broken(MemoryStore):
    """A store with a bug: reading the head of "acc-bug" raises what no
    Chronicle error is."""

    async def head(self, aggregate_id: str) -> AggregateHead | None:
        if aggregate_id == "acc-bug":
            raise RuntimeError("secret-detail of the bug")
        return await super().head(aggregate_id)


async def test_anything_but_a_chronicle_error_is_internal_with_reason_internal_and_none_of_its_text() -> None:
    async with running_server(Broken()) as (_, client):
        error = details_of(await refusal(client.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="acc-bug"))))
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))  # the server goes on serving
    assert (error.code, error.reason, error.message) == (grpc.StatusCode.INTERNAL, "INTERNAL", "internal error")
    assert "secret" not in error.message


# -- a projection's document cache ------------------------------------------------------

recent = Plugin("recent")
touching = recent.projection("recent.touching", aggregate_types=["Account"], cache_size=2)


@touching.on(bank.MoneyDeposited)
def _touch(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Documents) -> None:
    """A deposit of 1 writes the account's document; any other only reads it."""
    documents.get(envelope.aggregate_id, bank.AccountBalance)
    if event.amount == 1:
        documents.put(envelope.aggregate_id, bank.AccountBalance(balance=1))


class Loads(MemoryStore):
    """Counts the documents read from the store."""

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    async def load_documents(self, projection: str, keys: Sequence[str]) -> Any:
        self.loads += len(keys)
        return await super().load_documents(projection, keys)


async def test_a_projection_s_document_cache_lets_the_least_recently_used_go_first() -> None:
    store = Loads()
    executor = CommandExecutor(Store.of(store), BANK)

    async def run(aggregate_id: str, message: Message) -> None:
        spec = BANK.command(message.DESCRIPTOR.full_name)
        assert spec is not None
        request = CommandRequest(command_id=str(uuid.uuid4()), aggregate_id=aggregate_id, spec=spec, message=message)
        await executor.execute(request, None)

    for account in ("acc-0", "acc-1", "acc-2"):
        await run(account, bank.OpenAccount(owner="ann"))
    runner = ProjectionRunner(touching, log=store, documents=store, reader=EventReader(BANK))
    position = await runner.step(0)
    loads = []
    # One deposit a batch: acc-0 and acc-1 written, acc-0 read again (the
    # most recently used now), acc-2 written: acc-1 must go, not acc-0.
    for account, amount in [("acc-0", 1), ("acc-1", 1), ("acc-0", 2), ("acc-2", 1), ("acc-0", 2), ("acc-1", 2)]:
        await run(account, bank.Deposit(amount=amount))
        store.loads = 0
        position = await runner.step(position)
        loads.append(store.loads)
    assert loads == [1, 1, 0, 1, 0, 1]


# -- SQLite ---------------------------------------------------------------------------


async def test_sqlite_writes_a_wal_with_synchronous_full(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "events.db")
    async with running_server(store) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        synchronous = await store._writer.run(lambda db: db.execute("PRAGMA synchronous").fetchone())
    with sqlite3.connect(tmp_path / "events.db") as other:
        (journal,) = other.execute("PRAGMA journal_mode").fetchone()
    assert (journal, synchronous) == ("wal", (2,))  # 2: FULL


# -- PostgreSQL: the position lock and group commit --------------------------------------


@pytest.mark.postgres
async def test_on_postgresql_a_refusal_is_recorded_while_a_transaction_holds_the_position_lock(
    postgres_url: str, postgres_store: PostgresStore
) -> None:
    # ``postgres_store`` is another replica's store on the same database: its
    # append waits for the lock on a connection of its own (a connection runs
    # its operations in order: the server's refusal must not queue behind it).
    async with running_server(PostgresStore(postgres_url, pool_size=4)) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        withdrawal = command("acc-1", bank.Withdraw(amount=5))
        with appends_blocked(postgres_url):
            elsewhere = asyncio.ensure_future(postgres_store.append("acc-2", [new_event()], 0))
            await asyncio.to_thread(wait_for_waiters, postgres_url)  # an append waits for the lock
            refused = details_of(await refusal(client.submit(withdrawal)))  # answered meanwhile
            assert not elsewhere.done()
        assert [e.version for e in await elsewhere] == [1]
        await client.submit(command("acc-1", bank.Deposit(amount=10)))
        retried = details_of(await refusal(client.submit(withdrawal)))
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
    # Recorded: its retry is refused alike, although the balance would cover it now.
    assert (retried.code, retried.reason) == (refused.code, refused.reason)


@pytest.mark.postgres
async def test_on_postgresql_one_batch_is_in_flight_and_the_appends_made_meanwhile_form_the_next(
    postgres_store: PostgresStore, postgres_url: str
) -> None:
    with appends_blocked(postgres_url):
        first = asyncio.ensure_future(postgres_store.append("a-0", [new_event()], 0))
        await asyncio.to_thread(wait_for_waiters, postgres_url)  # the first batch is in flight
        later = [asyncio.ensure_future(postgres_store.append("a-1", [new_event()], 0))]
        await asyncio.sleep(0)  # a round of the event loop: were there room, a-1 would start a batch now
        later += [asyncio.ensure_future(postgres_store.append(f"a-{n}", [new_event()], 0)) for n in range(2, 5)]
    assert [e.position for e in await first] == [1]
    positions = [e.position for appended in await asyncio.gather(*later) for e in appended]
    assert sorted(positions) == [2, 3, 4, 5]
    counts = postgres_store.batch_counts()
    assert (counts.batches, counts.appends) == (2, 5)  # a-0 alone, then a-1 to a-4 together


@pytest.mark.postgres
async def test_on_postgresql_an_append_behind_a_stuck_position_lock_fails_after_lock_timeout_and_its_retry_lands_once(
    postgres_url: str,
) -> None:
    store = PostgresStore(postgres_url, pool_size=4, lock_timeout=0.2)
    async with running_server(store) as (_, client):
        opening = command("acc-1", bank.OpenAccount(owner="ann"))
        with appends_blocked(postgres_url):
            stuck = details_of(await refusal(client.commands.Submit(pb.SubmitRequest(command=opening), timeout=20)))
        response = await client.submit(opening)
        events = [e async for e in client.events.ReadAggregate(ev.ReadAggregateRequest(aggregate_id="acc-1"))]
    assert (stuck.code, stuck.retry) == (grpc.StatusCode.UNAVAILABLE, True)
    assert (response.version, response.replayed) == (1, False)  # nothing of the first attempt was written
    assert [e.command_id for e in events] == [opening.command_id]
