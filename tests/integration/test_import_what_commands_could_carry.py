"""An import refuses what a command could not have carried
(docs/export-format.md), as a bad record naming it (INVALID_ARGUMENT,
BAD_RECORD), before writing the record's batch, through a real server and
through ``chronicle import --database-url``, on SQLite and PostgreSQL:

- an event larger than the server's --max-event-bytes (a KurrentDB event
  may be 16 MiB): written, it made every page holding it unsendable;
- two events with one event id (KurrentDB keeps ids unique per stream
  only): SQLite's IntegrityError traceback, INTERNAL through a server, and
  on PostgreSQL ABORTED IMPORT_RACED, retry advice that never helps;
- metadata keys under the reserved ``chronicle.`` prefix (INVALID_METADATA,
  as a command's), but the server's own as a Chronicle export carries them:
  taken before, and a stream's ``chronicle.imported`` rewritten.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import export_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.store.base import StoreAdapter
from service.store.records import RecordedEvent
from service.transfer.exporter import FORMAT, FORMAT_VERSION
from service.transfer.importer import BATCH
from service.transfer.records import end_record, exported_event
from tests.support.grpc_client import details_of, running_server
from tests.support.import_claims import chronicle, empty_store
from tests.support.postgres import Cluster
from tests.support.stores import STORES, store_site
from tests.support.transfer import imported

Record = export_pb2.ExportRecord
MIB = 1024 * 1024


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreAdapter]:
    async with STORES[request.param](store_site(request, tmp_path)) as opened:
        yield opened


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def target_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    cluster: Cluster | None = request.getfixturevalue("pg_cluster") if request.param == "postgresql" else None
    with empty_store(request.param, cluster, tmp_path) as url:  # type: ignore[arg-type]
        yield url


def opened(
    aggregate_id: str, *, owner: str = "ann", event_id: str | None = None, metadata: dict[str, str] | None = None
) -> Record:
    return exported_event(
        RecordedEvent(
            event_id=event_id or str(uuid.uuid4()),
            aggregate_id=aggregate_id,
            aggregate_type="Account",
            version=1,
            position=0,
            event_type="bank.v1.AccountOpened",
            schema_version=1,
            payload=bank.AccountOpened(owner=owner).SerializeToString(),
            timestamp_us=time.time_ns() // 1000,
            command_id="",
            user_id="legacy",
            origin="kurrentdb",
            correlation_id="",
            causation_id="",
            metadata=metadata or {},
        )
    )


def stream(*records: Record) -> list[Record]:
    header = Record(header=export_pb2.ExportHeader(format=FORMAT, format_version=FORMAT_VERSION))
    return [header, *records, end_record(Counter(record.WhichOneof("record") or "" for record in records))]


def jsonl(path: Path, *events: tuple[str, str, str]) -> Path:
    """A JSON-lines export of AccountOpened events: (event id, aggregate, owner) each."""
    lines = [{"header": {"format": FORMAT, "format_version": FORMAT_VERSION, "exported_at": "2026-01-01T00:00:00Z"}}]
    for event_id, aggregate_id, owner in events:
        lines.append(
            {
                "event": {
                    "event": {
                        "event_id": event_id,
                        "aggregate_id": aggregate_id,
                        "aggregate_type": "Account",
                        "version": "1",
                        "timestamp": "2023-01-01T10:00:00Z",
                        "event_type": "bank.v1.AccountOpened",
                        "schema_version": 1,
                        "payload": {"@type": "type.googleapis.com/bank.v1.AccountOpened", "owner": owner},
                    }
                }
            }
        )
    lines.append({"end": {"events": str(len(events))}})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


async def refused(client_call: object) -> tuple[grpc.StatusCode, str, dict[str, str], str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client_call  # type: ignore[misc]
    details = details_of(caught.value)
    return details.code, details.reason, details.metadata, details.message


# -- an event larger than a command's -------------------------------------------------


async def test_an_event_over_the_servers_max_event_bytes_is_a_bad_record_and_nothing_of_its_batch_is_written(
    store: StoreAdapter,
) -> None:
    """The walkthrough's 1.5 MiB event over a server's 1 MiB limit: accepted
    before, then every read of a page holding it failed."""
    big = opened("big-1", owner="x" * (3 * MIB // 2))
    async with running_server(store, anonymous_admin=True) as (_, client):
        code, reason, metadata, message = await refused(imported(client, stream(opened("small-1"), big)))
        assert await store.head("big-1") is None and await store.head("small-1") is None  # its batch, whole
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_RECORD")
    assert metadata["record"] == "2" and metadata["event_id"] == big.event.event.event_id
    assert int(metadata["size"]) > 3 * MIB // 2 and metadata["max_event_bytes"] == str(MIB)
    assert message.startswith("record[2]: ") and "--max-event-bytes" in message, message


async def test_an_event_within_a_larger_max_event_bytes_is_imported(store: StoreAdapter) -> None:
    big = opened("big-1", owner="x" * (3 * MIB // 2))
    async with running_server(store, anonymous_admin=True, max_event_bytes=2 * MIB, max_message_bytes=8 * MIB) as (
        _,
        client,
    ):
        response = await imported(client, stream(big))
    assert response.events_written == 1


def test_import_database_url_holds_events_to_max_event_bytes(target_url: str, tmp_path: Path) -> None:
    """``--database-url``: the servers' default limit (or the flag's, or
    CHRONICLE_MAX_EVENT_BYTES); the walkthrough's 5 MiB event was written."""
    export = jsonl(tmp_path / "big.jsonl", (str(uuid.uuid4()), "big-1", "x" * (MIB + MIB // 4)))
    done = chronicle("import", str(export), "--quiet", "--database-url", target_url, check=False)
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert "BAD_RECORD" in done.stderr and "record[1]:" in done.stderr, done.stderr
    assert f"limited to {MIB} bytes" in done.stderr and "Traceback" not in done.stderr, done.stderr
    env = {"CHRONICLE_MAX_EVENT_BYTES": str(MIB // 2)}
    done = chronicle("import", str(export), "--quiet", "--database-url", target_url, check=False, env=env)
    assert f"limited to {MIB // 2} bytes" in done.stderr, done.stderr  # the servers' setting, from the environment
    done = chronicle("import", str(export), "--quiet", "--database-url", target_url, "--max-event-bytes", str(2 * MIB))
    assert json.loads(done.stdout)["events_written"] == 1


# -- two events with one id -----------------------------------------------------------


async def test_two_events_with_one_id_are_a_bad_record_naming_both(store: StoreAdapter) -> None:
    event_id = str(uuid.uuid4())
    first, second = opened("account-k1", event_id=event_id), opened("user-k1", event_id=event_id)
    async with running_server(store, anonymous_admin=True) as (_, client):
        for overwrite in (False, True):
            code, reason, metadata, message = await refused(
                imported(client, stream(first, opened("account-k2"), second), overwrite=overwrite)
            )
            assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_RECORD"), message
            assert metadata == {
                "record": "3",
                "event_id": event_id,
                "aggregate_id": "user-k1",
                "version": "1",
                "other_record": "1",
                "other_aggregate_id": "account-k1",
                "other_version": "1",
            }
            assert "two events with event id" in message, message
        assert await store.head("account-k1") is None and await store.head("account-k2") is None


async def test_the_second_of_two_events_with_one_id_in_another_batch_is_event_id_taken(store: StoreAdapter) -> None:
    """The first is in the target by then: the store finds its id held."""
    event_id = str(uuid.uuid4())
    fillers = [opened(f"filler-{n}") for n in range(BATCH)]
    records = stream(opened("account-k1", event_id=event_id), *fillers, opened("user-k1", event_id=event_id))
    async with running_server(store, anonymous_admin=True) as (_, client):
        code, reason, metadata, message = await refused(imported(client, records))
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "EVENT_ID_TAKEN"), message
        assert (metadata["record"], metadata["aggregate_id"]) == (str(BATCH + 2), "user-k1")
        assert await store.head("account-k1") is not None and await store.head("user-k1") is None


def test_import_database_url_of_two_events_with_one_id_is_a_bad_record(target_url: str, tmp_path: Path) -> None:
    event_id = str(uuid.uuid4())
    export = jsonl(tmp_path / "dup.jsonl", (event_id, "account-k1", "ann"), (event_id, "user-k1", "bob"))
    done = chronicle("import", str(export), "--quiet", "--database-url", target_url, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: BAD_RECORD: record[2]: the import holds two events with event id"), (
        done.stderr
    )
    assert "record[1] (aggregate 'account-k1', version 1)" in done.stderr, done.stderr


# -- metadata keys the server reserves ------------------------------------------------


async def test_reserved_metadata_keys_are_invalid_metadata_but_a_chronicle_exports_own_are_taken(
    store: StoreAdapter,
) -> None:
    async with running_server(store, anonymous_admin=True) as (_, client):
        for metadata in (
            {"chronicle.imported": "false"},
            {"Chronicle.Imported": "true"},
            {"chronicle.correlation": "x"},
            {"chronicle.reaction_hops": "-1"},
        ):
            code, reason, _, message = await refused(
                imported(client, stream(opened("ok-1"), opened("meta-1", metadata=metadata)))
            )
            assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_METADATA"), message
            key = next(iter(metadata))
            assert message.startswith(f"record[2].event.event.metadata[{key!r}]: is reserved"), message
            assert await store.head("meta-1") is None and await store.head("ok-1") is None

        # What a Chronicle export carries: an event a reaction's command wrote, imported once already.
        own = {"chronicle.imported": "true", "chronicle.reaction_hops": "2", "$correlationId": "c-1"}
        assert (await imported(client, stream(opened("meta-2", metadata=own)))).events_written == 1
        (held,) = await store.read_aggregate("meta-2")
        assert held.metadata == own
