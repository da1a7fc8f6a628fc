"""ImportLog refuses what would break the service, on every store, with a
status that names the record, and writes nothing of the refused batch:
a snapshot ahead of its aggregate's events or of another type, one whose
state does not parse, an event of another type than its aggregate's, an
event of schema version 0, and ids and texts a command could not have
carried. A snapshot that cannot be read anyway (already stored) is skipped
and the state rebuilt from the events."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message

from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import export_pb2
from domain_plugins.bank_account import account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.store.base import StoreAdapter
from service.store.records import RecordedEvent, Snapshot
from service.store_contract.records import command_record
from service.transfer.exporter import FORMAT, FORMAT_VERSION
from service.transfer.records import end_record, exported_command, exported_event, exported_snapshot
from tests.support.grpc_client import Client, command, details_of, running_server
from tests.support.stores import STORES, store_site
from tests.support.transfer import imported

Record = export_pb2.ExportRecord


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreAdapter]:
    async with STORES[request.param](store_site(request, tmp_path)) as opened:
        yield opened


@pytest.fixture
async def client(store: StoreAdapter) -> AsyncIterator[Client]:
    async with running_server(store, anonymous_admin=True) as (_, connected):
        yield connected


def header() -> Record:
    return Record(header=export_pb2.ExportHeader(format=FORMAT, format_version=FORMAT_VERSION))


def end(records: list[Record]) -> Record:
    return end_record(Counter(record.WhichOneof("record") or "" for record in records))


def stream(*records: Record) -> list[Record]:
    return [header(), *records, end(list(records))]


def event(
    aggregate_id: str,
    version: int,
    message: Message | None = None,
    *,
    aggregate_type: str = "Account",
    schema_version: int = 1,
    user_id: str = "tester",
    metadata: dict[str, str] | None = None,
) -> Record:
    message = message or (bank.AccountOpened(owner="ann") if version == 1 else bank.MoneyDeposited(amount=5))
    return exported_event(
        RecordedEvent(
            event_id=str(uuid.uuid4()),
            aggregate_id=aggregate_id,
            aggregate_type=aggregate_type,
            version=version,
            position=version,
            event_type=message.DESCRIPTOR.full_name,
            schema_version=schema_version,
            payload=message.SerializeToString(),
            timestamp_us=time.time_ns() // 1000,
            command_id="",
            user_id=user_id,
            origin="tests",
            correlation_id="",
            causation_id="",
            metadata=metadata or {},
        )
    )


def snapshot(
    aggregate_id: str,
    version: int,
    state: bytes | None = None,
    *,
    aggregate_type: str = "Account",
    state_type: str = account.snapshot_state_type,
) -> Record:
    state = bank.Account(owner="ann", balance=1_000).SerializeToString() if state is None else state
    return exported_snapshot(Snapshot(aggregate_id, aggregate_type, version, state_type, 1, state))


def with_fields(record: Record, change: Callable[[Record], None]) -> Record:
    changed = Record()
    changed.CopyFrom(record)
    change(changed)
    return changed


async def refused(client: Client, records: list[Record]) -> tuple[grpc.StatusCode, str, dict[str, str], list[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await imported(client, records)
    details = details_of(error.value)
    return details.code, details.reason, details.metadata, details.field_violations


async def state_of(client: Client, aggregate_id: str) -> ev.GetAggregateResponse:
    response: ev.GetAggregateResponse = await client.events.GetAggregate(
        ev.GetAggregateRequest(aggregate_id=aggregate_id)
    )
    return response


# -- 1. a snapshot must be at a version its aggregate has, and of its type ---------------


async def test_a_snapshot_ahead_of_its_events_is_refused_and_the_aggregate_stays_usable(
    client: Client, store: StoreAdapter
) -> None:
    code, reason, metadata, _ = await refused(client, stream(event("acc-1", 1), snapshot("acc-1", 99)))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SNAPSHOT_AHEAD")
    assert metadata["record"] == "2" and metadata["aggregate_id"] == "acc-1"
    assert await store.load_snapshot("acc-1") is None
    assert (await state_of(client, "acc-1")).version == 1  # the events' batch came before
    result = await client.submit(command("acc-1", bank.Deposit(amount=10)))
    assert [e.version for e in result.events] == [2]


async def test_a_snapshot_of_an_aggregate_without_events_is_refused(client: Client, store: StoreAdapter) -> None:
    code, reason, metadata, _ = await refused(client, stream(snapshot("acc-9", 1)))
    assert (code, reason, metadata["record"]) == (grpc.StatusCode.FAILED_PRECONDITION, "SNAPSHOT_AHEAD", "1")
    assert await store.load_snapshot("acc-9") is None


async def test_a_refused_snapshot_batch_writes_none_of_its_snapshots(client: Client, store: StoreAdapter) -> None:
    records = stream(event("acc-1", 1), event("acc-1", 2), snapshot("acc-1", 1), snapshot("acc-1", 3))
    code, reason, metadata, _ = await refused(client, records)
    assert (code, reason, metadata["record"]) == (grpc.StatusCode.FAILED_PRECONDITION, "SNAPSHOT_AHEAD", "4")
    assert await store.load_snapshot("acc-1") is None  # not even the good one at version 1


async def test_a_snapshot_of_another_aggregate_type_is_refused(client: Client, store: StoreAdapter) -> None:
    records = stream(event("acc-1", 1), snapshot("acc-1", 1, aggregate_type="Box", state_type="box.v1.Box"))
    code, reason, metadata, _ = await refused(client, records)
    assert (code, reason, metadata["record"]) == (grpc.StatusCode.FAILED_PRECONDITION, "AGGREGATE_TYPE_MISMATCH", "2")
    assert await store.load_snapshot("acc-1") is None
    assert (await state_of(client, "acc-1")).aggregate_type == "Account"


async def test_a_snapshot_at_a_version_the_aggregate_has_is_imported(client: Client, store: StoreAdapter) -> None:
    response = await imported(client, stream(event("acc-1", 1), event("acc-1", 2), snapshot("acc-1", 2)))
    assert response.snapshots_written == 1
    state = await state_of(client, "acc-1")
    assert state.version == 2


# -- 2. a snapshot's state must parse; one that does not is skipped on load ----------------


async def test_a_snapshot_whose_state_does_not_parse_is_refused(client: Client, store: StoreAdapter) -> None:
    records = stream(event("acc-1", 1), snapshot("acc-1", 1, b"\x0a\x05ab"))
    code, reason, _, fields = await refused(client, records)
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_RECORD")
    assert fields == ["record[2].snapshot.state"]
    assert await store.load_snapshot("acc-1") is None


async def test_a_stale_snapshot_of_another_state_type_is_kept_and_ignored(client: Client, store: StoreAdapter) -> None:
    """A snapshot of an older state message (the plugin's state changed) is
    one the loader ignores, as it ignores it in the store it came from."""
    old_state = bank.Transfer(reason="x" * 3).SerializeToString()
    records = stream(event("acc-1", 1), snapshot("acc-1", 1, old_state, state_type="bank.v1.OldAccount"))
    assert (await imported(client, records)).snapshots_written == 1
    state = await state_of(client, "acc-1")
    assert state.version == 1
    await client.submit(command("acc-1", bank.Deposit(amount=10)))


async def test_a_stored_snapshot_that_does_not_parse_is_skipped_and_the_state_rebuilt(
    client: Client, store: StoreAdapter
) -> None:
    """As if written before imports checked it: the aggregate still loads,
    from its events, on every store (PostgreSQL loads snapshot and events in
    one round trip)."""
    await store.save_snapshot(Snapshot("acc-2", "Account", 1, account.snapshot_state_type, 1, b"\x0a\x05ab"))
    await client.submit(command("acc-2", bank.OpenAccount(owner="bob")))  # a new worker: loads it
    state = await state_of(client, "acc-2")
    assert state.version == 1
    unpacked = bank.Account()
    assert state.state.Unpack(unpacked) and unpacked.owner == "bob"
    result = await client.submit(command("acc-2", bank.Deposit(amount=7)))
    assert [e.version for e in result.events] == [2]


# -- 3. an event must be of its aggregate's type --------------------------------------------


async def test_an_event_of_another_type_than_its_aggregates_earlier_events_is_refused(
    client: Client, store: StoreAdapter
) -> None:
    # An event the plugins read (a box's), of another type than acc-1's first.
    records = stream(event("acc-1", 1), event("acc-1", 2, box.BoxRenamed(name="b"), aggregate_type="Box"))
    code, reason, metadata, _ = await refused(client, records)
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "AGGREGATE_TYPE_MISMATCH")
    assert (metadata["record"], metadata["version"]) == ("2", "2")
    assert await store.head("acc-1") is None  # nothing of the batch


async def test_an_event_of_another_type_than_the_stored_aggregate_is_refused(
    client: Client, store: StoreAdapter
) -> None:
    await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    renamed = event("acc-1", 2, box.BoxRenamed(name="b"), aggregate_type="Box")
    code, reason, metadata, _ = await refused(client, stream(renamed))
    assert (code, reason, metadata["record"]) == (grpc.StatusCode.FAILED_PRECONDITION, "AGGREGATE_TYPE_MISMATCH", "1")
    assert (await state_of(client, "acc-1")).version == 1
    await client.submit(command("acc-1", bank.Deposit(amount=10)))


# -- 4. schema versions begin at 1 ----------------------------------------------------------


async def test_an_event_of_schema_version_0_is_refused(client: Client, store: StoreAdapter) -> None:
    code, reason, _, fields = await refused(client, stream(event("acc-1", 1, schema_version=0)))
    assert (code, reason, fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "BAD_RECORD",
        ["record[1].event.event.schema_version"],
    )
    assert await store.head("acc-1") is None


# -- 5. ids and texts as a command's ----------------------------------------------------------


def _command(**fields: object) -> Record:
    record = exported_command(command_record("acc-1", 1, 1))
    for name, value in fields.items():
        setattr(record.command, name, value)
    return record


BAD_RECORDS = {
    "control character in an aggregate id": (event("acc\x07", 1), "record[1].event.event.aggregate_id"),
    "aggregate id of 5,000 characters": (event("a" * 5000, 1), "record[1].event.event.aggregate_id"),
    "NUL in a user id": (event("acc-1", 1, user_id="ann\x00"), "record[1].event.event.user_id"),
    "NUL in a metadata value": (event("acc-1", 1, metadata={"k": "v\x00"}), "record[1].event.event.metadata['k']"),
    "control character in an aggregate type": (
        event("acc-1", 1, aggregate_type="Acc\nount"),
        "record[1].event.event.aggregate_type",
    ),
    "snapshot of an aggregate id of 5,000 characters": (snapshot("a" * 5000, 1), "record[1].snapshot.aggregate_id"),
    "command id not a UUID": (_command(command_id="not-a-uuid"), "record[1].command.command_id"),
    "command of first version 0": (_command(first_version=0, last_version=0), "record[1].command.first_version"),
    "command of first version after last + 1": (
        _command(first_version=3, last_version=1),
        "record[1].command.first_version",
    ),
    "command for an aggregate id with a NUL": (_command(aggregate_id="acc\x00"), "record[1].command.aggregate_id"),
    "NUL in a command's principal": (_command(principal="root\x00"), "record[1].command.principal"),
    "NUL in a claimed value": (
        Record(claim=export_pb2.ExportedClaim(scope="users.email", value="a\x00@x", aggregate_id="u-1")),
        "record[1].claim.value",
    ),
}


@pytest.mark.parametrize("case", list(BAD_RECORDS))
async def test_ids_and_texts_a_command_could_not_carry_are_refused(
    client: Client, store: StoreAdapter, case: str
) -> None:
    record, field = BAD_RECORDS[case]
    code, reason, _, fields = await refused(client, stream(record))
    assert (code, reason, fields) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_RECORD", [field])
    for aggregate_id in ("acc\x07", "a" * 5000, "acc-1", "u-1"):
        assert await store.head(aggregate_id) is None
    if record.HasField("command") and record.command.command_id != "not-a-uuid":
        assert await store.find_command(record.command.command_id) is None


async def test_a_command_that_appended_nothing_is_imported(client: Client, store: StoreAdapter) -> None:
    """first_version = last_version + 1: the store's form of a command that
    appended nothing (refused, or a no-op)."""
    record = _command(first_version=2, last_version=1)
    response = await imported(client, stream(event("acc-1", 1), record))
    assert response.commands_written == 1
