"""Imported events are history to reactions (docs/migration.md, "What an
import does to reactions"): a legacy log holding one finished transfer
(alice 100 - 30 = 70, bert 30), imported into a server that runs the bank's
``bank.transfers`` reaction, keeps its balances; the reaction's checkpoint
passes the imported events, nothing parked; a second import writes nothing;
a transfer sent to Chronicle afterwards is carried out. An import of a
transfer still pending in the legacy system, then of the rest of its
history, is not refused (the reaction wrote nothing in between). Imported
through the CLI straight into an empty database, then served: the same
balances, and no reaction started as on a store older versions served."""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message

from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import export_pb2
from chronicle.v1 import reaction_service_pb2 as reaction_pb
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.bank_account.transfers import TRANSFER
from service.store.base import StoreAdapter
from service.store.factory import open_store
from service.store.imported import IMPORTED_KEY
from service.store.records import RecordedEvent
from service.transfer.exporter import FORMAT, FORMAT_VERSION
from service.transfer.records import end_record, exported_event
from service.transfer.stream import BINARY, Writer
from tests.support.grpc_client import Client, command, details_of, running_server
from tests.support.processes import cli
from tests.support.stores import STORES, store_site
from tests.support.transfer import imported
from tests.support.waiting import eventually

Record = export_pb2.ExportRecord
REACTION = "bank.transfers"


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreAdapter]:
    async with STORES[request.param](store_site(request, tmp_path)) as opened:
        yield opened


@pytest.fixture
async def client(store: StoreAdapter) -> AsyncIterator[Client]:
    async with running_server(store, anonymous_admin=True, poll_seconds=0.05) as (_, connected):
        yield connected


class Legacy:
    """A legacy bank's log, as a converter writes it: ``alice`` and ``bert``
    opened, alice given 100, and transfer ``transfer`` of 30 from alice to
    bert requested and carried out by the legacy system's own process."""

    def __init__(self) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.alice, self.bert, self.transfer = f"alice-{suffix}", f"bert-{suffix}", f"transfer-{suffix}"
        moved = {TRANSFER: self.transfer}
        self.requested = [
            self._event(self.alice, "Account", 1, bank.AccountOpened(owner="alice")),
            self._event(self.alice, "Account", 2, bank.MoneyDeposited(amount=100)),
            self._event(self.bert, "Account", 1, bank.AccountOpened(owner="bert")),
            self._event(
                self.transfer,
                "Transfer",
                1,
                bank.TransferRequested(source_account_id=self.alice, target_account_id=self.bert, amount=30),
            ),
        ]
        self.carried_out = [
            self._event(self.alice, "Account", 3, bank.MoneyWithdrawn(amount=30), moved),
            self._event(self.bert, "Account", 2, bank.MoneyDeposited(amount=30), moved),
            self._event(self.transfer, "Transfer", 2, bank.TransferCompleted()),
        ]

    @staticmethod
    def _event(
        aggregate_id: str, aggregate_type: str, version: int, message: Message, metadata: dict[str, str] | None = None
    ) -> Record:
        return exported_event(
            RecordedEvent(
                event_id=str(uuid.uuid4()),
                aggregate_id=aggregate_id,
                aggregate_type=aggregate_type,
                version=version,
                position=0,
                event_type=message.DESCRIPTOR.full_name,
                schema_version=1,
                payload=message.SerializeToString(),
                timestamp_us=time.time_ns() // 1000,
                command_id="",
                user_id="legacy",
                origin="kurrentdb",
                correlation_id="",
                causation_id="",
                metadata=metadata or {},
            )
        )

    def whole(self) -> list[Record]:
        return stream(*self.requested, *self.carried_out)


def stream(*records: Record) -> list[Record]:
    header = Record(header=export_pb2.ExportHeader(format=FORMAT, format_version=FORMAT_VERSION))
    return [header, *records, end_record(Counter(record.WhichOneof("record") or "" for record in records))]


async def balance(client: Client, account: str) -> int:
    response: ev.GetAggregateResponse = await client.events.GetAggregate(
        ev.GetAggregateRequest(aggregate_id=account), timeout=10
    )
    state = bank.Account()
    assert response.state.Unpack(state)
    return int(state.balance)


async def reaction(client: Client) -> reaction_pb.ReactionStatus:
    status: reaction_pb.ReactionStatus = await client.reactions.GetReaction(
        reaction_pb.GetReactionRequest(name=REACTION), timeout=10
    )
    return status


async def caught_up(client: Client) -> reaction_pb.ReactionStatus:
    """The reaction's status once it has handled the whole log."""

    async def done() -> bool:
        status = await reaction(client)
        return status.log_head > 0 and status.position == status.log_head

    await eventually(done, what=f"{REACTION} caught up")
    return await reaction(client)


async def test_an_imported_finished_transfer_is_not_carried_out_again(client: Client) -> None:
    legacy = Legacy()
    first = await imported(client, legacy.whole())
    assert first.events_written == 7

    status = await caught_up(client)
    assert (await balance(client, legacy.alice), await balance(client, legacy.bert)) == (70, 30)
    assert status.parked == 0

    again = await imported(client, legacy.whole())
    assert (again.events_written, again.events_skipped) == (0, 7)

    # A transfer Chronicle takes itself is carried out by the reaction.
    await client.submit(
        command(
            f"transfer-{uuid.uuid4().hex[:8]}",
            bank.TransferMoney(source_account_id=legacy.alice, target_account_id=legacy.bert, amount=10),
        )
    )

    async def moved() -> bool:
        return (await balance(client, legacy.alice), await balance(client, legacy.bert)) == (60, 40)

    await eventually(moved, what="the live transfer carried out")
    assert (await reaction(client)).parked == 0


async def test_a_transfer_pending_at_one_import_is_finished_by_the_next(client: Client) -> None:
    """migration.md's cutover, step 1: convert and import as often as you
    like. The transfer is the legacy system's to carry out: the reaction
    sends nothing for it, so the next import finds the accounts as it left
    them (it was refused AGGREGATE_NOT_EMPTY when the reaction had written
    alice's version 3)."""
    legacy = Legacy()
    await imported(client, stream(*legacy.requested))
    await caught_up(client)
    assert (await balance(client, legacy.alice), await balance(client, legacy.bert)) == (100, 0)

    later = await imported(client, legacy.whole())
    assert (later.events_written, later.events_skipped) == (3, 4)
    await caught_up(client)
    assert (await balance(client, legacy.alice), await balance(client, legacy.bert)) == (70, 30)


async def test_subscribers_see_imported_events_marked_as_imported(client: Client) -> None:
    legacy = Legacy()
    await imported(client, legacy.whole())
    read = client.events.ReadAggregate(ev.ReadAggregateRequest(aggregate_id=legacy.alice), timeout=10)
    events = [event async for event in read]
    assert [event.version for event in events] == [1, 2, 3]
    assert all(event.metadata[IMPORTED_KEY] == "true" for event in events)
    assert events[2].metadata[TRANSFER] == legacy.transfer  # the event's own metadata kept


async def test_a_client_cannot_mark_its_commands_events_as_imported(client: Client) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.submit(
            command(f"acc-{uuid.uuid4().hex[:8]}", bank.OpenAccount(owner="mallory"), metadata={IMPORTED_KEY: "x"})
        )
    details = details_of(refused.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_METADATA")
    assert details.field_violations == [f"command.metadata['{IMPORTED_KEY}']"]


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_an_import_into_an_empty_database_then_served_keeps_the_legacy_balances(
    request: pytest.FixtureRequest, tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """migration.md's cutover: ``chronicle import --database-url`` into an
    empty database, then serve. The import wrote the reaction-start marker,
    so the server does not take the log for one that older versions served
    (that warning, and a start at the beginning)."""
    legacy = Legacy()
    path = tmp_path / "legacy.chronicle"
    with path.open("wb") as out:
        writer = Writer(out, BINARY)
        for record in legacy.whole():
            writer.write(record)
    url = f"sqlite:///{tmp_path / 'chronicle.db'}" if kind == "sqlite" else str(request.getfixturevalue("postgres_url"))
    cli("import", str(path), "--database-url", url, "--quiet", server="unused:1")

    store = open_store(url)
    await store.open()
    try:
        with caplog.at_level(logging.INFO, logger="service.processing.reaction_starts"):
            async with running_server(store, anonymous_admin=True, poll_seconds=0.05) as (_, client):
                status = await caught_up(client)
                assert status.start_position == status.log_head == 7
                assert (await balance(client, legacy.alice), await balance(client, legacy.bert)) == (70, 30)
                assert status.parked == 0
    finally:
        await store.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "older versions" in r.getMessage()]
