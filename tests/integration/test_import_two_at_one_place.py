"""Two events of one import at one aggregate and version (docs/migration.md:
ids are global across aggregate types): a converter that maps KurrentDB's
``account-k1`` and ``user-k1`` both to ``k1`` makes a stream no target can
take. ImportLog refuses it as a bad record (INVALID_ARGUMENT, BAD_RECORD)
naming both events, with or without overwriting, whether the two are in one
batch or the first was written in an earlier batch (which overwriting must
not replace with the second); nothing of the refused batch is written. An
event of another aggregate type already in the target from an earlier
import is AGGREGATE_NOT_EMPTY, as before, and the refusal says what met."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message

from chronicle.v1 import export_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.users.protos.users.v1 import users_pb2 as users
from service.store.base import StoreAdapter
from service.store.records import RecordedEvent
from service.transfer.exporter import FORMAT, FORMAT_VERSION
from service.transfer.importer import BATCH
from service.transfer.records import end_record, exported_event
from tests.support.grpc_client import Client, details_of, running_server
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


def event(aggregate_id: str, version: int, message: Message, aggregate_type: str) -> Record:
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
            metadata={},
        )
    )


def account(aggregate_id: str, version: int = 1) -> Record:
    message = bank.AccountOpened(owner="ann") if version == 1 else bank.MoneyDeposited(amount=5)
    return event(aggregate_id, version, message, "Account")


def user(aggregate_id: str) -> Record:
    return event(aggregate_id, 1, users.UserRegistered(email=f"{aggregate_id}@example.com", name="Ann"), "User")


def stream(*records: Record) -> list[Record]:
    header = Record(header=export_pb2.ExportHeader(format=FORMAT, format_version=FORMAT_VERSION))
    return [header, *records, end_record(Counter(record.WhichOneof("record") or "" for record in records))]


async def refusal(
    client: Client, records: list[Record], *, overwrite: bool = False
) -> tuple[grpc.StatusCode, str, dict[str, str], list[str], str]:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await imported(client, records, overwrite=overwrite)
    details = details_of(refused.value)
    return details.code, details.reason, details.metadata, details.field_violations, details.message


@pytest.mark.parametrize("overwrite", [False, True])
async def test_two_events_at_one_place_in_one_batch_are_a_bad_record_naming_both(
    client: Client, store: StoreAdapter, overwrite: bool
) -> None:
    """The walkthrough's kA.jsonl: an account's two events, then a user's
    first at the same id. Before: AGGREGATE_NOT_EMPTY, "import with
    overwriting to replace them", and the same with overwriting."""
    first, second = account("k1"), user("k1")
    code, reason, metadata, fields, message = await refusal(
        client, stream(first, account("k1", 2), second), overwrite=overwrite
    )
    assert (code, reason, fields) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_RECORD", ["record[3].event.event.version"])
    assert metadata == {
        "record": "3",
        "event_id": second.event.event.event_id,
        "aggregate_id": "k1",
        "version": "1",
        "other_event_id": first.event.event.event_id,
        "other_record": "1",
    }
    assert "an aggregate id names one aggregate across all aggregate types" in message
    assert "(of aggregate type Account, bank.v1.AccountOpened, then of User, users.v1.UserRegistered)" in message
    assert await store.head("k1") is None  # nothing of the batch


@pytest.mark.parametrize("overwrite", [False, True])
async def test_an_event_at_the_place_of_one_this_import_wrote_in_an_earlier_batch_is_a_bad_record(
    client: Client, store: StoreAdapter, overwrite: bool
) -> None:
    """The account's event is written with the first batch; the user's, a
    batch later, is refused, and does not replace it even when overwriting."""
    first, second = account("k1"), user("k1")
    fillers = [account(f"filler-{n}") for n in range(BATCH)]
    code, reason, metadata, _, _ = await refusal(client, stream(first, *fillers, second), overwrite=overwrite)
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_RECORD")
    assert (metadata["record"], metadata["event_id"]) == (str(BATCH + 2), second.event.event.event_id)
    assert metadata["other_event_id"] == first.event.event.event_id
    (held,) = await store.read_aggregate("k1")
    assert held.event_id == first.event.event.event_id  # the first batch's, kept
    # The first batch (k1 and 499 fillers) stays written; nothing of the refused one.
    assert await store.head(f"filler-{BATCH - 2}") is not None
    assert await store.head(f"filler-{BATCH - 1}") is None


async def test_another_types_event_from_an_earlier_import_is_aggregate_not_empty_saying_so(
    client: Client, store: StoreAdapter
) -> None:
    """Two imports (kA.jsonl, then kB.jsonl): the target's k1 is not the
    stream's; overwriting would replace it, as it replaces any aggregate."""
    await imported(client, stream(account("k1")))
    code, reason, metadata, _, message = await refusal(client, stream(user("k1")))
    assert (code, reason, metadata["aggregate_id"]) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "AGGREGATE_NOT_EMPTY",
        "k1",
    )
    assert "is of aggregate type Account (bank.v1.AccountOpened), the import's of User" in message
    assert "an aggregate id names one aggregate across all aggregate types" in message
