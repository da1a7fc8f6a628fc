"""docs/performance.md, its mechanism claims (what the code does, not the
measured figures), where no other test held them: a server on a real socket
over the suite's PostgreSQL, and the PostgreSQL store on its own, the
operations it sends to the database observed as they leave
(``PipelinedConnection.run``, wrapped, not replaced).

- a command on a warm aggregate makes no task of Chronicle's: it is decided
  and handed to group commit in the task that read it; a cold aggregate and
  a dry run take the worker's own task;
- group commit writes each batch as one statement, one operation (one
  transaction); a refused batch is told apart by one read, and its innocent
  appends are written again together;
- many operations share a connection without waiting for each other, each
  one operation however many statements it holds;
- the statements of a load and of a read model's batch are prepared once
  per connection;
- a page of one type leaves no row of another out, and a page is sized by
  one window function (nothing counts it);
- a log page's rows are checked for order and sorted were a plan to return
  them otherwise, and such a page still knows it was cut by its bytes.

Where a test waits, it waits for an outcome; the bounds only make a broken
build fail rather than hang."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

import domain_plugins
import service
from chronicle.v1 import command_service_pb2 as pb
from domain_plugins import box
from domain_plugins.box.protos.box.v1 import box_pb2
from service.errors import ConcurrencyConflict, InvalidInput
from service.plugins.registry import Registry
from service.store.base import SnapshotKind
from service.store.postgres import PostgresStore, sql
from service.store.postgres.connection import PipelinedConnection, Statement
from service.store.postgres.database import session_options
from service.store.postgres.group_commit import Append
from service.store.postgres.log import log_page_statements
from service.store.records import DocumentWrite, LogFilter, Snapshot
from tests.support.events import new_event
from tests.support.grpc_client import command, running_server

pytestmark = pytest.mark.postgres


@dataclass(frozen=True)
class Sent:
    """One operation as it left for PostgreSQL."""

    connection: int  # id() of its connection
    statements: tuple[bytes, ...]  # each statement's SQL
    in_flight: int  # the connection's operations in flight once it was sent


class Operations:
    """Every operation the store's connections send, and every statement
    they prepare, from now on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[Sent] = []
        self.prepared: Counter[tuple[int, bytes]] = Counter()
        run, prepare = PipelinedConnection.run, PipelinedConnection._prepare

        def observed_run(connection: PipelinedConnection, statements: Sequence[Statement]) -> Any:
            reply = run(connection, statements)
            self.sent.append(Sent(id(connection), tuple(s.sql for s in statements), connection.in_flight))
            return reply

        def observed_prepare(connection: PipelinedConnection, statement: Statement) -> None:
            self.prepared[(id(connection), statement.sql)] += 1
            prepare(connection, statement)

        monkeypatch.setattr(PipelinedConnection, "run", observed_run)
        monkeypatch.setattr(PipelinedConnection, "_prepare", observed_prepare)

    def of(self, sql_text: str) -> list[Sent]:
        """The operations that carried ``sql_text``."""
        return [sent for sent in self.sent if sql_text.encode() in sent.statements]


@pytest.fixture
def operations(monkeypatch: pytest.MonkeyPatch) -> Operations:
    return Operations(monkeypatch)


# -- the command path ------------------------------------------------------------------


# Chronicle's code: the service and its example domains.
CHRONICLE = (Path(service.__file__).parent, Path(domain_plugins.__file__).parent)


def chronicles_tasks(made: list[Any]) -> list[str]:
    """The coroutines of Chronicle's own among the tasks made (gRPC's,
    client and server, are the RPC's and not counted)."""
    names = []
    for coroutine in made:
        code = getattr(coroutine, "cr_code", None)  # gRPC's Cython coroutines have none
        if code is not None and any(Path(code.co_filename).is_relative_to(p) for p in CHRONICLE):
            names.append(coroutine.__qualname__)
    return names


async def test_a_command_on_a_warm_aggregate_makes_no_task_and_a_cold_one_or_a_dry_run_takes_the_workers(
    postgres_url: str,
) -> None:
    loop = asyncio.get_running_loop()
    made: list[Any] = []

    def factory(loop: asyncio.AbstractEventLoop, coroutine: Any, **options: Any) -> asyncio.Task[Any]:
        made.append(coroutine)
        return asyncio.Task(coroutine, loop=loop, **options)

    # Boxes: a domain with no read model or reaction (their runners make
    # tasks of their own in the background, commands or not).
    boxes = Registry([box.plugin])
    async with running_server(PostgresStore(postgres_url, pool_size=2), registry=boxes) as (_, client):
        await client.submit(command("box-1", box_pb2.CreateBox(name="a")))  # loaded: box-1 is warm now
        await client.submit(command("box-1", box_pb2.RenameBox(name="b")))
        loop.set_task_factory(factory)
        try:
            warm = await client.submit(command("box-1", box_pb2.RenameBox(name="c")))
            on_warm = chronicles_tasks(made)
            made.clear()
            dry = await client.commands.Submit(
                pb.SubmitRequest(command=command("box-1", box_pb2.RenameBox(name="d")), dry_run=True), timeout=30
            )
            on_dry_run = chronicles_tasks(made)
            made.clear()
            cold = await client.submit(command("box-2", box_pb2.CreateBox(name="e")))
            on_cold = chronicles_tasks(made)
        finally:
            loop.set_task_factory(None)
    assert (warm.version, dry.version, cold.version) == (3, 4, 1)
    assert on_warm == []  # decided in the RPC's task, its append a future of group commit's
    assert on_dry_run == ["AggregateWorker._run"]
    assert on_cold == ["AggregateWorker._run"]


# -- group commit -----------------------------------------------------------------------


async def test_group_commit_writes_each_batch_as_one_statement_in_one_operation(
    postgres_store: PostgresStore, operations: Operations
) -> None:
    appended = await asyncio.gather(*(postgres_store.append(f"a-{n}", [new_event()], 0) for n in range(40)))
    assert sorted(events[0].position for events in appended) == list(range(1, 41))
    batches = operations.of(sql.APPEND_BATCH)
    counts = postgres_store.batch_counts()
    # One operation per batch, each of the one statement alone; fewer
    # batches than appends (appends that arrive together share one).
    assert len(batches) == counts.batches
    assert all(sent.statements == (sql.APPEND_BATCH.encode(),) for sent in batches)
    assert counts.appends == 40 and counts.batches < 40
    assert operations.sent == batches  # nothing else was sent


async def test_a_refused_batch_is_told_apart_by_one_read_and_its_innocent_appends_are_written_again_together(
    postgres_store: PostgresStore, operations: Operations
) -> None:
    await postgres_store.append("stale", [new_event()], 0)
    operations.sent.clear()
    outcomes = await asyncio.gather(
        *(postgres_store.append(f"a-{n}", [new_event()], 0) for n in range(10)),
        postgres_store.append("stale", [new_event()], 0),  # at version 1 already
        return_exceptions=True,
    )
    assert all(isinstance(o, list) for o in outcomes[:10]), outcomes
    assert isinstance(outcomes[10], Exception) and type(outcomes[10]).__name__ == "ConcurrencyConflict"
    # One read named the culprit; the ten others went again as one batch,
    # and nothing took the one-by-one path.
    assert len(operations.of(sql.DIAGNOSE)) == 1
    last_batch = operations.of(sql.APPEND_BATCH)[-1]
    assert last_batch.statements == (sql.APPEND_BATCH.encode(),)
    assert postgres_store.batch_counts().alone == 0
    with psycopg.connect(postgres_store.url) as conn:
        written = conn.execute("SELECT aggregate_id, version FROM chronicle.events").fetchall()
    assert sorted(written) == sorted([("stale", 1), *((f"a-{n}", 1) for n in range(10))])


# -- connections and operations -------------------------------------------------------


async def test_operations_share_a_connection_without_waiting_for_each_other(
    postgres_url: str, operations: Operations
) -> None:
    store = PostgresStore(postgres_url, pool_size=2)  # one connection for reads
    await store.open()
    try:
        await store.log_head()  # the read connection made
        operations.sent.clear()
        heads = await asyncio.gather(*(store.log_head() for _ in range(5)))
    finally:
        await store.close()
    assert heads == [0] * 5
    assert len({sent.connection for sent in operations.sent}) == 1
    # All five on the wire at once: none waited for another's answer.
    assert [sent.in_flight for sent in operations.sent] == [1, 2, 3, 4, 5]


async def test_the_statements_of_a_load_and_of_a_read_models_batch_are_prepared_once_per_connection(
    postgres_url: str, operations: Operations
) -> None:
    store = PostgresStore(postgres_url, pool_size=2)
    await store.open()
    kind = SnapshotKind("Thing", "t.State", 1)
    try:
        await store.append("agg-1", [new_event() for _ in range(3)], 0)
        await store.save_snapshot(Snapshot("agg-1", "Thing", 2, "t.State", 1, b"\x08\x02"))
        operations.sent.clear()
        for position in range(1, 4):
            assert await store.load_from_snapshot("agg-1", kind) is not None
            await store.load_documents("p", ["k-1", "k-2"])
            write = DocumentWrite(f"k-{position}", "t.Doc", b"\x08\x01", ("agg-1",))
            await store.commit_projection(
                "p", expected_position=position - 1, new_position=position, writes=[write, DocumentWrite("k-9")]
            )
    finally:
        await store.close()
    # Each operation is one round trip, its statements together.
    loads = operations.of(sql.EVENTS_AFTER_SNAPSHOT)
    assert len(loads) == 3 and all(sent.statements[1] == sql.LOAD_SNAPSHOT_OF_KIND.encode() for sent in loads)
    assert len(operations.of(sql.PUT_DOCUMENTS)) == 3
    prepared = {statement for _, statement in operations.prepared}
    for statement in (sql.BY_KEY_SETTINGS, sql.LOAD_SNAPSHOT_OF_KIND, sql.EVENTS_AFTER_SNAPSHOT, sql.LOAD_DOCUMENTS):
        assert statement.encode() in prepared, statement
    for statement in (sql.MOVE_CHECKPOINT, sql.CHECK_SUBJECTS, sql.DELETE_DOCUMENT, sql.PUT_DOCUMENTS):
        assert statement.encode() in prepared, statement
    # three times each, prepared once on each connection that sent them
    assert set(operations.prepared.values()) == {1}, operations.prepared


# -- log pages ------------------------------------------------------------------------


def explain_log_page(url: str, log_filter: LogFilter, after: int) -> str:
    """EXPLAIN ANALYZE of a log page as the store sends it (its settings first)."""
    *settings, page = log_page_statements(after, log_filter, 100, 1024 * 1024)
    with psycopg.connect(url, options=session_options(lock_timeout=5)) as conn:
        for statement in settings:
            conn.execute(statement.sql.decode())
        cursor = psycopg.RawCursor(conn)
        cursor.execute(b"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + page.sql, list(page.params))
        explained = "\n".join(row[0] for row in cursor.fetchall())
        conn.rollback()
    return explained


async def log_of(url: str, events: int) -> None:
    """``events`` events in the log, of two aggregate types (one in a
    hundred an Account) and two event types (one in ten a y), analyzed."""
    store = PostgresStore(url)
    await store.open()
    await store.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO chronicle.events (position, event_id, aggregate_id, aggregate_type, version, event_type,"
            " schema_version, payload, command_id, user_id, origin, correlation_id, causation_id, recorded_at)"
            " SELECT g, gen_random_uuid(), 'agg-' || (g %% 1000),"
            " CASE WHEN g %% 100 = 0 THEN 'Account' ELSE 'Tally' END, g / 1000 + 1,"
            " CASE WHEN g %% 10 = 0 THEN 'y' ELSE 'x' END, 1, '\\x08'::bytea,"
            " 'c', '', '', '', '', now() FROM generate_series(1, %s) g",
            (events,),
        )
        conn.execute("UPDATE chronicle.log_head SET last_position = %s", (events,))
        conn.execute("ANALYZE chronicle.events")


@pytest.mark.parametrize(
    "log_filter",
    [
        LogFilter(aggregate_types=frozenset({"Account"})),
        LogFilter(aggregate_types=frozenset({"Tally"})),
        LogFilter(event_types=frozenset({"y"})),
        LogFilter(event_types=frozenset({"x"})),
    ],
    ids=["rare-aggregate-type", "common-aggregate-type", "rare-event-type", "common-event-type"],
)
async def test_a_page_of_one_type_reads_only_that_types_rows_and_is_sized_by_one_window(
    postgres_url: str, log_filter: LogFilter
) -> None:
    await log_of(postgres_url, 20_000)
    explained = explain_log_page(postgres_url, log_filter, after=10_000)
    # A range of the type's index: no row of another type read and left out.
    assert re.search(r"Index Scan using events_by_(aggregate|event)_type on events", explained), explained
    assert "Rows Removed by Filter" not in explained, explained
    # The running total is the one window function: nothing counts the page.
    assert explained.count("WindowAgg") == 1, explained
    assert "Sort" not in explained, explained


async def test_a_log_page_whose_rows_come_out_of_order_is_sorted_and_still_knows_it_was_cut_by_its_bytes(
    postgres_store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(10):
        await postgres_store.append(f"a-{n}", [new_event(payload=b"\x08" * 100)], 0)
    size = 256 + 100  # an event's size for paging (sql._EVENT_SIZE)
    budget = 2 * size + 1  # the third event brings the page to it

    async def page() -> tuple[list[int], int, bool]:
        read = await postgres_store.read_log(0, LogFilter(), 100, max_bytes=budget)
        return [e.position for e in read.events], read.scanned_to, read.more

    as_planned = await page()
    assert as_planned == ([1, 2, 3], 3, True)
    # The same page, its rows returned newest first (as a plan that did not
    # keep the index's order would): the reader puts them in order, and the
    # page is still one cut by its bytes, so the reader goes on after its
    # last event rather than skipping to the log's end.
    read_log = sql.read_log
    monkeypatch.setattr(sql, "read_log", lambda *a, **k: read_log(*a, **k) + " ORDER BY w.position DESC")
    assert await page() == as_planned


async def test_a_refused_batch_is_not_sent_again_before_the_read_that_names_its_culprits(
    postgres_store: PostgresStore, operations: Operations
) -> None:
    await postgres_store.append("stale", [new_event()], 0)
    operations.sent.clear()
    batch = [Append(f"b-{n}", [new_event()], 0, ()) for n in range(4)] + [Append("stale", [new_event()], 0, ())]
    outcomes = await postgres_store._appends.write(batch)
    assert all(isinstance(o, list) for o in outcomes[:4]), outcomes
    assert isinstance(outcomes[4], ConcurrencyConflict)
    # The refused batch, the one read, the innocent appends together: the
    # batch as it was would only be refused again.
    sent = [sent.statements for sent in operations.sent]
    assert sent == [(sql.APPEND_BATCH.encode(),), (sql.DIAGNOSE.encode(),), (sql.APPEND_BATCH.encode(),)]


async def test_a_batch_holding_a_value_postgresql_cannot_store_goes_one_append_at_a_time_at_once(
    postgres_store: PostgresStore, operations: Operations
) -> None:
    batch = [Append(f"c-{n}", [new_event()], 0, ()) for n in range(3)]
    batch.insert(1, Append("nul", [new_event(metadata={"note": "a\x00b"})], 0, ()))
    before = postgres_store._appends.alone
    outcomes = await postgres_store._appends.write(batch)
    assert isinstance(outcomes[1], InvalidInput) and outcomes[1].reason == "UNSTORABLE_VALUE"
    assert all(isinstance(outcomes[i], list) for i in (0, 2, 3)), outcomes
    # The batch once, then each append on its own: no second try of the
    # whole batch, which the same value would fail again.
    assert len(operations.sent) == 1 + len(batch)
    assert postgres_store._appends.alone - before == len(batch)
