"""docs/performance.md, its mechanism claims that need no PostgreSQL server
(those that do: tests/integration/test_performance_claims.py), where no
other test held them:

- an idle worker is just its cached state: no task, no timer, however many
  aggregates are idle;
- every method is served through one generic handler, none registered with
  gRPC by name;
- group commit on PostgreSQL: one batch in flight, and after a batch of
  several the next gathers for 2 ms while fewer than eight appends wait;
- a read model's commit: the forgotten-subjects check reads the documents'
  own JSON (the string the documents' write carries, repeats and all, not a
  distinct sorted array), the writes travel as four flat JSON arrays, each
  deleted key is a statement of its own;
- the records a read model's documents are made of are not frozen
  dataclasses at run time (and the runner's cache holds tuples);
- SQLite: the log's end is MAX(position) of the rowid, an aggregate's head
  and its events probes of the (aggregate_id, version) index, a list of
  documents one statement through IN json_each(?)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio._server
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from chronicle.v1 import command_service_pb2
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.api.health import SERVICE_NAMES
from service.api.server import MethodTable
from service.plugins.registry import Registry
from service.processing import projections
from service.processing.commands import CommandRequest
from service.processing.executor import CommandExecutor
from service.processing.router import Router
from service.store.base import AggregateQuery, Store
from service.store.memory import MemoryStore
from service.store.postgres import PostgresStore, sql
from service.store.postgres.projections import commit_projection_statements
from service.store.records import DocumentWrite, StoredDocument
from service.store.sql_common import SQLITE, aggregate_conditions
from service.store.sqlite import SqliteStore
from service.store.sqlite import sql as sqlite_sql
from tests.support.grpc_client import command, running_server

REGISTRY = Registry([bank_account.plugin])


# -- idle workers -----------------------------------------------------------------------


def timers(loop: asyncio.AbstractEventLoop) -> int:
    """How many timers the event loop holds (asyncio's own list of them)."""
    scheduled: list[Any] = getattr(loop, "_scheduled")  # noqa: B009 (private: no public count)
    return sum(not handle.cancelled() for handle in scheduled)


async def test_an_idle_worker_is_its_cached_state_with_no_task_and_no_timer() -> None:
    loop = asyncio.get_running_loop()
    router = Router(CommandExecutor(Store.of(MemoryStore()), REGISTRY), idle_timeout=3600)
    before = asyncio.all_tasks()

    spec = REGISTRY.command(bank.OpenAccount.DESCRIPTOR.full_name)
    assert spec is not None

    async def open_accounts(first: int, count: int) -> None:
        assert spec is not None
        await asyncio.gather(
            *(
                router.submit(CommandRequest(f"c-{n}", f"acc-{n}", spec, bank.OpenAccount(owner="ann")))
                for n in range(first, first + count)
            )
        )

    try:
        await open_accounts(0, 1)
        with_one = timers(loop)
        await open_accounts(1, 500)
        await asyncio.sleep(0)  # the last tasks' ends
        assert router.live_workers == 501
        workers = list(router._workers.values())
        assert all(worker.task is None and not worker.busy for worker in workers)
        # Besides the router's one sweeper, nothing runs for them, and the
        # loop holds no more timers for 501 idle aggregates than for one.
        running = {task.get_name() for task in asyncio.all_tasks() - before}
        assert running == {"aggregate-sweeper"}
        assert timers(loop) == with_one
    finally:
        await router.close()


# -- one table of methods ---------------------------------------------------------------


class _Call:
    """What a generic handler is asked with: the method's full name."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata: tuple[tuple[str, str], ...] = ()


async def test_every_method_is_served_by_one_generic_handler_and_none_is_registered_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server_class = grpc.aio._server.Server
    generic: list[Sequence[grpc.GenericRpcHandler]] = []
    registered: list[str] = []
    add_generic = server_class.add_generic_rpc_handlers
    add_registered = server_class.add_registered_method_handlers

    def observed_generic(server: Any, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        generic.append(handlers)
        add_generic(server, handlers)

    def observed_registered(server: Any, service: str, handlers: Any) -> None:
        registered.append(service)
        add_registered(server, service, handlers)

    monkeypatch.setattr(server_class, "add_generic_rpc_handlers", observed_generic)
    monkeypatch.setattr(server_class, "add_registered_method_handlers", observed_registered)
    async with running_server(MemoryStore()) as (_, client):
        answered = await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    assert answered.version == 1
    assert registered == []
    assert len(generic) == 1 and len(generic[0]) == 1
    (table,) = generic[0]
    assert isinstance(table, MethodTable)
    services = [
        *(command_service_pb2.DESCRIPTOR.pool.FindServiceByName(name) for name in SERVICE_NAMES),
        health_pb2.DESCRIPTOR.services_by_name["Health"],
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
    ]
    methods = [f"/{service.full_name}/{method.name}" for service in services for method in service.methods]
    assert len(methods) > 30
    missing = [method for method in methods if table.service(_Call(method)) is None]
    assert missing == []


# -- group commit's settings on PostgreSQL -------------------------------------------------


def test_postgres_group_commit_has_one_batch_in_flight_and_gathers_2_ms_while_fewer_than_eight_wait() -> None:
    store = PostgresStore("postgresql://nobody@127.0.0.1:1/none")  # never opened: nothing connects
    group = store._group
    assert (group._in_flight, group._gather, group._gather_below) == (1, 0.002, 8)


# -- a read model's commit ------------------------------------------------------------


def test_a_read_models_commit_checks_forgotten_subjects_from_the_documents_own_json() -> None:
    writes = [
        DocumentWrite("owner:ann", "t.Doc", b"\x08\x01", ("acc-2", "acc-1")),
        DocumentWrite("owner:bob", "t.Doc", b"\x08\x02", ("acc-1",)),
        DocumentWrite("owner:cy"),
        DocumentWrite("owner:dan"),
    ]
    statements = commit_projection_statements("p", 4, 9, writes, None, ())
    by_sql = {statement.sql: statement for statement in statements}
    check, put = by_sql[sql.CHECK_SUBJECTS.encode()], by_sql[sql.PUT_DOCUMENTS.encode()]
    # The check's one parameter is the documents' subjects as the write
    # carries them: the same JSON (the same string), each document's own
    # list in order, repeats kept; no array of distinct names built for it.
    assert check.params == (put.params[4],)
    assert check.params[0] is put.params[4]
    assert json.loads(str(put.params[4])) == [["acc-2", "acc-1"], ["acc-1"]]
    # The writes: four flat JSON arrays (keys, type names, data in hex,
    # subjects), zipped back into rows by ROWS FROM.
    assert put.params[0] == "p"
    assert [json.loads(str(column)) for column in put.params[1:4]] == [
        ["owner:ann", "owner:bob"],
        ["t.Doc", "t.Doc"],
        ["0801", "0802"],
    ]
    assert "ROWS FROM" in sql.PUT_DOCUMENTS
    # Each deleted key is a statement of its own.
    deletes = [s.params for s in statements if s.sql == sql.DELETE_DOCUMENT.encode()]
    assert deletes == [("p", "owner:cy"), ("p", "owner:dan")]


def test_documents_and_their_writes_are_no_frozen_dataclasses_at_run_time_and_the_cache_holds_tuples() -> None:
    # A frozen dataclass's __init__ sets each field through
    # object.__setattr__; the type checker still sees them frozen.
    for record in (StoredDocument, DocumentWrite):
        assert dataclasses.is_dataclass(record)
        params = getattr(record, "__dataclass_params__")  # noqa: B009
        assert params.frozen is False, record
    cache = projections.DocumentCache(10)
    cache.put("owner:ann", projections._Raw("t.Doc", b"\x08\x01"))
    cached = cache.get("owner:ann")
    assert isinstance(cached, tuple) and not dataclasses.is_dataclass(cached)


# -- SQLite: what the command path reads ------------------------------------------------


def query_plan(path: Path, statement: str, params: Any) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return [str(row[3]) for row in db.execute("EXPLAIN QUERY PLAN " + statement, list(params))]


async def test_on_sqlite_the_log_end_and_an_aggregates_head_and_events_are_index_probes(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    store = SqliteStore(path)
    await store.open()
    await store.close()
    # The log's end: MAX of the rowid, one descent of the table's b-tree,
    # and the last position handed out, in sqlite_sequence: a row per
    # AUTOINCREMENT table (two in the schema), scanned.
    assert query_plan(path, sqlite_sql.LOG_HEAD, []) == [
        "SCAN CONSTANT ROW",
        "SCALAR SUBQUERY 1",
        "SEARCH events",
        "SCALAR SUBQUERY 2",
        "SCAN sqlite_sequence",
    ]
    with contextlib.closing(sqlite3.connect(path)) as db:
        autoincrement = db.execute("SELECT count(*) FROM sqlite_master WHERE sql LIKE '%AUTOINCREMENT%'").fetchone()
    assert autoincrement == (2,)
    # An append's version check, an aggregate's head and its events: the
    # (aggregate_id, version) index.
    with contextlib.closing(sqlite3.connect(path)) as db:
        (index,) = [
            row[1]
            for row in db.execute("PRAGMA index_list(events)")
            if [c[2] for c in db.execute(f"PRAGMA index_info({row[1]})")] == ["aggregate_id", "version"]
        ]
    conditions = aggregate_conditions(SQLITE, "acc-1", AggregateQuery(from_version=3))
    for statement, params in [
        (sqlite_sql.CURRENT_VERSION, ["acc-1"]),
        (sqlite_sql.HEAD, ["acc-1"]),
        (sqlite_sql.read_aggregate(conditions.where, backwards=False, limited=False), conditions.params),
    ]:
        steps = query_plan(path, statement, params)
        assert len(steps) == 1, steps
        assert re.fullmatch(rf"SEARCH events USING (COVERING )?INDEX {index} \(aggregate_id=\?.*\)", steps[0]), steps
    # A read model's missing documents: one statement, keys through json_each.
    steps = query_plan(path, sqlite_sql.LOAD_DOCUMENTS, ["p", json.dumps(["k-1", "k-2"])])
    assert "json_each" in sqlite_sql.LOAD_DOCUMENTS
    assert steps[0].startswith("SEARCH projection_documents USING INDEX"), steps
    assert "(projection=? AND key=?)" in steps[0], steps
