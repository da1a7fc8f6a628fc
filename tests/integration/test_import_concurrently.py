"""Two imports into one store at once (two ``chronicle import`` processes,
or two replicas each given one; docs/export-format.md, "Resumable,
idempotent"): each event is written once, at one position, and nothing of a
refused batch is written; the loser of a race is refused ABORTED,
IMPORT_RACED, naming what the other wrote, and importing again finishes
(or says AGGREGATE_NOT_EMPTY where the histories part). The users' claims
end as their last state declares, whichever import settled them last.

On PostgreSQL both imports' batches are made to check the target before
either writes (a third connection holds the log's head row, which each
batch's insert updates): the race, every time. On SQLite each batch checks
and writes under the file's write lock, so two imports take turns."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import psycopg
import pytest

from chronicle.v1 import export_pb2
from domain_plugins.users.domain import EMAIL_SCOPE
from domain_plugins.users.protos.users.v1 import users_pb2 as users
from service.api.status import status_code
from service.app import build_registry
from service.errors import ImportConflict, ImportRaced, InvalidInput
from service.plugins.registry import Registry
from service.processing.state import AggregateLoader
from service.store.base import Store, StoreAdapter
from service.store.memory import MemoryStore
from service.store.postgres import PostgresStore
from service.store.records import LogFilter, RecordedEvent
from service.store.sqlite import SqliteStore
from service.transfer.importer import Importer, ImportOptions, ImportSummary
from service.transfer.records import exported_event
from service.transfer.stream import Writer
from tests.support.grpc_client import TEST_SETTINGS
from tests.support.import_claims import empty_store
from tests.support.postgres import Cluster

Record = export_pb2.ExportRecord
REGISTRY: Registry = build_registry(TEST_SETTINGS)


def user_event(aggregate_id: str, version: int, message: users.UserRegistered | users.EmailChanged) -> RecordedEvent:
    return RecordedEvent(
        event_id=str(uuid.uuid4()), aggregate_id=aggregate_id, aggregate_type="User", version=version, position=0,
        event_type=message.DESCRIPTOR.full_name, schema_version=1, payload=message.SerializeToString(),
        timestamp_us=time.time_ns() // 1000, command_id="", user_id="legacy", origin="", correlation_id="",
        causation_id="", metadata={},
    )  # fmt: skip


def legacy_users(count: int, prefix: str = "user") -> list[RecordedEvent]:
    """``count`` users, each registered then moved to a new address."""
    events: list[RecordedEvent] = []
    for n in range(count):
        old, new = f"{prefix}-{n}@old.example", f"{prefix}-{n}@new.example"
        events.append(user_event(f"{prefix}-{n}", 1, users.UserRegistered(email=old, name="Legacy")))
        events.append(user_event(f"{prefix}-{n}", 2, users.EmailChanged(email=new, previous_email=old)))
    return events


def whole(events: Sequence[RecordedEvent]) -> list[Record]:
    return [
        Record(header=export_pb2.ExportHeader(format="chronicle.export", format_version=1)),
        *(exported_event(event) for event in events),
        Record(end=export_pb2.ExportEnd(events=len(events))),
    ]


async def streamed(records: Sequence[Record]) -> AsyncIterator[Record]:
    for record in records:
        yield record


def importer(store: StoreAdapter, *, batch_size: int = 500) -> Importer:
    roles = Store.of(store)
    return Importer(
        roles, registry=REGISTRY, load_state=AggregateLoader(roles, REGISTRY).state_of, batch_size=batch_size
    )


async def logged(store: StoreAdapter) -> list[RecordedEvent]:
    page = await store.read_log(0, LogFilter(), 10_000)
    return list(page.events)


async def assert_written_once(store: StoreAdapter, events: Sequence[RecordedEvent]) -> None:
    """Each event once, at positions 1..n with none missing; each user
    holds its new address, not its old one."""
    log = await logged(store)
    assert sorted(e.event_id for e in log) == sorted(e.event_id for e in events)
    assert [e.position for e in log] == list(range(1, len(events) + 1))
    for event in events:
        if event.version == 2:
            moved = users.EmailChanged.FromString(event.payload)
            assert await store.claim_owner(EMAIL_SCOPE, moved.email) == event.aggregate_id
            assert await store.claim_owner(EMAIL_SCOPE, moved.previous_email) is None


# -- PostgreSQL: the race, made to happen ------------------------------------------------------


async def raced_imports(postgres_url: str, streams: Sequence[list[Record]]) -> list[ImportSummary | BaseException]:
    """Run an import of each stream (one batch each), on its own store
    connection, with the log's head held until both batches have checked
    the target and wait to write: then let them go."""
    stores = [PostgresStore(postgres_url, pool_size=2) for _ in streams]
    for store in stores:
        await store.open()
    try:
        async with await psycopg.AsyncConnection.connect(postgres_url) as holder:
            await holder.execute("UPDATE chronicle.log_head SET last_position = last_position")
            runs = [asyncio.create_task(importer(s).run(streamed(r))) for s, r in zip(stores, streams, strict=True)]
            await waiting_for_the_log_head(postgres_url, len(streams))
            await holder.commit()
            return await asyncio.gather(*runs, return_exceptions=True)
    finally:
        for store in stores:
            await store.close()


async def waiting_for_the_log_head(postgres_url: str, count: int) -> None:
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as watcher:
        for _ in range(500):
            cursor = await watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE '%chronicle.log_head%'"
            )
            row = await cursor.fetchone()
            if row is not None and row[0] >= count:
                return
            await asyncio.sleep(0.02)
    raise AssertionError(f"{count} imports never waited for the log's head")


@pytest.mark.postgres
async def test_two_imports_of_one_export_at_once_write_each_event_once(postgres_url: str) -> None:
    """Before, the loser was FAILED_PRECONDITION AGGREGATE_NOT_EMPTY, which
    says to overwrite or leave aggregates out: nothing parted, the other
    import had written the same events."""
    events = legacy_users(50)
    records = whole(events)
    outcomes = await raced_imports(postgres_url, [records, records])
    done = [o for o in outcomes if isinstance(o, ImportSummary)]
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(done) == 1 and done[0].written["event"] == len(events)
    assert len(refused) == 1 and isinstance(refused[0], ImportRaced), refused
    assert (refused[0].reason, status_code(refused[0])) == ("IMPORT_RACED", grpc.StatusCode.ABORTED)
    assert "nothing of the batch was written" in refused[0].message
    store = PostgresStore(postgres_url, pool_size=2)
    await store.open()
    try:
        again = await importer(store).run(streamed(records))  # the loser, run again
        assert (again.written["event"], again.events_skipped, again.complete) == (0, len(events), True)
        await assert_written_once(store, events)
    finally:
        await store.close()


@pytest.mark.postgres
async def test_two_imports_with_other_events_at_one_place_leave_one_history_whole(postgres_url: str) -> None:
    """Two sources give ``user-x`` another first event: one import wins;
    the other is IMPORT_RACED with nothing of its batch written (its other
    user neither), and run again it is AGGREGATE_NOT_EMPTY, naming user-x."""
    mine = legacy_users(1, "user-x")
    theirs = [user_event("user-x-0", 1, users.UserRegistered(email="x@theirs.example")), *legacy_users(1, "user-y")]
    outcomes = await raced_imports(postgres_url, [whole(mine), whole(theirs)])
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], ImportRaced), refused
    store = PostgresStore(postgres_url, pool_size=2)
    await store.open()
    try:
        winner, loser = (mine, theirs) if isinstance(outcomes[0], ImportSummary) else (theirs, mine)
        assert sorted(e.event_id for e in await logged(store)) == sorted(e.event_id for e in winner)
        with pytest.raises(ImportConflict) as parted:
            await importer(store).run(streamed(whole(loser)))
        assert parted.value.reason == "AGGREGATE_NOT_EMPTY"
        assert json.loads(parted.value.metadata["diverged_aggregates"]) == ["user-x-0"]
        assert sorted(e.event_id for e in await logged(store)) == sorted(e.event_id for e in winner)
    finally:
        await store.close()


# -- every store: an event another import wrote since this one began ---------------------------


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreAdapter]:
    opened: StoreAdapter
    if request.param == "memory":
        opened = MemoryStore()
    elif request.param == "sqlite":
        opened = SqliteStore(tmp_path / "c.db")
    else:
        opened = PostgresStore(request.getfixturevalue("postgres_url"), pool_size=2)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def test_another_imports_event_met_in_a_later_batch_is_a_race_not_a_bad_stream(store: StoreAdapter) -> None:
    """Import A began, then import B wrote user-x's history, with another
    event at version 3; A's first batch (versions 1 and 2, B's too) is
    skipped, its second meets B's version 3. Before, A took that event for
    its own earlier record and refused its stream as BAD_RECORD (two events
    at one place), which it does not hold."""
    shared = legacy_users(1, "user-x")
    third = user_event("user-x-0", 3, users.EmailChanged(email="a@x.example", previous_email="user-x-0@new.example"))
    other = user_event("user-x-0", 3, users.EmailChanged(email="b@x.example", previous_email="user-x-0@new.example"))
    a = importer(store, batch_size=2)
    records = whole([*shared, third])
    await a.add(records[0])  # A began
    await importer(store).run(streamed(whole([*shared, other])))  # B, start to end
    with pytest.raises(ImportRaced) as refused:
        await rest_of(a, records[1:])
    assert refused.value.metadata["other_event_id"] == other.event_id
    assert refused.value.metadata["event_id"] == third.event_id
    assert status_code(refused.value) == grpc.StatusCode.ABORTED
    # A's own two events at one place, across batches, are still its stream's fault.
    twice = whole([*legacy_users(1, "user-z"), user_event("user-z-0", 2, users.UserRegistered(email="z@z.example"))])
    with pytest.raises(InvalidInput) as bad:
        await importer(store, batch_size=2).run(streamed(twice))
    assert bad.value.reason == "BAD_RECORD"


async def test_overwriting_does_not_replace_what_another_import_wrote_meanwhile(store: StoreAdapter) -> None:
    """With overwriting, import A would remove user-x's history to write its
    own; B imported another one since A began: IMPORT_RACED, and B's
    history stays whole (before, BAD_RECORD, blaming A's stream)."""
    a = Importer(Store.of(store), options=ImportOptions(overwrite=True), registry=REGISTRY, batch_size=2)
    records = whole(legacy_users(1, "user-x"))
    await a.add(records[0])
    theirs = legacy_users(1, "user-x")
    await importer(store).run(streamed(whole(theirs)))
    with pytest.raises(ImportRaced) as refused:
        await rest_of(a, records[1:])
    assert refused.value.message.startswith("record[1]: another import")
    assert refused.value.metadata["other_event_id"] == theirs[0].event_id
    assert sorted(e.event_id for e in await logged(store)) == sorted(e.event_id for e in theirs)


async def rest_of(begun: Importer, records: Sequence[Record]) -> None:
    for record in records:
        await begun.add(record)
    await begun.finish()


# -- two processes ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_two_import_processes_at_once_write_each_event_once(kind: str, pg_cluster: Cluster, tmp_path: Path) -> None:
    """Two ``chronicle import --database-url`` of one export of 1,200
    events (three batches each), started together. Each ends done or, on
    PostgreSQL, ABORTED IMPORT_RACED (then run again, it finishes); the
    store holds each event once and every user its new address."""
    events = legacy_users(600)
    export = tmp_path / "users.chronicle"
    with export.open("wb") as out:
        writer = Writer(out, "binary")
        for record in whole(events):
            writer.write(record)
    with empty_store(kind, pg_cluster, tmp_path) as url:
        command = [sys.executable, "-m", "service", "import", str(export), "--database-url", url, "--quiet"]
        runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        finished = [(*run.communicate(timeout=120), run.returncode) for run in runs]
        written = 0
        for stdout, stderr, code in finished:
            if code == 0:
                written += json.loads(stdout)["events_written"]
                continue
            # The loser's batches before the race are written (each batch is a
            # transaction of its own) but not counted in any summary: its run
            # again writes only what is still missing.
            assert kind == "postgresql" and stderr.startswith("error: IMPORT_RACED: "), stderr
            again = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
            written += json.loads(again.stdout)["events_written"]
        assert 0 < written <= len(events)
        asyncio.run(_check_store(url, events))  # each event once, at positions 1..n; every user's new address


async def _check_store(url: str, events: Sequence[RecordedEvent]) -> None:
    store: StoreAdapter = (
        SqliteStore(url.removeprefix("sqlite:///")) if url.startswith("sqlite") else PostgresStore(url)
    )
    await store.open()
    try:
        await assert_written_once(store, events)
    finally:
        await store.close()
