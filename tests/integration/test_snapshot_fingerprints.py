"""A snapshot is used only by code that reads the events the way the code
that took it did (docs/plugins.md, "Changing an event: upcasters").

The walkthrough of a plugin author (the docs' upcaster example applied to
a bank with snapshots on): deposits stored in whole units, a snapshot taken
at version 100 in units, then the plugin moves deposits to cents with an
upcaster and no ``state_schema_version`` bump. The snapshot's state (99
units) plus the later events read in cents gave 5,099 where the truth is
14,900 cents, and a withdrawal was refused on that balance. Its state
fingerprint (service/plugins/fingerprint.py) now names the event versions
it was built through, so the new code passes it over, replays the events,
and saves a snapshot of its own at the next append.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import projection_service_pb2 as pb
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins import CommandContext, Documents, OldEvent, Plugin, ProjectedEvent, ValidationError
from service.plugins.registry import Registry
from service.store.base import SnapshotKind, StoreAdapter
from service.store.postgres.store import PostgresStore
from service.store.records import Snapshot
from service.store.sqlite.store import SqliteStore
from tests.support.grpc_client import Client, command, running_server
from tests.support.stores import store_site
from tests.support.waiting import eventually

BALANCES = "evolving.balances"


def bank_in(*, cents: bool) -> Registry:
    """The bank's account, its amounts in whole units, or (``cents``) as
    the docs' example changes it: deposits at schema version 2 in cents,
    an upcaster from version 1, and nothing else changed."""
    plugin = Plugin("evolving_bank")
    account = plugin.aggregate("Account", state=bank.Account, snapshot_every=100)

    @account.command(bank.OpenAccount, creates=True)
    def _open(command: bank.OpenAccount, state: bank.Account, context: CommandContext) -> bank.AccountOpened:
        return bank.AccountOpened(owner=command.owner)

    @account.command(bank.Deposit, requires_existing=True)
    def _deposit(command: bank.Deposit, state: bank.Account, context: CommandContext) -> bank.MoneyDeposited:
        return bank.MoneyDeposited(amount=command.amount)

    @account.command(bank.Withdraw, requires_existing=True)
    def _withdraw(command: bank.Withdraw, state: bank.Account, context: CommandContext) -> bank.MoneyWithdrawn:
        if command.amount > state.balance:
            raise ValidationError(f"balance {state.balance}", reason="INSUFFICIENT_FUNDS")
        return bank.MoneyWithdrawn(amount=command.amount)

    @account.apply(bank.AccountOpened)
    def _opened(state: bank.Account, event: bank.AccountOpened) -> None:
        state.owner = event.owner

    @account.apply(bank.MoneyDeposited, schema_version=2 if cents else 1)
    def _deposited(state: bank.Account, event: bank.MoneyDeposited) -> None:
        state.balance += event.amount

    if cents:

        @account.upcast(bank.MoneyDeposited, from_version=1)
        def _to_cents(old: OldEvent) -> bank.MoneyDeposited:
            return bank.MoneyDeposited(amount=old.parse(bank.MoneyDeposited).amount * 100)

    @account.apply(bank.MoneyWithdrawn)
    def _withdrawn(state: bank.Account, event: bank.MoneyWithdrawn) -> None:
        state.balance -= event.amount

    balances = plugin.projection(BALANCES, aggregate_types=["Account"])

    def _move(aggregate_id: str, amount: int, documents: Documents) -> None:
        held = documents.get(aggregate_id, bank.AccountBalance) or bank.AccountBalance()
        held.balance += amount
        documents.put(aggregate_id, held)

    @balances.on(bank.MoneyDeposited)
    def _on_deposit(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Documents) -> None:
        _move(envelope.aggregate_id, event.amount, documents)

    @balances.on(bank.MoneyWithdrawn)
    def _on_withdrawal(event: bank.MoneyWithdrawn, envelope: ProjectedEvent, documents: Documents) -> None:
        _move(envelope.aggregate_id, -event.amount, documents)

    return Registry([plugin])


def kind_of(registry: Registry) -> SnapshotKind:
    account = registry.aggregate("Account")
    assert account is not None
    return SnapshotKind(account.name, account.snapshot_state_type, account.state_schema_version)


Reopen = Callable[[], AbstractAsyncContextManager[StoreAdapter]]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Reopen:
    """Opens the test's one database again: each server closes its store
    when it stops, as a deployment's would."""
    if request.param == "sqlite":
        return lambda: _opened(SqliteStore(tmp_path / "events.db"))
    url = await store_site(request, tmp_path).postgres_current()
    return lambda: _opened(PostgresStore(url, pool_size=2))


@asynccontextmanager
async def _opened(store: SqliteStore | PostgresStore) -> AsyncIterator[StoreAdapter]:
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def serving(reopen: Reopen, registry: Registry) -> AsyncIterator[tuple[StoreAdapter, Client]]:
    async with reopen() as store, running_server(store, registry=registry, anonymous_admin=True) as (_, client):
        yield store, client


async def balance(client: Client) -> int:
    found: ev.GetAggregateResponse = await client.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="acc-1"))
    state = bank.Account()
    assert found.state.Unpack(state)
    return state.balance


async def saved_at(store: StoreAdapter, kind: SnapshotKind, version: int) -> Snapshot:
    """The snapshot of ``kind`` at ``version``, once the background save is done."""
    found: list[Snapshot] = []

    async def saved() -> bool:
        snapshot = await store.load_snapshot("acc-1", kind=kind)
        found[:] = [snapshot] if snapshot is not None and snapshot.version == version else []
        return bool(found)

    await eventually(saved, what=f"a snapshot at version {version}")
    return found[0]


async def test_the_docs_upcaster_example_on_a_snapshotted_bank_gives_the_true_balance(reopen: Reopen) -> None:
    units, cents = bank_in(cents=False), bank_in(cents=True)
    assert kind_of(units) != kind_of(cents)  # the same state message and state schema version
    async with serving(reopen, units) as (store, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        for _ in range(149):
            await client.submit(command("acc-1", bank.Deposit(amount=1)))  # whole units
        assert await balance(client) == 149
        in_units = await saved_at(store, kind_of(units), 100)
        assert bank.Account.FromString(in_units.state).balance == 99  # what misled the old loader

    async with serving(reopen, cents) as (store, client):
        assert await balance(client) == 14_900  # 5,099 with the snapshot in units
        await client.submit(command("acc-1", bank.Withdraw(amount=14_000)))  # refused at 5,099
        assert await balance(client) == 900
        # The load replayed all 150 events: the first append saves a snapshot
        # at once, not at version 200 (the interval's next multiple).
        in_cents = await saved_at(store, kind_of(cents), 151)
        assert bank.Account.FromString(in_cents.state).balance == 900

        # The read model summed units before the change: it is rebuilt, as the docs say.
        await client.projections.RebuildProjection(pb.RebuildProjectionRequest(name=BALANCES))

        async def rebuilt() -> bool:
            status = await client.projections.GetProjection(pb.GetProjectionRequest(name=BALANCES))
            return bool(status.position == status.log_head)

        await eventually(rebuilt, what="the read model rebuilt")
        found = await client.projections.GetDocument(pb.GetDocumentRequest(projection=BALANCES, key="acc-1"))
        document = bank.AccountBalance()
        assert found.document.Unpack(document) and document.balance == 900

    # Back to the code in units (a rollback; the events since are all at
    # versions it reads): the newer snapshot, in cents, would say 900; its
    # own at version 100 is passed over for it.
    async with serving(reopen, units) as (_, client):
        assert await balance(client) == 149 - 14_000
