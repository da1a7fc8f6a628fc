"""Retention on a running server, over a real socket: command records and
refusals past their window are pruned in the background, a retry of a
pruned command runs again (as the docs warn), and pruning goes a small
batch at a time with appends going on between batches."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2, wrappers_pb2

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import command_service_pb2 as cs
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.processing.retention import Pruner
from service.store.base import StoreAdapter
from tests.support.events import command_record
from tests.support.grpc_client import command, details_of, running_server
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres


@pytest.fixture(params=["sqlite", "postgres"])
async def sql_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreAdapter:
    if request.param == "sqlite":
        from service.store.sqlite import SqliteStore

        return SqliteStore(tmp_path / "events.db")
    from service.store.postgres import PostgresStore

    return PostgresStore(request.getfixturevalue("postgres_url"), pool_size=4)


async def test_a_retry_after_the_window_runs_again_and_old_refusals_leave_the_audit(sql_store: StoreAdapter) -> None:
    async with running_server(
        sql_store,
        anonymous_admin=True,
        command_retention=0.2,
        allow_short_retention=True,
        refusal_retention=0.2,
        retention_interval=0.05,
    ) as (_, client):
        deposit = command("acc-1", bank.Deposit(amount=5))
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        first = await client.submit(deposit)
        assert (first.version, first.replayed) == (2, False)
        unknown = any_pb2.Any()
        unknown.Pack(wrappers_pb2.StringValue(value="x"))  # no plugin's command: refused before a handler
        odd = command("acc-1", bank.Deposit(amount=1))
        odd.payload.CopyFrom(unknown)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.commands.Submit(cs.SubmitRequest(command=odd))
        assert details_of(refused.value).reason == "UNKNOWN_COMMAND_TYPE"

        async def pruned() -> bool:
            return await sql_store.find_command(deposit.command_id) is None

        await eventually(pruned, what="the deposit's record pruned")

        async def refusal_pruned() -> bool:
            audit = await client.admin.QueryAudit(admin.QueryAuditRequest(command_id=odd.command_id))
            return not audit.entries

        await eventually(refusal_pruned, what="the refusal's audit entry pruned")
        again = await client.submit(deposit)  # its record is gone: a new command
        assert (again.version, again.replayed) == (3, False)


class Timed:
    """The store's retention role, noting each batch; after each of the
    first ``interleaved`` batches it waits for an append to complete (one
    that pruning blocked would not: the wait times out)."""

    def __init__(self, inner: StoreAdapter, *, interleaved: int) -> None:
        self._inner = inner
        self._interleaved = interleaved
        self.batches: list[int] = []
        self.appends = 0
        self._appended = asyncio.Condition()

    async def append_completed(self) -> None:
        async with self._appended:
            self.appends += 1
            self._appended.notify_all()

    async def prune_commands(self, recorded_before_us: int, limit: int) -> int:
        done = await self._inner.prune_commands(recorded_before_us, limit)
        self.batches.append(done)
        if len(self.batches) <= self._interleaved:
            async with self._appended:
                seen = self.appends
                await asyncio.wait_for(self._appended.wait_for(lambda: self.appends > seen), 10)
        return done

    async def prune_refusals(self, recorded_before_us: int, limit: int) -> int:
        return await self._inner.prune_refusals(recorded_before_us, limit)


async def test_pruning_goes_a_batch_at_a_time_while_appends_go_on(sql_store: StoreAdapter) -> None:
    async with running_server(sql_store) as (_, client):
        old = [
            replace(command_record("old", 1, 0, command_id=f"old-{n:05}"), recorded_at_us=1_000 + n)
            for n in range(3_000)
        ]
        await sql_store.import_commands(old)
        timed = Timed(sql_store, interleaved=3)
        pruner = Pruner(timed, command_retention=3600, refusal_retention=0, batch=100)
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        pruning = asyncio.ensure_future(pruner.prune())
        while not pruning.done():
            await client.submit(command("acc-1", bank.Deposit(amount=1)))
            await timed.append_completed()
        # Appends completed between the batches (each batch its own short
        # transaction), and the pruning went on to the end, 100 at a time.
        assert (await pruning).commands == 3_000
    assert len(timed.batches) == 31 and max(timed.batches) == 100
    assert timed.appends >= 3


async def test_replicas_pruning_at_once_skip_the_rows_the_other_holds(postgres_url: str) -> None:
    """A row locked by another transaction (another replica's batch) is
    skipped, not waited for."""
    import psycopg

    from service.store.postgres import PostgresStore

    store = PostgresStore(postgres_url, pool_size=2, lock_timeout=30)
    await store.open()
    try:
        old = [replace(command_record("old", 1, 0, command_id=f"old-{n}"), recorded_at_us=1_000 + n) for n in range(3)]
        await store.import_commands(old)
        async with await psycopg.AsyncConnection.connect(postgres_url) as other:
            await other.execute("SELECT 1 FROM chronicle.commands WHERE command_id = 'old-0' FOR UPDATE")
            assert await asyncio.wait_for(store.prune_commands(10**15, 10), timeout=10) == 2
            await other.rollback()
        assert await store.prune_commands(10**15, 10) == 1
    finally:
        await store.close()
