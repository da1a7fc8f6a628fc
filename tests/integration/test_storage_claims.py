"""docs/export-format.md, docs/migration.md and docs/stores.md, claim by
claim, where no other test asserted the claim: servers on the memory store
(SQLite and PostgreSQL where the claim is theirs), exports and imports over
real sockets, the command line in-process, the store contract's pytest
plugin in a pytest of its own.

- an export's header (format, version, when it began, the log head it
  began at, the kind of store, what it holds), then each kind of record in
  the table's order (no data keys without encryption at rest; every event
  in log order with its source position), and the end counting them; an
  export holds exactly the events up to its log head, however many are
  appended while it runs;
- with encryption at rest an export holds no personal data in the clear,
  and what it moves reads only where the same master keys are configured;
- JSON lines: field names as in the proto, 64-bit integers as strings, a
  sealed payload in base64; ``chronicle export -`` writes the records to
  standard output and its summary to standard error, with the payloads of
  the plugins beside the command line as JSON; a file by the name given is
  always a whole export (one that fails leaves the last whole one, and no
  ``.partial``); a plain progress line every two seconds;
- an import writes batches of one kind, closed at 500 records or 4 MiB;
  VERSION_GAP, EVENT_ID_TAKEN, CLAIM_HELD and DATA_KEY_CONFLICT are
  FAILED_PRECONDITION and name the record; BAD_RECORD for what the list
  names (an event id that is not a UUID, a version of 0, a time out of
  range, an id of only spaces or of 201 characters, a metadata key of 129,
  a control character in a short text or a master key id);
- overwriting replaces an aggregate's events, snapshots and claims and
  keeps its command records, also where the target's history parts from
  the stream's after their first events (on every store; refused
  AGGREGATE_NOT_EMPTY before the fix), and keeps a target's history that
  goes on from the stream's; restoring replaces only deleted aggregates;
- the audit of commands travels with their records, the audit's own
  entries (refusals before a handler, administrators' actions) stay where
  they were written (migration.md too);
- a deleted aggregate keeps its data key under encryption at rest, and its
  archive restores it readable; ``chronicle archive`` names its file
  ``archive-<type>-<time>.chronicle`` and takes at most 100 by default;
- converting from the ``eventsourcing`` library: a mapping may name the
  aggregate and the time, ``domain_event()`` rebuilds the library's event,
  a state that does not decode is UNDECODABLE_EVENT;
- stores: the three built-in schemes, and the kind each export's header
  names; the contract's pytest plugin gives each test a fresh store where
  ``{tmp}`` stands, and takes a ``contents`` fixture from a plugin of one's
  own; PostgreSQL's JSON copy of payloads is never read (the bytes are the
  truth) and has no index.

Where a test waits, it waits for an outcome (``eventually``); the bounds
only make a broken build fail rather than hang."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import export_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.users.protos.users.v1 import users_pb2 as users
from service import cli
from service.app import build_registry
from service.progress import PLAIN_INTERVAL, Reporter
from service.store.base import Store, StoreAdapter
from service.store.encryption import MasterKeys, new_master_key
from service.store.factory import open_store, store_kind
from service.store.memory import MemoryStore
from service.store.postgres import PostgresStore
from service.store.records import DataKey, HeldClaim, LogFilter, RecordedEvent
from service.store.sqlite import SqliteStore
from service.transfer import stream
from service.transfer.exporter import Exporter, ExportSelection
from service.transfer.importer import Importer
from service.transfer.records import end_record, exported_claim, exported_data_key, exported_event
from service.transfer.restoring import only_aggregates
from tests.support.events import account_event, new_event, recorded_event
from tests.support.grpc_client import TEST_SETTINGS, Client, asking_again_if_lost, command, details_of, running_server
from tests.support.stores import STORES, store_site
from tests.support.transfer import exported, imported, kinds
from tests.support.waiting import eventually

NAME = "Ysolde Pemberton-Achterberg"
EMAIL = "ysolde@pemberton.example"
Record = export_pb2.ExportRecord


def runs(names: Iterable[str]) -> list[str]:
    """``names`` with each run of one name told once: the order of the kinds."""
    out: list[str] = []
    for name in names:
        if not out or out[-1] != name:
            out.append(name)
    return out


async def log_of(store: StoreAdapter) -> list[RecordedEvent]:
    return list((await store.read_log(0, LogFilter(), 10_000)).events)


async def snapshot_at(store: StoreAdapter, aggregate_id: str, version: int) -> bool:
    found = await store.load_snapshot(aggregate_id)
    return found is not None and found.version == version


Refusal = tuple[grpc.StatusCode, str, dict[str, str], list[str]]  # code, reason, metadata, fields at fault


async def refusal(call: Any) -> Refusal:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    details = details_of(error.value)
    return details.code, details.reason, details.metadata, details.field_violations


async def refused_import(client: Client, records: list[Record], **options: bool) -> Refusal:
    async def attempt() -> None:
        await imported(client, records, **options)

    return await refusal(asking_again_if_lost(attempt))


def whole(*records: Record) -> list[Record]:
    """A stream of ``records``: a header before them, the end counting them."""
    header = Record(header=export_pb2.ExportHeader(format="chronicle.export", format_version=1))
    return [header, *records, end_record(Counter(r.WhichOneof("record") or "" for r in records))]


# -- what an export holds --------------------------------------------------------------


async def test_an_export_is_its_header_then_each_kind_of_record_in_order_then_the_end_counting_them() -> None:
    store = MemoryStore()
    async with running_server(store, anonymous_admin=True, snapshot_every=1) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        await client.submit(command("u-1", users.RegisterUser(email=EMAIL, name=NAME)))
        await client.submit(command("acc-1", bank.Deposit(amount=5)))
        await client.submit(command("u-1", users.ChangeEmail(email="ysolde@elsewhere.example")))
        with pytest.raises(grpc.aio.AioRpcError):
            await client.submit(command("acc-1", bank.Withdraw(amount=1_000)))
        await eventually(lambda: snapshot_at(store, "u-1", 2), what="u-1's snapshots")  # the bank's: every 100
        head = await store.log_head()
        positions = [e.position for e in await log_of(store)]
        began = time.time_ns() // 1000
        records = await exported(client, include_snapshots=True, include_commands=True)
        ended = time.time_ns() // 1000
        bare = await exported(client)

    header = records[0].header
    assert (header.format, header.format_version, header.source) == ("chronicle.export", 1, "memory")
    assert began <= header.exported_at.ToMicroseconds() <= ended
    assert header.log_head == head == positions[-1]
    assert (header.snapshots, header.commands, list(header.aggregate_ids)) == (True, True, [])
    # No data keys without encryption at rest; the rest in the table's order.
    assert runs(kinds(records)) == ["header", "event", "snapshot", "claim", "command", "end"]
    # Every event, in log order, with its position in the store it came from.
    assert [r.event.event.position for r in records if r.HasField("event")] == positions
    assert [(r.snapshot.aggregate_id, r.snapshot.version) for r in records if r.HasField("snapshot")] == [
        ("u-1", 1),
        ("u-1", 2),
    ]
    assert records[-1] == end_record(Counter(kinds(records[1:-1])))
    assert records[-1].end.commands == 5  # four accepted, one refused
    # Without --snapshots and --commands: neither, and the header says so.
    assert (bare[0].header.snapshots, bare[0].header.commands) == (False, False)
    assert runs(kinds(bare)) == ["header", "event", "claim", "end"]


async def test_an_export_holds_exactly_the_events_up_to_the_log_head_it_began_at() -> None:
    store = MemoryStore()
    for n in range(3):
        await store.append(f"a-{n}", [new_event()], 0)
    records = Exporter(Store.of(store), source="memory").records(ExportSelection())
    header = await anext(records)
    for n in range(3):  # appended while the export runs, before it reads the log
        await store.append(f"a-{n}", [new_event()], 1)
    rest = [record async for record in records]
    assert header.header.log_head == 3
    events = [r.event.event for r in rest if r.HasField("event")]
    assert [(e.aggregate_id, e.version, e.position) for e in events] == [("a-0", 1, 1), ("a-1", 1, 2), ("a-2", 1, 3)]
    assert rest[-1].end.events == 3


async def test_under_encryption_at_rest_an_export_holds_nothing_in_the_clear_and_reads_only_with_the_same_keys() -> (
    None
):
    keys = f"k1:{new_master_key()}"
    source = MemoryStore()
    registered = command("u-1", users.RegisterUser(email=EMAIL, name=NAME))
    async with running_server(source, anonymous_admin=True, master_keys=keys, snapshot_every=1) as (_, client):
        await client.submit(registered)
        await eventually(lambda: snapshot_at(source, "u-1", 1), what="u-1's snapshot")
        records = await exported(client, include_snapshots=True, include_commands=True)
    everything = b"".join(r.SerializeToString() for r in records)
    assert NAME.encode() not in everything and EMAIL.encode() not in everything
    (event,) = [r.event for r in records if r.HasField("event")]
    assert event.sealed_payload and not event.event.HasField("payload")
    (claim,) = [r.claim for r in records if r.HasField("claim")]
    assert claim.value != EMAIL  # a keyed hash
    data_keys = [r.data_key for r in records if r.HasField("data_key")]
    assert "u-1" in {k.aggregate_id for k in data_keys}
    assert all(k.master_key_id == "k1" and k.wrapped_key and not k.forgotten for k in data_keys)

    # Where other master keys are configured, the import is refused before
    # anything is written (the data keys come first): it would be unreadable
    # there. (Before, it was written, and every read failed MASTER_KEY_MISSING.)
    other_keys = f"k2:{new_master_key()}"
    elsewhere = MemoryStore()
    async with running_server(elsewhere, anonymous_admin=True, master_keys=other_keys) as (_, client):
        code, reason, metadata, _ = await refused_import(client, records)
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "MASTER_KEY_MISSING")
        assert (metadata["record"], metadata["master_key_id"]) == ("1", "k1")
        assert await log_of(elsewhere) == [] and await elsewhere.data_keys_page("", 10) == []

    async with running_server(MemoryStore(), anonymous_admin=True, master_keys=keys) as (_, client):
        await imported(client, records)
        state = await client.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="u-1"))
        user = users.User()
        assert state.state.Unpack(user) and (user.email, user.name) == (EMAIL, NAME)
        # The command's sealed fingerprint opens here: a retry is answered, not run again.
        assert (await client.submit(registered)).replayed


# -- files: JSON lines, standard output, whole files, progress ------------------------------


def test_json_lines_name_fields_as_the_proto_does_with_64_bit_integers_as_strings_and_sealed_payloads_in_base64() -> (
    None
):
    sealed = b"\x00C1" + bytes(range(40))
    records = [
        exported_event(replace(recorded_event("acc-1", 7, payload=sealed), position=2**40)),
        exported_event(recorded_event("acc-1", 8, event_type="other.v1.Unknown", payload=b"\x00\xff")),
    ]
    header = Record(header=export_pb2.ExportHeader(format="chronicle.export", format_version=1))
    out = io.BytesIO()
    writer = stream.Writer(out, stream.JSON_LINES)
    for record in (header, *records):
        writer.write(record)
    _, first, second = (json.loads(line) for line in out.getvalue().decode().splitlines())
    envelope = first["event"]["event"]
    assert (envelope["aggregate_id"], envelope["version"], envelope["position"]) == ("acc-1", "7", str(2**40))
    assert "payload" not in envelope
    assert base64.b64decode(first["event"]["sealed_payload"]) == sealed
    assert second["event"]["event"]["payload"] == {
        "@type": "type.googleapis.com/other.v1.Unknown",
        "@base64": base64.b64encode(b"\x00\xff").decode(),
    }
    assert list(stream.read(io.BufferedReader(io.BytesIO(out.getvalue())))) == [header, *records]


async def filled_sqlite(path: Path) -> str:
    """A SQLite file a server wrote (an account with two events), the server
    stopped: its URL."""
    async with running_server(SqliteStore(path)) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        await client.submit(command("acc-1", bank.Deposit(amount=70)))
    return f"sqlite:///{path}"


async def test_export_to_standard_output_puts_its_summary_on_standard_error_and_the_plugins_payloads_as_json(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    url = await filled_sqlite(tmp_path / "events.db")
    argv = ["export", "-", "--format", "jsonl", "--quiet", "--database-url", url]
    assert await asyncio.to_thread(cli.main, argv) == 0
    out, err = capsysbinary.readouterr()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert [next(iter(line)) for line in lines] == ["header", "event", "event", "end"]
    # The plugins installed beside the command line know the payloads: JSON, not bytes.
    assert lines[2]["event"]["event"]["payload"] == {
        "@type": "type.googleapis.com/bank.v1.MoneyDeposited",
        "amount": "70",
    }
    assert json.loads(err) == {"file": "-", "format": "jsonl", "events": 2}


class DiskGone(Exception):
    pass


async def test_a_file_by_the_name_given_is_always_a_whole_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = await filled_sqlite(tmp_path / "events.db")
    target = tmp_path / "backup.chronicle"
    argv = ["export", str(target), "--quiet", "--database-url", url]
    assert await asyncio.to_thread(cli.main, argv) == 0
    written = target.read_bytes()
    assert kinds(stream.read(io.BufferedReader(io.BytesIO(written)))) == ["header", "event", "event", "end"]

    exporting = Exporter.records

    async def failing(self: Exporter, selection: ExportSelection) -> AsyncIterator[Record]:
        async for record in exporting(self, selection):
            if record.HasField("end"):
                raise DiskGone("the disk went away")
            yield record

    monkeypatch.setattr(Exporter, "records", failing)
    with pytest.raises(DiskGone):
        await asyncio.to_thread(cli.main, argv)
    assert target.read_bytes() == written  # the last whole export, not what the failed one began
    assert sorted(name for name in os.listdir(tmp_path) if name.startswith("backup")) == ["backup.chronicle"]


def test_without_a_terminal_progress_is_a_plain_line_every_two_seconds_and_quiet_says_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Clock:
        now = 100.0

        def monotonic(self) -> float:
            return self.now

    clock = Clock()
    monkeypatch.setattr("service.progress.time", clock)
    assert PLAIN_INTERVAL == 2.0
    out, quiet = io.StringIO(), io.StringIO()
    shown = Reporter("export", total=1000, unit="positions", stream=out)
    silent = Reporter("export", total=1000, unit="positions", stream=quiet, quiet=True)
    for at, done in ((1.9, 100), (2.0, 200), (3.9, 300), (4.0, 400)):
        clock.now = 100.0 + at
        shown.update(done)
        silent.update(done)
    shown.close("done")
    silent.close("done")
    lines = out.getvalue().splitlines()
    assert [line[: len("export: 200 of 1,000 positions")] for line in lines[:2]] == [
        "export: 200 of 1,000 positions",
        "export: 400 of 1,000 positions",
    ]
    assert lines[2:] == ["export: done"]
    assert quiet.getvalue() == ""


# -- importing ------------------------------------------------------------------------------


class CountingTransfer:
    """A store's transfer role that notes each batch it is given: its kind
    and how many records."""

    def __init__(self, inner: StoreAdapter) -> None:
        self._inner = inner
        self.batches: list[tuple[str, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def import_events(self, events: Sequence[RecordedEvent], *, replacing: Sequence[str] = ()) -> int:
        self.batches.append(("event", len(events)))
        return await self._inner.import_events(events, replacing=replacing)

    async def import_claims(self, claims: Sequence[HeldClaim], *, released: Sequence[HeldClaim] = ()) -> int:
        self.batches.append(("claim", len(claims)))
        return await self._inner.import_claims(claims, released=released)


async def replayed(records: Iterable[Record]) -> AsyncIterator[Record]:
    for record in records:
        yield record


async def test_an_import_writes_batches_of_one_kind_closed_at_500_records_or_4_mib() -> None:
    mib = 1024 * 1024
    small = [exported_event(recorded_event(f"s-{n}", 1)) for n in range(1001)]
    large = [exported_event(recorded_event(f"l-{n}", 1, payload=b"\x01" * mib)) for n in range(6)]
    claims = [exported_claim(HeldClaim("names", f"name-{n}", f"s-{n}")) for n in range(2)]
    store = MemoryStore()
    counting = CountingTransfer(store)
    # Events of a MiB: over the default limit of an event (--max-event-bytes), under this one.
    importer = Importer(replace(Store.of(store), transfer=counting), max_event_bytes=2 * mib)
    summary = await importer.run(replayed(whole(*small, *large, *claims)))
    assert summary.complete and summary.written["event"] == 1007
    # 500 and 500; then the last small one and four of a MiB (a batch holds
    # 4 MiB once the fourth is in), the other two; the claims on their own.
    assert counting.batches == [("event", 500), ("event", 500), ("event", 5), ("event", 2), ("claim", 2)]


async def test_what_an_import_does_not_fit_is_failed_precondition_and_names_the_record() -> None:
    store = MemoryStore()
    async with running_server(store, anonymous_admin=True) as (_, client):
        opened = await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        await client.submit(command("u-1", users.RegisterUser(email=EMAIL, name=NAME)))
        await store.create_data_key(DataKey("acc-1", "m1", b"k" * 40))
        held_id = opened.events[0].event_id
        cases: list[tuple[list[Record], str, dict[str, str]]] = [
            (
                whole(exported_event(account_event("t-1", 1)), exported_event(account_event("t-1", 3))),
                "VERSION_GAP",
                {"record": "2", "aggregate_id": "t-1", "version": "3"},
            ),
            (
                whole(exported_event(account_event("t-2", 1, event_id=held_id))),
                "EVENT_ID_TAKEN",
                {"record": "1", "aggregate_id": "t-2", "event_id": held_id},
            ),
            (
                whole(exported_claim(HeldClaim("users.email", EMAIL, "u-9"))),
                "CLAIM_HELD",
                {"record": "1", "scope": "users.email", "aggregate_id": "u-9", "holder": "u-1"},
            ),
        ]
        for records, reason, named in cases:
            code, got, metadata, _ = await refused_import(client, records)
            assert (code, got) == (grpc.StatusCode.FAILED_PRECONDITION, reason)
            assert {key: metadata.get(key) for key in named} == named, reason
        assert [e.aggregate_id for e in await log_of(store)] == ["acc-1", "u-1"]  # none of it written
    # A data key: on a server with the master key that wraps it (one without takes none).
    secret = new_master_key()
    master = MasterKeys.parse(f"m1:{secret}", source="test")
    keyed = MemoryStore()
    async with running_server(keyed, anonymous_admin=True, master_keys=f"m1:{secret}") as (_, client):
        await keyed.create_data_key(DataKey("acc-1", *master.wrap(os.urandom(32))))
        other = DataKey("acc-1", *master.wrap(os.urandom(32)))
        code, got, metadata, _ = await refused_import(client, whole(exported_data_key(other)))
        assert (code, got) == (grpc.StatusCode.FAILED_PRECONDITION, "DATA_KEY_CONFLICT")
        assert {key: metadata.get(key) for key in ("record", "aggregate_id")} == {
            "record": "1",
            "aggregate_id": "acc-1",
        }


def _bad_event(**fields: Any) -> Record:
    record = exported_event(account_event("t-1", 1))
    for name, value in fields.items():
        if name == "seconds":
            record.event.event.timestamp.seconds = value
        elif name == "metadata":
            record.event.event.metadata.update(value)
        else:
            setattr(record.event.event, name, value)
    return record


BAD_RECORDS: dict[str, tuple[Record, str]] = {
    "an event id that is not a UUID": (_bad_event(event_id="evt-1"), "record[1].event.event.event_id"),
    "an event of version 0": (_bad_event(version=0), "record[1].event.event.version"),
    "a time after 9999": (_bad_event(seconds=253_402_300_800), "record[1].event.event.timestamp"),
    "an aggregate id of only spaces": (_bad_event(aggregate_id="   "), "record[1].event.event.aggregate_id"),
    "an aggregate id of 201 characters": (_bad_event(aggregate_id="a" * 201), "record[1].event.event.aggregate_id"),
    "a metadata key of 129 characters": (
        _bad_event(metadata={"k" * 129: "v"}),
        "record[1].event.event.metadata['" + "k" * 128 + "']",
    ),
    "a control character in a correlation id": (
        _bad_event(correlation_id="c\n1"),
        "record[1].event.event.correlation_id",
    ),
    "a control character in a master key id": (
        Record(data_key=export_pb2.ExportedDataKey(aggregate_id="t-1", master_key_id="m\x071", wrapped_key=b"k")),
        "record[1].data_key.master_key_id",
    ),
}


async def test_records_a_command_could_not_have_written_are_bad_records_naming_the_field() -> None:
    store = MemoryStore()
    async with running_server(store, anonymous_admin=True) as (_, client):
        for case, (record, field) in BAD_RECORDS.items():
            code, reason, _, fields = await refused_import(client, whole(record))
            assert (code, reason, fields) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_RECORD", [field]), case
        assert await log_of(store) == []
        # At the bounds: an id of 200 characters, a metadata key of 128.
        fitting = _bad_event(aggregate_id="a" * 200, metadata={"k" * 128: "v"})
        assert (await imported(client, whole(fitting))).events_written == 1


async def events_of(client: Client, aggregate_id: str) -> list[tuple[str, int]]:
    read = client.events.ReadAggregate(ev.ReadAggregateRequest(aggregate_id=aggregate_id))
    return [(e.event_id, e.version) async for e in read]


async def balance_of(client: Client, aggregate_id: str) -> int:
    state = await client.events.GetAggregate(ev.GetAggregateRequest(aggregate_id=aggregate_id))
    account = bank.Account()
    assert state.state.Unpack(account)
    return int(account.balance)


async def test_overwriting_replaces_events_snapshots_and_claims_and_keeps_command_records() -> None:
    async with running_server(MemoryStore(), anonymous_admin=True) as (_, client):
        await client.submit(command("u-1", users.RegisterUser(email="ann@example.com", name="Ann")))
        records = await exported(client)
        source_events = await events_of(client, "u-1")
    target = MemoryStore()
    async with running_server(target, anonymous_admin=True, snapshot_every=1) as (_, client):
        registered = command("u-1", users.RegisterUser(email=EMAIL, name=NAME))
        await client.submit(registered)
        await eventually(lambda: snapshot_at(target, "u-1", 1), what="the target's snapshot of u-1")
        replaced = await imported(client, records, overwrite=True)
        assert (replaced.aggregates_replaced, replaced.events_written) == (1, 1)
        assert await events_of(client, "u-1") == source_events
        assert await target.load_snapshot("u-1") is None  # the target's, of the history replaced
        assert await target.claim_owner("users.email", "ann@example.com") == "u-1"
        assert await target.claim_owner("users.email", EMAIL) is None
        assert await target.find_command(registered.command_id) is not None  # command records stay
        await client.submit(command("u-2", users.RegisterUser(email=EMAIL, name="Someone Else")))  # free again


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreAdapter]:
    """A store to import into, of each kind."""
    async with STORES[request.param](store_site(request, tmp_path)) as opened:
        yield opened


async def test_overwriting_replaces_a_history_that_parts_from_the_streams_after_its_first_events(
    target: StoreAdapter,
) -> None:
    """The target was loaded from the source once, then both went on, each
    its own way: importing the source again with overwriting gives the
    target the source's history (before the fix: AGGREGATE_NOT_EMPTY, as if
    it had been imported without). An aggregate whose history in the target
    is the stream's and then goes on keeps its own later events: the stream
    holds nothing to replace them with."""
    source = MemoryStore()
    async with (
        running_server(source, anonymous_admin=True) as (_, to_source),
        running_server(target, anonymous_admin=True) as (_, to_target),
    ):
        await to_source.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        await to_source.submit(command("acc-1", bank.Deposit(amount=10)))
        await to_source.submit(command("acc-2", bank.OpenAccount(owner="bob")))
        await imported(to_target, await exported(to_source))
        await to_target.submit(command("acc-1", bank.Deposit(amount=1)))  # the target's version 3
        await to_target.submit(command("acc-2", bank.Deposit(amount=2)))  # the target's version 2
        await to_source.submit(command("acc-1", bank.Deposit(amount=100)))  # the source's version 3
        records = await exported(to_source)

        replaced = await imported(to_target, records, overwrite=True)
        assert (replaced.aggregates_replaced, replaced.events_written) == (1, 1)
        assert await events_of(to_target, "acc-1") == await events_of(to_source, "acc-1")
        assert await balance_of(to_target, "acc-1") == 110
        # The target's server forgot its cached acc-1: the next command is decided on the imported one.
        assert (await to_target.submit(command("acc-1", bank.Deposit(amount=1)))).version == 4
        assert await balance_of(to_target, "acc-1") == 111
        assert [v for _, v in await events_of(to_target, "acc-2")] == [1, 2]
        assert await balance_of(to_target, "acc-2") == 2
        # And overwriting again with the same stream finds nothing to replace (acc-1 went on from it).
        again = await imported(to_target, records, overwrite=True)
        assert (again.aggregates_replaced, again.events_written) == (0, 0)


async def test_restoring_deleted_aggregates_replaces_no_live_one() -> None:
    async with running_server(MemoryStore(), anonymous_admin=True) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        records = await exported(client, aggregate_ids=["acc-1"], include_snapshots=True)
    async with running_server(MemoryStore(), anonymous_admin=True) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="bob")))
        live = await events_of(client, "acc-1")
        code, reason, metadata, _ = await refused_import(client, records, restore_deleted=True)
        assert (code, reason, metadata["aggregate_id"]) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "AGGREGATE_NOT_EMPTY",
            "acc-1",
        )
        assert await events_of(client, "acc-1") == live


async def test_the_audit_of_commands_travels_with_their_records_and_the_audits_own_entries_stay() -> None:
    async with running_server(MemoryStore(), anonymous_admin=True) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        await client.submit(command("acc-2", bank.OpenAccount(owner="bob")))
        with pytest.raises(grpc.aio.AioRpcError):  # refused by its handler: a command record
            await client.submit(command("acc-1", bank.Withdraw(amount=1_000)))
        malformed = command("acc-1", bank.Deposit(amount=5), origin="\x07")
        with pytest.raises(grpc.aio.AioRpcError):  # refused before a handler: the audit's own entry
            await client.submit(malformed)
        await client.admin.DeleteAggregate(admin.DeleteAggregateRequest(aggregate_id="acc-2", reason="asked"))
        records = await exported(client, include_commands=True)
        old = (await client.admin.QueryAudit(admin.QueryAuditRequest())).entries
    commands = {e.command_id for e in old if e.command_id not in ("", malformed.command_id)}
    assert len(commands) == 3 and {r.command.command_id for r in records if r.HasField("command")} == commands
    own = {(e.command_id, e.command_type.rpartition("/")[2]) for e in old if e.command_id not in commands}
    assert {("", "DeleteAggregate"), ("", "ExportLog"), (malformed.command_id, "bank.v1.Deposit")} == own

    async with running_server(MemoryStore(), anonymous_admin=True) as (_, client):
        await imported(client, records)
        new = (await client.admin.QueryAudit(admin.QueryAuditRequest())).entries
    assert {e.command_id for e in new if e.command_id} == commands
    assert [e.command_type.rpartition("/")[2] for e in new if not e.command_id] == ["ImportLog"]
    refused = [e for e in new if e.outcome == admin.AUDIT_OUTCOME_REFUSED]
    assert [(e.aggregate_id, e.reason) for e in refused] == [("acc-1", "INSUFFICIENT_FUNDS")]


# -- deleting, archiving ---------------------------------------------------------------------


async def test_a_deleted_aggregate_keeps_its_data_key_and_its_archive_restores_it_readable() -> None:
    store = MemoryStore()
    async with running_server(store, anonymous_admin=True, master_keys=f"k1:{new_master_key()}") as (_, client):
        await client.submit(command("u-1", users.RegisterUser(email=EMAIL, name=NAME)))
        archive = await exported(client, aggregate_ids=["u-1"], include_snapshots=True)
        key = await store.load_data_key("u-1")
        assert key is not None and not key.forgotten
        await client.admin.DeleteAggregate(admin.DeleteAggregateRequest(aggregate_id="u-1", reason="closed"))
        assert await store.load_data_key("u-1") == key
        restored = await imported(client, only_aggregates(archive, {"u-1"}), restore_deleted=True)
        assert (restored.aggregates_replaced, restored.events_written) == (1, 1)
        state = await client.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="u-1"))
        user = users.User()
        assert state.state.Unpack(user) and (user.email, user.name) == (EMAIL, NAME)


async def test_archive_names_its_file_by_type_and_time_and_takes_at_most_100_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_server(MemoryStore(), anonymous_admin=True) as (app, client):
        for n in range(101):
            await client.submit(command(f"acc-{n:03}", bank.OpenAccount(owner="ann")))
        argv = ["archive", str(tmp_path), "--type", "Account", "--server", app.address]
        assert await asyncio.to_thread(cli.main, argv) == 0
        done = json.loads(capsys.readouterr().out)
        assert (len(done["archived"]), done["changed"]) == (100, [])
        assert done["archived"] == [f"acc-{n:03}" for n in range(100)]  # in id order
        assert re.fullmatch(r"archive-Account-\d{8}T\d{12}Z\.chronicle", Path(done["file"]).name), done["file"]
        assert os.listdir(tmp_path) == [Path(done["file"]).name]  # complete: no .partial left
        assert [v for _, v in await events_of(client, "acc-100")] == [1]  # the 101st: kept


# -- converting from the eventsourcing library ------------------------------------------------


@pytest.mark.postgres
async def test_a_mapping_may_name_the_aggregate_and_the_time_and_a_state_that_does_not_decode_is_refused(
    postgres_url: str,
) -> None:
    from service.errors import InvalidInput
    from service.transfer.eventsourcing import ChronicleEvent, EventsourcingEvent, eventsourcing_export
    from tests.support.eventsourcing_bank import Bank, environment

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA legacy")
    library = Bank(env=environment(postgres_url, "legacy"))
    account = library.open_account("ann")
    library.act(account, "deposit", 40)
    rebuilt: list[object] = []

    def mapping(event: EventsourcingEvent) -> ChronicleEvent | None:
        rebuilt.append(event.domain_event())
        at = 1_700_000_000_000_000 + event.originator_version
        if event.topic.endswith("Opened"):
            message: Any = bank.AccountOpened(owner=event.state["owner"])
        else:
            message = bank.MoneyDeposited(amount=event.state["amount"])
        return ChronicleEvent("Account", message, aggregate_id=f"acc-{account.hex[:8]}", timestamp_us=at)

    async def converted() -> list[Record]:
        records = eventsourcing_export(
            postgres_url, table="bank_events", schema="legacy", mapping=mapping, registry=build_registry(TEST_SETTINGS)
        )
        return [record async for record in records]

    events = [r.event.event for r in await converted() if r.HasField("event")]
    assert [(e.aggregate_id, e.version, e.timestamp.ToMicroseconds()) for e in events] == [
        (f"acc-{account.hex[:8]}", 1, 1_700_000_000_000_001),
        (f"acc-{account.hex[:8]}", 2, 1_700_000_000_000_002),
    ]
    assert [(type(e).__qualname__, getattr(e, "amount", None)) for e in rebuilt] == [
        ("Account.Opened", None),
        ("Account.Deposited", 40),
    ]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO legacy.bank_events (originator_id, originator_version, topic, state)"
            " VALUES (%s, 3, 'tests.support.eventsourcing_bank:Account.Deposited', %s)",
            (account, b"\x78\x9c compressed, say"),
        )
    with pytest.raises(InvalidInput) as undecodable:
        await converted()
    assert undecodable.value.reason == "UNDECODABLE_EVENT"
    assert (undecodable.value.metadata["originator_id"], undecodable.value.metadata["originator_version"]) == (
        str(account),
        "3",
    )


# -- stores --------------------------------------------------------------------------------


def test_the_built_in_schemes_and_the_kind_each_exports_name(tmp_path: Path) -> None:
    opened = {
        "memory://": "memory",
        f"sqlite:///{tmp_path}/events.db": "sqlite",
        "postgresql://chronicle@db.internal/chronicle": "postgresql",
        "postgres://chronicle@db.internal/chronicle": "postgresql",
    }
    assert {url: store_kind(open_store(url)) for url in opened} == opened
    assert isinstance(open_store("memory://"), MemoryStore)
    assert isinstance(open_store("postgres://chronicle@db.internal/chronicle"), PostgresStore)


CONTENTS_PLUGIN = '''
"""A store's own ``contents`` fixture, as docs/stores.md says a store may give."""

from pathlib import Path

import pytest

from service.store_contract.contents import public_contents


@pytest.fixture
def contents(store):
    async def read():
        with (Path(__file__).parent / "contents-read").open("a") as noted:
            noted.write("read\\n")
        return await public_contents(store)

    return read
'''


def test_the_contract_plugin_gives_each_test_a_fresh_store_where_tmp_stands_and_takes_ones_own_contents(
    tmp_path: Path,
) -> None:
    from tests.support.processes import ROOT

    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "own_contents.py").write_text(CONTENTS_PLUGIN)
    chosen = [
        "test_pages_read_every_record_in_key_order",  # both append to a-1 at version 0:
        "test_pages_of_one_aggregate",  # each needs a store of its own
        "test_importing_again_writes_nothing",  # reads contents
    ]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            str(tmp_path / "pytest.ini"),
            "-p",
            "service.store_contract.plugin",
            "-p",
            "own_contents",
            "-p",
            "no:cacheprovider",
            "--pyargs",
            "service.store_contract.test_transfer",
            "-k",
            " or ".join(chosen),
            "--chronicle-store-url",
            "sqlite:///{tmp}/events.db",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1].startswith("3 passed"), result.stdout[-1000:]
    assert (tmp_path / "contents-read").read_text().splitlines() == ["read", "read"]
    assert not (tmp_path / "{tmp}").exists()


@pytest.mark.postgres
async def test_postgresql_s_json_copy_of_payloads_is_never_read_and_has_no_index(postgres_url: str) -> None:
    from service.processing.payload_json import payload_json

    json_of = payload_json(build_registry(TEST_SETTINGS))
    async with running_server(PostgresStore(postgres_url, pool_size=2, json_of=json_of)) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        await client.submit(command("acc-1", bank.Deposit(amount=70)))
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        changed = conn.execute(
            'UPDATE chronicle.events SET payload_json = \'{"amount": "999"}\''
            " WHERE event_type = 'bank.v1.MoneyDeposited'"
        )
        assert changed.rowcount == 1
        indexed = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'chronicle' AND indexdef LIKE '%payload_json%'"
        ).fetchall()
    assert indexed == []
    store = PostgresStore(postgres_url, pool_size=2, json_of=json_of)
    async with running_server(store, anonymous_admin=True) as (_, client):
        assert await balance_of(client, "acc-1") == 70  # loaded (and upcast) from the bytes
        read = [e async for e in client.events.ReadAggregate(ev.ReadAggregateRequest(aggregate_id="acc-1"))]
        deposited = bank.MoneyDeposited()
        assert read[1].payload.Unpack(deposited) and deposited.amount == 70
        (record,) = [r for r in await exported(client) if r.HasField("event") and r.event.event.version == 2]
        assert bank.MoneyDeposited.FromString(record.event.event.payload.value).amount == 70
