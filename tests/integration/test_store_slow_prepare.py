"""A statement whose preparation PostgreSQL refuses (a lock held past
``lock_timeout`` while a fresh connection parses it) fails the operations
pipelined behind it as it failed, never on the statement missing.

connection.py prepares a named statement in an operation of its own before
its first use; the operations sent meanwhile that use it (the same call's,
and other calls' pipelined on the connection) then fail on the missing
statement (SQLSTATE 26000, ``InvalidSqlStatementName``), which nothing
translated: commands failed INTERNAL "internal error". They now fail as the
preparation did (a lock timeout: ``StoreUnavailable``, UNAVAILABLE with a
``RetryInfo``; the lock timeout is the server log's, the caller hears that
the store is unavailable), and none of them ran: their retries, with the same command
ids, append each command once.

The fault is real: ``LOCK TABLE chronicle.events IN ACCESS EXCLUSIVE MODE``
held in another session for longer than the store's ``lock_timeout`` while a
freshly opened store, or a freshly started server, takes a burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
import psycopg
import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.api import status
from service.errors import STORE_UNREACHABLE, StoreUnavailable
from service.store.postgres import PostgresStore
from service.store.postgres.connection import Statement
from service.store.postgres.database import Database
from service.store.records import ClaimChange, RecordedEvent
from tests.support.events import command_record, new_event
from tests.support.grpc_client import command, details_of, running_server, submit_retrying

pytestmark = pytest.mark.postgres

LOCK_TIMEOUT = 0.3  # seconds: the store's; the lock is held for longer


@contextlib.asynccontextmanager
async def _events_locked(url: str) -> AsyncIterator[None]:
    """``chronicle.events`` locked against every access (parsing a
    statement that names it included) until the block ends."""
    async with await psycopg.AsyncConnection.connect(url) as holder:
        await holder.execute("LOCK TABLE chronicle.events IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            await holder.rollback()


async def _schema(url: str) -> None:
    store = PostgresStore(url, pool_size=1)
    await store.open()
    await store.close()


async def _events_of(url: str, command_id: str) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        row = await (
            await conn.execute("SELECT count(*) FROM chronicle.events WHERE command_id = %s", (command_id,))
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_appends_behind_a_refused_preparation_fail_as_it_did_and_append_once_when_retried(
    postgres_url: str,
) -> None:
    await _schema(postgres_url)
    store = PostgresStore(postgres_url, pool_size=4, lock_timeout=LOCK_TIMEOUT)
    await store.open()  # no connection of its own yet: its first append prepares the batch statement
    try:
        records = [command_record(f"acc-{i}", 1, 1) for i in range(8)]
        claimed = command_record("user-1", 1, 1)
        email = ClaimChange("users.email", "ann@example.com")

        def burst() -> list[asyncio.Task[list[RecordedEvent]]]:
            calls = [
                asyncio.ensure_future(
                    store.append(r.aggregate_id, [new_event(command_id=r.command_id)], 0, commands=[r])
                )
                for r in records
            ]
            # The precise path (an append with claims): its statements and
            # the batch statement's preparation in one pipeline too.
            calls.append(
                asyncio.ensure_future(
                    store.append(
                        "user-1", [new_event(command_id=claimed.command_id)], 0, commands=[claimed], claims=[email]
                    )
                )
            )
            return calls

        async with _events_locked(postgres_url):
            outcomes = await asyncio.gather(*burst(), return_exceptions=True)
        for outcome in outcomes:
            assert isinstance(outcome, StoreUnavailable), repr(outcome)  # not InvalidSqlStatementName
            assert outcome.reason == "STORE_UNAVAILABLE"
            assert "lock timeout" in str(outcome), str(outcome)  # the detail, for the log (callers hear less)

        # None of them ran: sent again, each appends once.
        again = await asyncio.gather(*burst())
        assert all(len(events) == 1 for events in again)
        for record in [*records, claimed]:
            assert await _events_of(postgres_url, record.command_id) == 1
    finally:
        await store.close()


async def test_a_fresh_server_under_a_burst_while_the_log_is_locked_answers_unavailable_never_internal(
    postgres_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(status, "STORE_LOG_EVERY", 0.0)  # each failure logged, whatever other tests logged
    caplog.set_level(logging.WARNING, logger="service.api.status")
    await _schema(postgres_url)
    store = PostgresStore(postgres_url, pool_size=4, lock_timeout=LOCK_TIMEOUT)
    async with running_server(store) as (_, client):
        commands = [command(f"acc-{i}", bank.OpenAccount(owner=f"owner-{i}")) for i in range(16)]
        async with _events_locked(postgres_url):
            outcomes = await asyncio.gather(*(client.submit(c) for c in commands), return_exceptions=True)
        refused = []
        for outcome in outcomes:
            assert isinstance(outcome, grpc.aio.AioRpcError), outcome  # nothing can touch the log meanwhile
            details = details_of(outcome)
            assert (details.code, details.reason, details.retry) == (
                grpc.StatusCode.UNAVAILABLE,
                "STORE_UNAVAILABLE",
                True,
            ), details
            refused.append(details)
        # The caller hears that the store is unavailable; the log, why (the driver's text).
        assert {d.message for d in refused} == {STORE_UNREACHABLE}, refused
        assert any("lock timeout" in r.getMessage() for r in caplog.records if r.name == "service.api.status")
        # Retried with their ids once the lock is gone: each opened once.
        for built in commands:
            response = await submit_retrying(client, built)
            assert response.version == 1
            assert await _events_of(postgres_url, built.command_id) == 1


async def test_a_statement_gone_from_its_connection_is_unavailable_once_then_prepared_again(postgres_url: str) -> None:
    """A prepared statement the session lost (``DEALLOCATE ALL``: nothing
    Chronicle sends, but a pooler in transaction mode would do as much):
    the call that finds it missing is ``StoreUnavailable`` (nothing of it
    ran), and the connection prepares it again for the next one instead of
    failing every use for the rest of its life."""
    db = Database(postgres_url, connections=1, connect_timeout=5.0, lock_timeout=5.0)
    await db.open()
    try:
        plus_one = Statement.prepared("SELECT $1::int + 1", (1,))
        assert (await db.run("plus one", [plus_one]))[0].get_value(0, 0) == b"2"
        await db.run("deallocate", [Statement(b"DEALLOCATE ALL")])
        with pytest.raises(StoreUnavailable) as raised:
            await db.run("plus one", [plus_one])
        assert raised.value.reason == "STORE_UNAVAILABLE"
        assert "does not exist" in str(raised.value)  # the detail, for the log
        assert (await db.run("plus one", [plus_one]))[0].get_value(0, 0) == b"2"
    finally:
        await db.close()
