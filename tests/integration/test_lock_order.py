"""The PostgreSQL store's operations on one aggregate take their locks in one
order (sql.py, "Lock order"), so any two of them running at once wait for
each other and never deadlock.

Each case holds one operation's transaction open after each of its
statements in turn (the store's own statements, sent as the store sends
them, from a connection of the test's), runs another operation through the
store meanwhile, lets it block (or finish), then runs the held operation's
remaining statements and commits. A deadlock shows as PostgreSQL's
"deadlock detected" on either side (on the store's, as StoreUnavailable: the
store would send its victim again, which would hide the deadlock, so here
it makes one attempt only); any other outcome (the second one refused
because the first deleted the aggregate, say) is the operations' own
business.

Found this way: a deletion took the position lock before the aggregate's
claims, the reverse of an append that releases a claim (a user changing
their e-mail address while an administrator deletes them).

Group commit's batches take no aggregate's claims, and the position lock
one batch at a time; what two batches may both lock before it is command
records, when a client's retries cross on two replicas: the last test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import pq

from service.errors import ChronicleError, NotUnique, StoreUnavailable
from service.store.postgres import PostgresStore, database, sql
from service.store.postgres.appends import append_one_statements, append_statement, commands_json
from service.store.postgres.connection import Statement, encode_params
from service.store.postgres.group_commit import Append
from service.store.postgres.keys import forget_statements
from service.store.postgres.transfer import delete_statements, remove_statements
from service.store.records import TOMBSTONE_EVENT_TYPE, ClaimChange, DataKey, RecordedEvent, Snapshot
from tests.support.events import command_record, new_event
from tests.support.faults import waiting_on_locks

pytestmark = pytest.mark.postgres

SCOPE = "users.email"
DEADLOCK = "40P01"


@pytest.fixture(autouse=True)
def _deadlocks_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's deadlock victim fails at once instead of being sent again."""
    monkeypatch.setattr(database, "ROLLBACK_ATTEMPTS", 1)


def _email(aggregate_id: str, *, release: bool = False) -> ClaimChange:
    return ClaimChange(SCOPE, f"{aggregate_id}@example.com", release=release)


def _tombstone(aggregate_id: str) -> RecordedEvent:
    event = new_event(TOMBSTONE_EVENT_TYPE, aggregate_type="", payload=b"")
    return RecordedEvent.committed(event, aggregate_id=aggregate_id, version=0, position=0)


@dataclass(frozen=True)
class Operation:
    """One store operation on an aggregate: its statements (to hold it
    open between them) and the store's method (to run it whole)."""

    statements: Callable[[str], list[Statement]]
    run: Callable[[PostgresStore, str], Awaitable[object]]


def _release_statements(aggregate_id: str) -> list[Statement]:
    append = Append(aggregate_id, [new_event()], 1, ())
    return append_one_statements(append, [_email(aggregate_id, release=True)])


async def _release(store: PostgresStore, aggregate_id: str) -> object:
    return await store.append(aggregate_id, [new_event()], 1, claims=[_email(aggregate_id, release=True)])


async def _delete(store: PostgresStore, aggregate_id: str) -> object:
    tombstone = new_event(TOMBSTONE_EVENT_TYPE, aggregate_type="", payload=b"")
    return await store.delete_aggregate(aggregate_id, tombstone)


OPERATIONS = {
    # A command that releases one of the aggregate's claims (precise path).
    "release": Operation(_release_statements, _release),
    "delete": Operation(lambda a: delete_statements(a, _tombstone(a), expected_version=None), _delete),
    "forget": Operation(forget_statements, lambda store, a: store.forget_data_key(a)),
    "remove": Operation(remove_statements, lambda store, a: store.remove_aggregate(a)),
}
# Run whole only: one statement, nothing to hold it open between.
RUN_ONLY = {"append": lambda store, a: store.append(a, [new_event()], 1)}


class Deadlocked(AssertionError):
    pass


class HeldTransaction:
    """A transaction on a connection of its own that runs statements one at
    a time, encoded as the store encodes them; blocking, so run it in a
    thread."""

    def __init__(self, url: str) -> None:
        self._connection = psycopg.connect(url, autocommit=True)
        self._pg = self._connection.pgconn
        self.refused: str | None = None  # the SQLSTATE that ended it, if one did

    def run(self, statements: Sequence[Statement]) -> None:
        for statement in statements:
            if self.refused is not None:
                return
            values, types, formats = encode_params(statement.params)
            self._check(self._pg.exec_params(statement.sql, values, types, formats))

    def begin(self) -> None:
        self._check(self._pg.exec_(b"BEGIN"))

    def commit(self) -> None:
        self._check(self._pg.exec_(b"ROLLBACK" if self.refused else b"COMMIT"))

    def _check(self, result: pq.abc.PGresult) -> None:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            sqlstate = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
            if sqlstate == DEADLOCK:
                raise Deadlocked((result.error_message or b"").decode())
            self.refused = sqlstate

    def close(self) -> None:
        self._connection.close()


async def _blocked_or_done(url: str, running: asyncio.Future[Any], *, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not running.done() and await asyncio.to_thread(waiting_on_locks, url) == 0:
        assert time.monotonic() < deadline, "the second operation neither blocked nor finished"
        await asyncio.sleep(0.02)


async def _prepare(store: PostgresStore, aggregate_id: str) -> None:
    """An aggregate with an event, a claim, a snapshot and a data key."""
    await store.append(aggregate_id, [new_event()], 0, claims=[_email(aggregate_id)])
    await store.save_snapshot(Snapshot(aggregate_id, "Thing", 1, "test.v1.Thing", 1, b"state"))
    await store.create_data_key(DataKey(aggregate_id, "master-1", b"wrapped key"))


@pytest.mark.parametrize("second", sorted([*OPERATIONS, *RUN_ONLY]))
@pytest.mark.parametrize("held", sorted(OPERATIONS))
async def test_two_operations_on_one_aggregate_wait_for_each_other(
    postgres_store: PostgresStore, postgres_url: str, held: str, second: str
) -> None:
    run_second = RUN_ONLY.get(second) or OPERATIONS[second].run
    statements = OPERATIONS[held].statements("probe")
    for split in range(1, len(statements)):
        aggregate_id = f"{held}-{second}-{split}"
        await _prepare(postgres_store, aggregate_id)
        statements = OPERATIONS[held].statements(aggregate_id)
        transaction = HeldTransaction(postgres_url)
        try:
            await asyncio.to_thread(transaction.begin)
            await asyncio.to_thread(transaction.run, statements[:split])
            running = asyncio.ensure_future(run_second(postgres_store, aggregate_id))
            await _blocked_or_done(postgres_url, running)
            try:
                await asyncio.to_thread(transaction.run, statements[split:])
                await asyncio.to_thread(transaction.commit)
            except Deadlocked as deadlock:
                raise AssertionError(f"{held} held after {split} statements deadlocked with {second}") from deadlock
            try:
                await running
            except StoreUnavailable as error:
                raise AssertionError(f"{second} under {held} held after {split} statements: {error}") from error
            except ChronicleError:
                pass  # refused by what the held operation did: its own business
        finally:
            transaction.close()


async def test_two_batches_carrying_the_same_commands_wait_for_each_other(
    postgres_store: PostgresStore,  # the schema
    postgres_url: str,
) -> None:
    """A batch inserts its command records in command id order, so one that
    meets a record another batch holds has taken none the other needs.
    Held: a batch with both commands that has inserted the first; the other
    batch carries them in the other order of arrival."""
    first, second = (command_record(a, 1, 1, command_id=f"cmd-{a}") for a in ("a", "b"))
    held = HeldTransaction(postgres_url)
    other = HeldTransaction(postgres_url)
    try:
        await asyncio.to_thread(held.begin)
        await asyncio.to_thread(held.run, [Statement(sql.INSERT_COMMANDS.encode(), (commands_json([first]),))])
        await asyncio.to_thread(other.begin)
        batch = [Append(c.aggregate_id, [new_event()], 0, (c,)) for c in (second, first)]
        running = asyncio.ensure_future(asyncio.to_thread(other.run, [append_statement(batch)]))
        await _blocked_or_done(postgres_url, running)
        assert not running.done()  # it waits for the first command, holding none
        await asyncio.to_thread(held.run, [Statement(sql.INSERT_COMMANDS.encode(), (commands_json([second]),))])
        await asyncio.to_thread(held.commit)
        await running
        assert other.refused == "23505"  # the commands are recorded: a retry's own business
    finally:
        held.close()
        other.close()


async def test_two_appends_claiming_the_same_values_in_opposite_orders_wait_for_each_other(
    postgres_store: PostgresStore, postgres_url: str
) -> None:
    """An append takes its claims in (scope, value) order, whatever order
    its command gave them in, so one that meets a value another append holds
    has taken none the other needs. Held: an append of x and y that has
    taken x; the store's append names y, then x. (The store contract's test
    of the same cannot tell on PostgreSQL: each append is one pipeline,
    over before the other's first claim arrives.)"""
    x, y = ClaimChange(SCOPE, "x@example.com"), ClaimChange(SCOPE, "y@example.com")
    statements = append_one_statements(Append("held", [new_event()], 0, ()), [x, y])
    held = HeldTransaction(postgres_url)
    try:
        await asyncio.to_thread(held.begin)
        await asyncio.to_thread(held.run, statements[:1])  # x taken
        running = asyncio.ensure_future(postgres_store.append("other", [new_event()], 0, claims=[y, x]))
        await _blocked_or_done(postgres_url, running)
        assert not running.done()  # it waits for x, holding nothing
        try:
            await asyncio.to_thread(held.run, statements[1:])
            await asyncio.to_thread(held.commit)
        except Deadlocked as deadlock:
            raise AssertionError("the held append deadlocked with the one claiming y, x") from deadlock
        assert held.refused is None
        with pytest.raises(NotUnique):  # x is held's: refused, not a deadlock's victim
            await running
        assert await postgres_store.claim_owner(SCOPE, y.value) == "held"
    finally:
        held.close()
