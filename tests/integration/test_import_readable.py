"""An import refuses events the plugins cannot read (docs/export-format.md,
"Importing"): an event whose aggregate type no plugin declares, whose event
type no plugin declares or upcasts, that is another aggregate type's event,
at a schema version the plugin cannot read, or whose payload does not parse
(BAD_RECORD). Each is INVALID_ARGUMENT with the reason a reader would fail
it with, the record and event named, and nothing of its batch written; the
aggregate stays usable. A retired stored
type that a plugin upcasts is imported, and read as what it becomes.

Through a server its plugins decide (every store); with ``--database-url``
the plugins the CLI loads, as ``chronicle plugins`` lists them."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import export_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from domain_plugins.users.protos.users.v1 import users_pb2 as users
from service.plugins.registry import Registry
from service.store.base import StoreAdapter
from service.store.records import TOMBSTONE_EVENT_TYPE, RecordedEvent
from service.store.sqlite import SqliteStore
from service.transfer.exporter import FORMAT, FORMAT_VERSION
from service.transfer.records import end_record, exported_event
from service.transfer.stream import JSON_LINES, Writer
from tests.support import plugins
from tests.support.grpc_client import Client, command, details_of, running_server
from tests.support.processes import cli
from tests.support.stores import STORES, store_site
from tests.support.transfer import exported, imported

Record = export_pb2.ExportRecord


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreAdapter]:
    async with STORES[request.param](store_site(request, tmp_path)) as opened:
        yield opened


@pytest.fixture
async def client(store: StoreAdapter) -> AsyncIterator[Client]:
    async with running_server(store, anonymous_admin=True) as (_, connected):
        yield connected


def event(
    aggregate_id: str,
    version: int,
    message: Message | None = None,
    *,
    aggregate_type: str = "Account",
    event_type: str = "",
    schema_version: int = 1,
) -> Record:
    message = message or (bank.AccountOpened(owner="ann") if version == 1 else bank.MoneyDeposited(amount=5))
    return exported_event(
        RecordedEvent(
            event_id=str(uuid.uuid4()),
            aggregate_id=aggregate_id,
            aggregate_type=aggregate_type,
            version=version,
            position=0,
            event_type=event_type or message.DESCRIPTOR.full_name,
            schema_version=schema_version,
            payload=message.SerializeToString(),
            timestamp_us=time.time_ns() // 1000,
            command_id="",
            user_id="legacy",
            origin="kurrentdb",
            correlation_id="",
            causation_id="",
            metadata={},
        )
    )


def stream(*records: Record) -> list[Record]:
    header = Record(header=export_pb2.ExportHeader(format=FORMAT, format_version=FORMAT_VERSION))
    return [header, *records, end_record(Counter(record.WhichOneof("record") or "" for record in records))]


async def refusal(client: Client, records: list[Record]) -> tuple[grpc.StatusCode, str, dict[str, str], list[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await imported(client, records)
    details = details_of(refused.value)
    return details.code, details.reason, details.metadata, details.field_violations


def unparsable(record: Record) -> Record:
    """``record`` with bytes no message parses from as its payload."""
    record.event.event.payload.value = b"\xff\xff\xff"
    return record


# What the walkthrough imported (/tmp/w-kurrent-repro: mism2, unk, mism3), and
# more: each the second event of acc-1, after its opening in the same batch.
UNREADABLE = {
    "a user's event inside an account": (
        event("acc-1", 2, users.UserRegistered(email="ann@example.com")),
        "AGGREGATE_TYPE_MISMATCH",
        "record[3].event.event.aggregate_type",
    ),
    "an event type no plugin declares": (
        event("acc-1", 2, event_type="legacy.v1.CardIssued"),
        "UNKNOWN_EVENT_TYPE",
        "record[3].event.event.event_type",
    ),
    "an aggregate type no plugin declares (a typo)": (
        event("acc-1", 2, aggregate_type="Acount"),
        "UNKNOWN_AGGREGATE_TYPE",
        "record[3].event.event.aggregate_type",
    ),
    "a payload that does not parse as its type": (
        unparsable(event("acc-1", 2)),
        "BAD_RECORD",
        "record[3].event.event.payload",
    ),
    "a schema version newer than the plugin's": (
        event("acc-1", 2, schema_version=2),
        "SCHEMA_VERSION_TOO_NEW",
        "record[3].event.event.schema_version",
    ),
}


@pytest.mark.parametrize("case", list(UNREADABLE))
async def test_an_event_the_plugins_cannot_read_is_refused_and_nothing_of_its_batch_written(
    client: Client, store: StoreAdapter, case: str
) -> None:
    unreadable, reason, field = UNREADABLE[case]
    records = stream(event("acc-0", 1), event("acc-1", 1), unreadable)
    code, got, metadata, fields = await refusal(client, records)
    assert (code, got, fields) == (grpc.StatusCode.INVALID_ARGUMENT, reason, [field])
    assert metadata["record"] == "3"
    assert metadata["event_id"] == unreadable.event.event.event_id
    assert (metadata["aggregate_id"], metadata["event_type"]) == ("acc-1", unreadable.event.event.event_type)
    assert await store.head("acc-0") is None and await store.head("acc-1") is None  # nothing of the batch
    # The aggregate is not broken: it takes the import of its readable events.
    await imported(client, stream(event("acc-1", 1), event("acc-1", 2)))
    response: ev.GetAggregateResponse = await client.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="acc-1"))
    assert response.version == 2


async def test_a_deleted_aggregates_tombstone_is_of_every_aggregate_type(client: Client) -> None:
    """The tombstone's type (chronicle.v1.AggregateDeleted) no plugin
    declares: an export holding a deleted aggregate imports."""
    await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    await client.admin.DeleteAggregate(admin.DeleteAggregateRequest(aggregate_id="acc-1", reason="closed"))
    records = await exported(client)
    assert [r.event.event.event_type for r in records if r.HasField("event")] == [TOMBSTONE_EVENT_TYPE]
    again = await imported(client, records)
    assert (again.events_written, again.events_skipped) == (0, 1)


async def test_a_retired_stored_type_a_plugin_upcasts_is_imported_and_read_as_what_it_becomes(
    store: StoreAdapter,
) -> None:
    """The ledger test plugin upcasts legacy.v1.OwnerChanged v1 (a type no
    plugin declares any more) to a BoxRenamed of its books; v2 of it no
    upcaster reads, and MoneyDeposited v3 is newer than the plugin's v2."""
    async with running_server(store, anonymous_admin=True, registry=Registry([plugins.ledger])) as (_, client):
        legacy = event(
            "book-1", 2, box.BoxRenamed(name="bea"), aggregate_type="Book", event_type="legacy.v1.OwnerChanged"
        )
        await imported(client, stream(event("book-1", 1, aggregate_type="Book", schema_version=3), legacy))
        response: ev.GetAggregateResponse = await client.events.GetAggregate(
            ev.GetAggregateRequest(aggregate_id="book-1")
        )
        state = bank.Account()
        assert response.state.Unpack(state) and state.owner == "bea"

        unsupported = event(
            "book-1",
            3,
            box.BoxRenamed(name="x"),
            aggregate_type="Book",
            event_type="legacy.v1.OwnerChanged",
            schema_version=2,
        )
        code, reason, _, fields = await refusal(client, stream(unsupported))
        assert (code, reason, fields) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "UNSUPPORTED_SCHEMA_VERSION",
            ["record[1].event.event.schema_version"],
        )
        too_new = event("book-1", 3, bank.MoneyDeposited(amount=1), aggregate_type="Book", schema_version=3)
        code, reason, _, _ = await refusal(client, stream(too_new))
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "SCHEMA_VERSION_TOO_NEW")
        head = await store.head("book-1")
        assert head is not None and head.version == 2  # nothing of the refused ones


async def test_with_a_database_url_the_plugins_the_cli_loads_decide(tmp_path: Path) -> None:
    """``chronicle import --database-url`` of the walkthrough's mism2: a
    user's event inside an account, in a JSON lines file."""
    path = tmp_path / "mism2.jsonl"
    with path.open("wb") as out:
        writer = Writer(out, JSON_LINES)
        for record in stream(event("account-m2", 1), event("account-m2", 2, users.UserRegistered(email="a@b.c"))):
            writer.write(record)
    database = f"sqlite:///{tmp_path / 'chronicle.db'}"
    done = cli("import", str(path), "--database-url", database, "--quiet", server="unused:1", check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: AGGREGATE_TYPE_MISMATCH: record[2]: event "), done.stderr
    assert "users.v1.UserRegistered is an event of aggregate type 'User', not of 'Account'" in done.stderr
    target = SqliteStore(tmp_path / "chronicle.db")
    await target.open()
    try:
        assert await target.head("account-m2") is None  # nothing of the batch
    finally:
        await target.close()
