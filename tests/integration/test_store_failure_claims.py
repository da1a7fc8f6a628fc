"""What the PostgreSQL store promises when a write's connection dies, and
when a snapshot save races a deletion or an overwriting import.

A write is never sent twice (service/store/postgres/database.py, module
docstring: "A connection that breaks fails only the operations it carried;
an operation that only reads is sent once more on another connection, one
that writes is not (its outcome is unknown: the caller retries with the
same command id and idempotency decides)"). Both ways an append is written
are held to it: group commit's batch (``Database.submit``, appends.py
``AppendWriter._first_try``) and the precise path of an append with claims
(``Database.run``). The fault is real: the append's backend terminated
while its transaction waits for the position lock (it committed nothing),
or a proxy that delivers the append to PostgreSQL, holds back its answer
until it has committed, then cuts the connection (it committed; the store
cannot know).

A snapshot saved in the background does not bring back a state a deletion
or an overwriting import removed meanwhile: docs/export-format.md, "on
PostgreSQL the save and the deletion wait for each other" and "a snapshot
that a server was saving in the background when the history was replaced
is not kept" (sql.SNAPSHOT_LOCK_LAST_EVENT, SAVE_SNAPSHOT). The store
contract checks the saves that come after (service/store_contract/
test_transfer.py); here the two transactions overlap, in either order, on
two replicas' stores, interleaved by a row lock a third session holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.errors import CommandAlreadyRecorded, StoreUnavailable
from service.plugins.registry import Registry
from service.processing.commands import CommandRequest
from service.processing.executor import CommandExecutor
from service.processing.router import Router
from service.store.base import Store
from service.store.postgres import PostgresStore
from service.store.records import TOMBSTONE_EVENT_TYPE, ClaimChange, NewEvent, RecordedEvent, Snapshot
from tests.support.events import command_record, new_event, recorded_event
from tests.support.faults import appends_blocked, terminate_backends, waiting_on_locks
from tests.support.silent_proxy import SilentProxy
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

REGISTRY = Registry([bank_account.plugin])
# Long enough that a write sent again behind the held position lock would
# still be waiting (seen in pg_stat_activity) when the test looks, instead
# of failing on the lock timeout like the first attempt's error would.
LOCK_TIMEOUT = 60.0


async def _scalar(url: str, query: str, *params: object) -> int:
    """One number, read from PostgreSQL directly (not through the store)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        row = await (await conn.execute(query, params)).fetchone()
    assert row is not None
    return int(row[0])


async def _waiters(url: str) -> int:
    return await asyncio.to_thread(waiting_on_locks, url)


async def _events_of_command(url: str, command_id: str) -> int:
    return await _scalar(url, "SELECT count(*) FROM chronicle.events WHERE command_id = %s", command_id)


async def _commands_recorded(url: str, command_id: str) -> int:
    return await _scalar(url, "SELECT count(*) FROM chronicle.commands WHERE command_id = %s", command_id)


@contextlib.asynccontextmanager
async def _opened(url: str, **options: Any) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(url, pool_size=4, **options)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


# -- a write's connection dies ------------------------------------------------


def _events(command_id: str, count: int) -> list[NewEvent]:
    return [new_event(command_id=command_id) for _ in range(count)]


@pytest.mark.parametrize("path", ["group commit", "precise"])
async def test_an_append_whose_connection_is_killed_is_not_sent_again_and_its_retry_appends_once(
    postgres_store: PostgresStore,  # the schema
    postgres_url: str,
    path: str,
) -> None:
    """The append waits inside its transaction for the position lock (its
    command record written), its backend is terminated: the caller hears
    ``StoreUnavailable`` while the lock is still held (a resend would wait
    behind it), nothing is appended, and the retry under the same command id
    appends the events once; a second retry is told the command is recorded."""
    claims = [ClaimChange("things.name", f"name-{path}")] if path == "precise" else []
    aggregate_id = f"killed-{path.replace(' ', '-')}"
    record = command_record(aggregate_id, 1, 2)
    async with _opened(postgres_url, lock_timeout=LOCK_TIMEOUT) as store:
        await store.append("warm-up", [new_event()], 0)  # the write connection open, its statements prepared
        with appends_blocked(postgres_url):
            appending = asyncio.ensure_future(
                store.append(aggregate_id, _events(record.command_id, 2), 0, commands=[record], claims=claims)
            )
            await eventually(lambda: _waiters_at_least(postgres_url, 1), what="the append waiting for the lock")
            killed = await _waiting_backends(postgres_url)
            assert len(killed) == 1
            assert await asyncio.to_thread(terminate_backends, postgres_url, only_waiting=True) == 1
            # Its outcome, or the same write waiting for the lock again on
            # another connection: whichever comes first.
            await eventually(
                lambda: _settled_or_waiting_again(appending, postgres_url, killed), what="the killed append's outcome"
            )
            if not appending.done():
                appending.cancel()  # its write stays queued on the connection, behind the lock
                await asyncio.gather(appending, return_exceptions=True)
                pytest.fail("the killed append was sent again (it waits for the lock on another connection)")
            with pytest.raises(StoreUnavailable) as raised:
                await appending
            assert raised.value.reason == "STORE_UNAVAILABLE"
        assert await _events_of_command(postgres_url, record.command_id) == 0  # the killed transaction wrote nothing
        assert await _commands_recorded(postgres_url, record.command_id) == 0
        # The caller retries under the same command id (new event ids, as a
        # worker deciding the command again would make).
        retried = await store.append(aggregate_id, _events(record.command_id, 2), 0, commands=[record], claims=claims)
        assert [e.version for e in retried] == [1, 2]
        with pytest.raises(CommandAlreadyRecorded):
            await store.append(aggregate_id, _events(record.command_id, 2), 0, commands=[record], claims=claims)
    assert await _events_of_command(postgres_url, record.command_id) == 2
    assert await _commands_recorded(postgres_url, record.command_id) == 1


async def _waiters_at_least(url: str, count: int) -> bool:
    return await _waiters(url) >= count


async def _waiting_backends(url: str) -> set[int]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        found = await conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return {int(pid) for (pid,) in await found.fetchall()}


async def _settled_or_waiting_again(running: asyncio.Future[Any], url: str, killed: set[int]) -> bool:
    """Whether ``running`` is done, or a backend other than the ones killed
    (which may linger a moment in pg_stat_activity) waits on a lock."""
    return running.done() or bool(await _waiting_backends(url) - killed)


def _through(url: str, port: int) -> str:
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


def _request(aggregate_id: str, message: Any) -> CommandRequest:
    spec = REGISTRY.command(message.DESCRIPTOR.full_name)
    assert spec is not None
    return CommandRequest(command_id=str(uuid.uuid4()), aggregate_id=aggregate_id, spec=spec, message=message)


async def test_a_committed_append_whose_answer_is_lost_is_unknown_and_its_retry_replays_it(
    postgres_store: PostgresStore,  # the schema
    postgres_url: str,
) -> None:
    """The deposit's batch reaches PostgreSQL and commits; its answer is
    held and the connection cut. The command's caller gets
    ``StoreUnavailable`` (the outcome is unknown), the store opens no
    connection to send the write again, and the caller's retry with the same
    command id is answered with the original result (``replayed``): one
    deposit in the log."""
    port = urlsplit(postgres_url).port
    assert port is not None
    async with (
        SilentProxy(port).running() as proxy,
        _opened(_through(postgres_url, proxy.port)) as store,
    ):
        router = Router(CommandExecutor(Store.of(store), REGISTRY))
        try:
            await router.submit(_request("acc-1", bank.OpenAccount(owner="ann")))  # connections open, prepared
            deposit = _request("acc-1", bank.Deposit(amount=5))
            connections = proxy.connections
            proxy.hold_answers()
            submitting = asyncio.ensure_future(router.submit(deposit))

            async def committed() -> bool:
                return await _events_of_command(postgres_url, deposit.command_id) == 1

            await eventually(committed, what="the deposit committed in PostgreSQL")
            assert not submitting.done()  # its answer is held in the proxy
            await proxy.cut()
            with pytest.raises(StoreUnavailable) as raised:
                await submitting
            assert raised.value.reason == "STORE_UNAVAILABLE"
            assert proxy.connections == connections, "the store opened a connection to send the write again"
            assert await _events_of_command(postgres_url, deposit.command_id) == 1
            # The client retries with the same command id.
            retried = await router.submit(deposit)
            assert retried.replayed
            assert retried.version == 2
            assert [e.event_type for e in retried.events] == ["bank.v1.MoneyDeposited"]
        finally:
            await router.close()
    assert await _events_of_command(postgres_url, deposit.command_id) == 1
    assert await _commands_recorded(postgres_url, deposit.command_id) == 1
    assert await _scalar(postgres_url, "SELECT count(*) FROM chronicle.events WHERE aggregate_id = 'acc-1'") == 2


# -- a snapshot save races a deletion or an overwriting import ---------------


def _tombstone() -> NewEvent:
    return new_event(TOMBSTONE_EVENT_TYPE, aggregate_type="", payload=b"")


async def _delete(store: PostgresStore, aggregate_id: str) -> None:
    assert await store.delete_aggregate(aggregate_id, _tombstone()) is not None


async def _remove(store: PostgresStore, aggregate_id: str) -> None:
    assert await store.remove_aggregate(aggregate_id) == 3


# The operation that takes the aggregate's history away, run by another
# replica's store; "overwrite" is an overwriting import's removal, after
# which the import writes another history at the same versions.
REMOVALS: dict[str, Callable[[PostgresStore, str], Awaitable[None]]] = {"delete": _delete, "overwrite": _remove}


def _snapshot(aggregate_id: str, version: int, through: RecordedEvent) -> Snapshot:
    return Snapshot(
        aggregate_id,
        "Thing",
        version,
        "test.v1.Thing",
        1,
        f"state-{version}".encode(),
        through_event_id=through.event_id,
    )


async def _after_removal(store: PostgresStore, removal: str, aggregate_id: str) -> None:
    """What follows the removal: for an overwrite, the other history."""
    if removal == "overwrite":
        await store.import_events([recorded_event(aggregate_id, version) for version in (1, 2, 3)])


async def _snapshots_of(url: str, aggregate_id: str) -> int:
    return await _scalar(url, "SELECT count(*) FROM chronicle.snapshots WHERE aggregate_id = %s", aggregate_id)


async def _blocked_or_done(url: str, running: asyncio.Future[Any], waiting: int, what: str) -> None:
    async def settled() -> bool:
        return running.done() or await _waiters(url) >= waiting

    await eventually(settled, what=what)


@pytest.mark.parametrize("removal", sorted(REMOVALS))
async def test_a_snapshot_saved_while_the_history_is_being_taken_away_is_not_kept(
    postgres_store: PostgresStore, postgres_url: str, removal: str
) -> None:
    """The removal has taken the events away (not yet committed) and waits
    on a snapshot row a third session locks; a replica saves a snapshot of
    the old history meanwhile. The save waits for the removal and then
    writes nothing: no snapshot of the aggregate is left."""
    aggregate_id = f"taken-{removal}"
    events = await postgres_store.append(aggregate_id, [new_event() for _ in range(3)], 0)
    await postgres_store.save_snapshot(_snapshot(aggregate_id, 1, events[0]))
    async with (
        _opened(postgres_url) as other,
        await psycopg.AsyncConnection.connect(postgres_url) as blocker,
    ):
        await blocker.execute(
            "SELECT 1 FROM chronicle.snapshots WHERE aggregate_id = %s AND version = 1 FOR UPDATE", (aggregate_id,)
        )
        removing = asyncio.ensure_future(REMOVALS[removal](other, aggregate_id))
        await eventually(lambda: _waiters_at_least(postgres_url, 1), what="the removal waiting on the snapshot row")
        assert not removing.done()
        saving = asyncio.ensure_future(postgres_store.save_snapshot(_snapshot(aggregate_id, 3, events[2])))
        await _blocked_or_done(postgres_url, saving, 2, "the save finished or waiting")
        await blocker.rollback()
        await removing
        await saving
        await _after_removal(other, removal, aggregate_id)
    assert await postgres_store.load_snapshot(aggregate_id) is None
    assert await _snapshots_of(postgres_url, aggregate_id) == 0


@pytest.mark.parametrize("removal", sorted(REMOVALS))
async def test_a_history_taken_away_while_a_snapshot_is_being_saved_takes_the_snapshot_with_it(
    postgres_store: PostgresStore, postgres_url: str, removal: str
) -> None:
    """A replica's save has begun (the aggregate's last event locked) and
    waits to insert its row behind a third session's uncommitted row at the
    same version; another replica removes the history meanwhile. The
    removal waits for the save to commit and then removes its snapshot."""
    aggregate_id = f"saving-{removal}"
    events = await postgres_store.append(aggregate_id, [new_event() for _ in range(3)], 0)
    async with (
        _opened(postgres_url) as other,
        await psycopg.AsyncConnection.connect(postgres_url) as blocker,
    ):
        await blocker.execute(
            "INSERT INTO chronicle.snapshots (aggregate_id, aggregate_type, version, state_type, schema_version, state)"
            " VALUES (%s, 'Thing', 3, 'test.v1.Thing', 1, '\\x00'::bytea)",
            (aggregate_id,),
        )
        saving = asyncio.ensure_future(postgres_store.save_snapshot(_snapshot(aggregate_id, 3, events[2])))
        await eventually(lambda: _waiters_at_least(postgres_url, 1), what="the save waiting on the third session")
        assert not saving.done()
        removing = asyncio.ensure_future(REMOVALS[removal](other, aggregate_id))
        await _blocked_or_done(postgres_url, removing, 2, "the removal finished or waiting")
        await blocker.rollback()
        await saving
        await removing
        await _after_removal(other, removal, aggregate_id)
    assert await postgres_store.load_snapshot(aggregate_id) is None
    assert await _snapshots_of(postgres_url, aggregate_id) == 0
