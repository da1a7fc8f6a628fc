"""The hot statements use their indexes whatever the size of the log: the
planner must not fall back to reading the whole events table, neither for a
small table (where a scan looks cheap) nor in a generic plan (prepared
statements are planned once, for any parameters)."""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
import pytest

from service.store.base import AggregateQuery, SnapshotKind
from service.store.postgres import PostgresStore, sql
from service.store.postgres.connection import Statement
from service.store.postgres.database import session_options
from service.store.postgres.log import log_page_statements
from service.store.postgres.projections import (
    commit_projection_statements,
    count_documents_statements,
    count_parked_commands_statements,
    due_documents_statements,
    due_summary_statements,
    load_document_statements,
    load_documents_statements,
)
from service.store.postgres.snapshots import load_from_snapshot_statements
from service.store.records import TOMBSTONE_EVENT_TYPE, DocumentRange, DocumentWrite, LogFilter
from service.store.sql_common import POSTGRES, aggregate_conditions
from tests.support.postgres import Cluster

pytestmark = pytest.mark.postgres


def populate(url: str, events: int, *, analyze: bool) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO chronicle.events (position, event_id, aggregate_id, aggregate_type, version, event_type,"
            " schema_version, payload, command_id, user_id, origin, correlation_id, causation_id, recorded_at)"
            " SELECT g, gen_random_uuid(), 'agg-' || (g %% 1000),"
            " CASE WHEN g %% 100 = 0 THEN 'Account' ELSE 'Tally' END, g / 1000 + 1, 'x', 1, '\\x08'::bytea,"
            " 'c', '', '', '', '', now() FROM generate_series(1, %s) g",
            (events,),
        )
        conn.execute("UPDATE chronicle.log_head SET last_position = %s", (events,))
        if analyze:
            conn.execute("ANALYZE chronicle.events")


def plan(url: str, statement: str, params: list[Any], *, mode: str, settings: str = "") -> str:
    """EXPLAIN of ``statement`` (with ``$n`` parameters) under a plan cache mode
    and ``settings`` (as the store sends them first), run and rolled back."""
    with psycopg.connect(url, options=session_options(lock_timeout=5)) as conn:
        conn.execute(f"SET plan_cache_mode = {mode}")
        if settings:
            conn.execute(settings)
        cursor = psycopg.RawCursor(conn)
        cursor.execute(("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + statement).encode(), params, prepare=True)
        text = "\n".join(row[0] for row in cursor.fetchall())
        conn.rollback()
    return text


def log_page_plan(url: str, log_filter: LogFilter, *, after: int = 0, limit: int = 100) -> str:
    """EXPLAIN of a page of the log as the store reads it (its settings first)."""
    *settings, page = log_page_statements(after, log_filter, limit, 1024 * 1024)
    return plan(
        url,
        page.sql.decode(),
        list(page.params),
        mode="auto",
        settings=";".join(statement.sql.decode() for statement in settings),
    )


def sorted_rows(explained: str) -> list[int]:
    return [int(rows) for rows in re.findall(r"Sort \(actual rows=(\d+)", explained)]


def version_of(aggregate: int, events: int) -> int:
    """The version ``populate`` left aggregate ``agg-N`` at."""
    return (events - aggregate) // 1000 + 1


def batch_of(count: int, events: int) -> list[Any]:
    """A batch of ``count`` appends, one to each of agg-1 … at its version."""
    rows = [
        {"i": i, "id": str(uuid.uuid4()), "a": f"agg-{i}", "t": "Tally", "x": version_of(i, events), "e": "x"}
        | {"v": version_of(i, events) + 1, "s": 1, "p": "08", "m": None, "c": "c", "u": "", "o": "", "r": ""}
        | {"k": "", "at": 1}
        for i in range(1, count + 1)
    ]
    return ["[]", count, json.dumps(rows)]


@pytest.fixture(scope="module")
async def module_databases(pg_cluster: Cluster) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """New databases at the current schema, dropped when the module ends:
    the tests below only EXPLAIN (their statements rolled back), so one
    database serves every test of a size."""
    made: list[str] = []

    async def new() -> str:
        made.append(pg_cluster.create_database())
        store = PostgresStore(made[-1])
        await store.open()
        await store.close()
        return made[-1]

    yield new
    for url in made:
        pg_cluster.drop_database(url)


def without_autovacuum(url: str, table: str) -> None:
    """The table keeps no planner statistics for as long as the module uses
    it (autovacuum would ANALYZE it after a while): "unanalyzed" stays so."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE chronicle.{table} SET (autovacuum_enabled = false)")


@pytest.fixture(
    scope="module", params=[(300, False), (20_000, False), (20_000, True)], ids=["300", "20000-unanalyzed", "20000"]
)
async def log(request: pytest.FixtureRequest, module_databases: Callable[[], Awaitable[str]]) -> tuple[str, int]:
    """A database whose log holds some events (and the planner's statistics
    about them, or none yet): its URL and how many events."""
    url = await module_databases()
    events, analyze = request.param
    without_autovacuum(url, "events")
    populate(url, events, analyze=analyze)
    return url, events


@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
def test_the_batch_append_checks_versions_through_the_index(log: tuple[str, int], mode: str) -> None:
    url, events = log
    explained = plan(url, sql.APPEND_BATCH, batch_of(16, events), mode=mode)
    assert "Index Only Scan using events_aggregate_version_key on events y (actual rows=1 loops=16)" in explained
    assert "Seq Scan on events" not in explained, explained
    assert "events_aggregate_version_key" in explained, explained


@pytest.mark.parametrize("name", ["head", "check_version", "version_at", "events_after_snapshot", "to_version"])
@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
def test_reads_of_one_aggregate_use_its_index(log: tuple[str, int], mode: str, name: str) -> None:
    # A load's events after its snapshot are a prepared statement: its generic
    # plan must read the aggregate's index as the custom one does.
    url, events = log
    cases: dict[str, tuple[str, list[Any]]] = {
        "head": (sql.HEAD, ["agg-7"]),
        "check_version": (sql.CHECK_VERSION, ["agg-7", version_of(7, events)]),
        "version_at": (sql.VERSION_AT, ["agg-7", 1]),
        "events_after_snapshot": (sql.EVENTS_AFTER_SNAPSHOT, ["agg-7", "Tally", "s", 1, None, 3]),
        "to_version": (sql.EVENTS_AFTER_SNAPSHOT, ["agg-7", "Tally", "s", 1, 3, 3]),
    }
    statement, params = cases[name]
    explained = plan(url, statement, params, mode=mode)
    assert "Seq Scan on events" not in explained, f"{name}: {explained}"


def test_reading_an_aggregate_uses_its_index(log: tuple[str, int]) -> None:
    url, _ = log
    conditions = aggregate_conditions(POSTGRES, "agg-7", AggregateQuery())
    explained = plan(
        url, sql.read_aggregate(conditions.where, backwards=False, limit=None), conditions.params, mode="auto"
    )
    assert "Seq Scan on events" not in explained, explained


def test_a_log_page_of_a_rare_aggregate_type_comes_in_position_order_from_its_index(log: tuple[str, int]) -> None:
    url, events = log
    explained = log_page_plan(url, LogFilter(aggregate_types=frozenset({"Account"})), after=events // 2)
    # The page comes straight from the (aggregate_type, position) index, from
    # its first event on, in order: no row of another type is read and left
    # out, and nothing sorts.
    assert "Index Scan using events_by_aggregate_type on events" in explained, explained
    assert "Rows Removed by Filter" not in explained, explained
    assert "JIT" not in explained, explained
    assert sorted_rows(explained) == [], explained


@pytest.mark.parametrize(
    ("log_filter", "index"),
    [
        (LogFilter(event_types=frozenset({"x"})), "events_by_event_type"),
        (LogFilter(aggregate_types=frozenset({"Tally"})), "events_by_aggregate_type"),
        (LogFilter(aggregate_types=frozenset({"Account"}), event_types=frozenset({"x"})), "events_by_event_type"),
        (
            LogFilter(aggregate_types=frozenset({"Account"}), event_types=frozenset({"x", "y"})),
            "events_by_aggregate_type",
        ),
        (LogFilter(aggregate_types=frozenset({"Account"}), origin="admin"), "events_by_aggregate_type"),
    ],
    ids=["event-type", "common-type", "type-and-event-type", "type-and-event-types", "type-and-origin"],
)
def test_a_log_page_of_one_type_is_a_range_of_that_types_index(
    log: tuple[str, int], log_filter: LogFilter, index: str
) -> None:
    url, events = log
    explained = log_page_plan(url, log_filter, after=events // 2)
    assert f"Index Scan using {index} on events" in explained, explained
    assert "Index Cond: ((ROW(" in explained, explained
    assert sorted_rows(explained) == [], explained


def test_an_unfiltered_log_page_is_not_sorted_again_after_the_join(log: tuple[str, int]) -> None:
    url, events = log
    explained = log_page_plan(url, LogFilter(), after=events // 2)
    # The page's rows come out of the join as the page ordered them (the
    # reader checks): no sort of the result on top.
    assert explained.startswith("Nested Loop Left Join"), explained
    if events >= 20_000:  # a small table may be read whole, and its page sorted
        assert "Index Scan using events_pkey on events" in explained, explained
        assert sorted_rows(explained) == [], explained


def imported_batch(count: int, events: int) -> str:
    """``count`` events to import, each the next of agg-1 … (import's JSON)."""
    rows = [
        {"i": i, "id": str(uuid.uuid4()), "a": f"agg-{i}", "t": "Tally", "v": version_of(i, events) + 1, "e": "x"}
        | {"s": 1, "p": "08", "m": None, "c": "c", "u": "", "o": "", "r": "", "k": "", "at": 1, "j": None}
        for i in range(1, count + 1)
    ]
    return json.dumps(rows)


def tombstone_json() -> str:
    return json.dumps(
        [
            {"id": str(uuid.uuid4()), "e": TOMBSTONE_EVENT_TYPE, "s": 1, "p": "", "m": None}
            | {"c": "", "u": "", "o": "admin", "r": "", "k": "", "at": 1}
        ]
    )


@pytest.mark.parametrize("name", ["import_check", "import", "delete_aggregate", "aggregates_page"])
@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
def test_imports_deletions_and_archive_listings_read_by_index(log: tuple[str, int], mode: str, name: str) -> None:
    # What issue 17 added for logs that grow: none of it may read the whole
    # events table (an import batch, deleting one aggregate, a page of
    # aggregates for `chronicle archive`).
    url, events = log
    cases: dict[str, tuple[str, list[Any]]] = {
        "import_check": (sql.IMPORT_EVENTS_CHECK, [imported_batch(16, events), TOMBSTONE_EVENT_TYPE]),
        "import": (sql.IMPORT_EVENTS, [imported_batch(16, events)]),
        "delete_aggregate": (sql.DELETE_AGGREGATE, ["agg-7", -1, tombstone_json(), TOMBSTONE_EVENT_TYPE]),
        "aggregates_page": (sql.AGGREGATES_PAGE, ["agg-5", 20]),
    }
    statement, params = cases[name]
    explained = plan(url, statement, params, mode=mode)
    assert "Seq Scan on events" not in explained, f"{name}: {explained}"
    assert "Bitmap Heap Scan on events" not in explained or name == "delete_aggregate", f"{name}: {explained}"


@pytest.mark.parametrize("analyze", [False, True], ids=["unanalyzed", "analyzed"])
@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
async def test_retention_finds_the_oldest_command_records_by_their_time_index(
    postgres_url: str, mode: str, analyze: bool
) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    await store.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        # 20,000 command records, one a second over the last five and a half hours
        conn.execute(
            "INSERT INTO chronicle.commands (command_id, aggregate_id, command_type, fingerprint, first_version,"
            " last_version, recorded_at) SELECT gen_random_uuid()::text, 'agg-' || (g % 1000), 't', '\\x00', 1, 1,"
            " now() - make_interval(secs => g) FROM generate_series(1, 20000) g"
        )
        if analyze:
            conn.execute("ANALYZE chronicle.commands")
    an_hour_ago_us = (int(time.time()) - 3600) * 1_000_000
    explained = plan(postgres_url, sql.PRUNE_COMMANDS, [an_hour_ago_us, 500], mode=mode)
    # a batch: 500 found by the time index, deleted through the primary key
    assert "Index Scan using commands_by_time on commands" in explained, explained
    assert "Seq Scan on commands" not in explained, explained
    assert "Index Cond: (command_id = ANY" in explained, explained


@pytest.mark.parametrize(
    "log_filter",
    [
        LogFilter(aggregate_types=frozenset({"Account", "Other"})),
        LogFilter(event_types=frozenset({"x", "y", "z"})),
        LogFilter(aggregate_types=frozenset({"Account"}), event_types=frozenset({"x", "y"})),
    ],
    ids=["two-types", "three-event-types", "type-and-event-types"],
)
def test_a_log_page_filtered_to_several_types_sorts_no_more_than_the_page(
    log: tuple[str, int], log_filter: LogFilter
) -> None:
    # A projection's filter names several event types: each page of its
    # catch-up must not read (and sort) every later match.
    url, _ = log
    explained = log_page_plan(url, log_filter)
    assert "Seq Scan on events" not in explained, explained
    assert all(rows <= 100 for rows in sorted_rows(explained)), explained


@pytest.fixture(
    scope="module",
    params=[(10, True), (300, False), (50_000, False), (50_000, True)],
    ids=["10-just-begun", "300", "50000-unanalyzed", "50000"],
)
async def documents(request: pytest.FixtureRequest, module_databases: Callable[[], Awaitable[str]]) -> str:
    """A database holding a projection's documents (and another's), and the
    planner's statistics about them or none yet. "Just begun": a few
    documents and statistics saying so (autovacuum's first ANALYZE),
    data_keys analyzed empty."""
    postgres_url = await module_databases()
    without_autovacuum(postgres_url, "projection_documents")
    without_autovacuum(postgres_url, "data_keys")
    count, analyze = request.param
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO chronicle.projection_documents (projection, key, type_name, data)"
            " SELECT CASE WHEN g %% 2 = 0 THEN 'p' ELSE 'q' END, 'owner:' || g, 't.Doc', '\\x08'::bytea"
            " FROM generate_series(1, %s) g",
            (count,),
        )
        if analyze:
            conn.execute("ANALYZE chronicle.projection_documents")
            conn.execute("ANALYZE chronicle.data_keys")
    return postgres_url


@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
def test_documents_are_listed_by_prefix_from_the_primary_key_in_order(documents: str, mode: str) -> None:
    for prefix, after, descending in itertools.product(["owner:1", ""], [None, "owner:1"], [False, True]):
        listing = DocumentRange(prefix=prefix, after=after, descending=descending, limit=100)
        lower, inclusive, upper = listing.bounds()
        statement = sql.list_documents(lower_inclusive=inclusive, upper=upper is not None, descending=descending)
        params: list[Any] = ["p", lower, *(() if upper is None else (upper,)), 100]
        explained = plan(documents, statement, params, mode=mode, settings=sql.DOCUMENT_PAGE_SETTINGS)
        assert "projection_documents_pkey" in explained, explained
        assert "Seq Scan" not in explained and "Sort" not in explained, explained
        # The range is the prefix's: no key outside it is read and filtered out.
        assert "Rows Removed by Filter" not in explained, explained


@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
def test_documents_are_counted_from_a_range_of_the_primary_key_up_to_the_limit(documents: str, mode: str) -> None:
    # CountDocuments: the prefix's range of the index, its entries alone,
    # never more of them than the limit (10 here; the 50,000 fixtures hold
    # 25,000 of "p"), whatever the table holds or the planner believes.
    for prefix in ["owner:1", ""]:
        *settings, statement = count_documents_statements("p", prefix, 10)
        explained = plan(
            documents,
            statement.sql.decode(),
            list(statement.params),
            mode=mode,
            settings=";".join(setting.sql.decode() for setting in settings),
        )
        assert "Index Only Scan using projection_documents_pkey" in explained, explained
        assert "Seq Scan" not in explained and "Rows Removed by Filter" not in explained, explained
        assert all(int(rows) <= 10 for rows in re.findall(r"actual rows=(\d+)", explained)), explained


@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
def test_a_reactions_parked_commands_are_counted_from_their_index_alone(documents: str, mode: str) -> None:
    # GetReaction counts them: from the partial index of parked commands,
    # not by filtering every document of the reaction (its process states
    # may be millions; the fixture's are 't.Doc').
    settings, statement = count_parked_commands_statements("p")
    explained = plan(
        documents, statement.sql.decode(), list(statement.params), mode=mode, settings=settings.sql.decode()
    )
    assert "Index Only Scan using projection_documents_parked_commands" in explained, explained
    assert "Seq Scan" not in explained and "Rows Removed by" not in explained, explained


@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
@pytest.mark.parametrize("read", ["due_documents", "due_summary"])
def test_a_reactions_deadlines_are_read_and_counted_from_their_index_alone(
    documents: str, mode: str, read: str
) -> None:
    # The runner reads the due ones, GetReaction counts them: from the
    # partial index of documents with a due time (the fixture's have none),
    # not by filtering every document of the reaction.
    settings, statement = (
        due_documents_statements("p", 2**62, 100) if read == "due_documents" else due_summary_statements("p")
    )
    explained = plan(
        documents, statement.sql.decode(), list(statement.params), mode=mode, settings=settings.sql.decode()
    )
    assert "projection_documents_due" in explained, explained
    assert "Seq Scan" not in explained and "Rows Removed by" not in explained, explained


def commit_of(*writes: DocumentWrite) -> list[Statement]:
    return commit_projection_statements("p", 4, 5, writes, None, ())


@pytest.mark.parametrize("name", ["load_document", "load_documents", "delete_documents", "check_subjects"])
@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
def test_documents_are_read_and_written_by_key_through_their_index(documents: str, mode: str, name: str) -> None:
    # A read model starts empty: a plan made then (a prepared statement's
    # generic plan) must still probe the index once the table holds millions.
    # The statements as the store sends them, the operation's settings first.
    cases: dict[str, tuple[list[Statement], bytes, str]] = {
        "load_document": (load_document_statements("p", "owner:2"), b"", "projection_documents_pkey"),
        "load_documents": (
            load_documents_statements("p", ["owner:2", "owner:4", "owner:9"]),
            b"",
            "projection_documents_pkey",
        ),
        "delete_documents": (
            commit_of(DocumentWrite("owner:2"), DocumentWrite("owner:4")),
            b"DELETE",
            "projection_documents_pkey",
        ),
        "check_subjects": (
            commit_of(DocumentWrite("owner:2", "t.Doc", b"", ("acc-1", "acc-2"))),
            b"data_keys",
            "data_keys_pkey",
        ),
    }
    statements, marker, index = cases[name]
    settings, *rest = statements
    assert settings.sql.decode() == sql.BY_KEY_SETTINGS
    statement = next(s for s in rest if marker in s.sql) if marker else rest[-1]
    explained = plan(
        documents, statement.sql.decode(), list(statement.params), mode=mode, settings=settings.sql.decode()
    )
    assert index in explained, f"{name}: {explained}"
    assert "Seq Scan" not in explained, f"{name}: {explained}"
    # Each key is probed, not filtered out of every document of the
    # projection: written as `key = ANY($2)`, a plan made while the read
    # model was small (or while its statistics said so) read the whole
    # projection for every batch once it held 140,000 documents (a rebuild
    # at 3,600 events/s instead of 28,000).
    if name != "check_subjects":
        assert "Rows Removed by" not in explained, f"{name}: {explained}"
        assert "Hash Join" not in explained and "Bitmap" not in explained, f"{name}: {explained}"


@pytest.fixture(
    scope="module",
    params=[(5, True), (20_000, False), (20_000, True)],
    ids=["5-just-begun", "20000-unanalyzed", "20000"],
)
async def snapshots(request: pytest.FixtureRequest, module_databases: Callable[[], Awaitable[str]]) -> str:
    """A database holding snapshots of some aggregates (a deployment that
    has just begun: a few, and statistics saying so)."""
    postgres_url = await module_databases()
    without_autovacuum(postgres_url, "snapshots")
    count, analyze = request.param
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO chronicle.snapshots (aggregate_id, aggregate_type, version, state_type, schema_version, state)"
            " SELECT 'agg-' || g, 'Tally', 1, 's', 1, '\\x08'::bytea FROM generate_series(1, %s) g",
            (count,),
        )
        if analyze:
            conn.execute("ANALYZE chronicle.snapshots")
    return postgres_url


@pytest.mark.parametrize("to_version", [None, 3])
@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
def test_an_aggregates_latest_snapshot_is_read_from_its_index(
    snapshots: str, mode: str, to_version: int | None
) -> None:
    settings, latest, _ = load_from_snapshot_statements("agg-2", SnapshotKind("Tally", "s", 1), to_version)
    assert settings.sql.decode() == sql.BY_KEY_SETTINGS
    explained = plan(snapshots, latest.sql.decode(), list(latest.params), mode=mode, settings=settings.sql.decode())
    assert "snapshots_pkey" in explained, explained
    assert "Seq Scan" not in explained and "Sort" not in explained, explained


@pytest.mark.parametrize("name", ["stored_projections", "delete_documents_page"])
@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
def test_stored_projections_are_found_and_deleted_through_the_primary_key(documents: str, mode: str, name: str) -> None:
    # ListProjections' orphans walk the documents' names one index probe per
    # name; DeleteProjection's pages are key ranges of one projection: with
    # millions of documents, neither reads the table through (the store sends
    # them under BY_KEY_SETTINGS, as its other reads and writes by key).
    statement, params = {
        "stored_projections": (sql.STORED_PROJECTIONS, []),
        "delete_documents_page": (sql.DELETE_DOCUMENTS_PAGE, ["p", 10]),
    }[name]
    explained = plan(documents, statement, params, mode=mode, settings=sql.BY_KEY_SETTINGS)
    assert "projection_documents_pkey" in explained, explained
    assert "Seq Scan on projection_documents" not in explained, explained
