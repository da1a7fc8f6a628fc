"""Group commit: appends that arrive together share one transaction.

Each aggregate's worker appends one command at a time, but hundreds of
workers append at once. Giving each its own transaction costs a WAL flush,
several round trips and the position lock per command. ``GroupCommitter``
queues appends and writes each batch with one statement in its own
transaction: the command records of the whole batch, then every event with
its position (taken from ``log_head``) and its version guard. One flush, one
lock acquisition, one round trip, whatever the batch size. It runs on the
store's blocking side (sync psycopg on a thread, see blocking.py).

Conflicts stay per aggregate. The batch statement never decides who wins:
if any append in a batch would fail (a command id already recorded, an
aggregate that moved on), the statement aborts itself. One read then says
which appends are at fault (``write_batch``): a stale append fails with
``ConcurrencyConflict`` (its executor reloads and decides again), one whose
command id is recorded goes alone through the precise path
(``PostgresStore._append_one``, which reports exactly its outcome), and
the rest are written again as a batch. Conflicts are rare with one server
(a worker owns its aggregate in its process; only a retried command causes
one) and common between replicas that share aggregates, which is why they
must not cost the innocent appends of a batch a transaction each.

A batch starts as soon as a flusher is free: a lone append is written at
once (no waiting to fill a batch); under load, the appends that queued while
the previous batch was being committed form the next one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from service.errors import ConcurrencyConflict
from service.store.records import CommandRecord, NewEvent, RecordedEvent
from service.store.serialization import rejection_dict

log = logging.getLogger(__name__)

# A whole batch is ONE statement in its own (implicit) transaction: one round
# trip and one WAL flush, however many appends it carries. Round trips cost
# the client more CPU than anything else here (each is a few system calls on
# a virtual machine), so there is no BEGIN and COMMIT around it.
#
# The batch travels as two JSON documents (commands, events) expanded by
# jsonb_to_recordset: dumping one string costs the client next to nothing,
# where arrays of a dozen columns cost it microseconds per value. Bytes go as
# hex, times as microseconds since the epoch (exact both ways).
#
# Order inside the statement: the command records first (``head`` reads
# ``commands`` to make sure of it), so that a command id racing its own
# retry is settled before the position lock is taken; then positions from
# log_head, whose row lock is held to the commit (positions become visible in
# order, see store.py); then the events, each inserted only if its aggregate
# is at the expected version (version ``expected`` exists, or expected is 0;
# ``expected + 1`` onward are guarded by the unique key). If any event was
# left out, refuse_batch() aborts the statement: nothing of it commits.
APPEND_BATCH = (
    "WITH commands AS ("
    " INSERT INTO chronicle.commands (command_id, aggregate_id, command_type, fingerprint, first_version,"
    " last_version, rejection, principal, user_id, origin, recorded_at)"
    " SELECT c.id, c.a, c.t, decode(c.f, 'hex'), c.first, c.last, c.rejection, c.p, c.u, c.o,"
    " 'epoch'::timestamptz + c.at * interval '1 microsecond'"
    " FROM jsonb_to_recordset(%(commands)s::jsonb) AS c(id text, a text, t text, f text, first bigint, last bigint,"
    " rejection jsonb, p text, u text, o text, at bigint)"
    " RETURNING 1),"
    " head AS (UPDATE chronicle.log_head"
    " SET last_position = last_position + %(total)s + 0 * (SELECT count(*) FROM commands)"
    " RETURNING last_position - %(total)s AS base),"
    " appended AS ("
    " INSERT INTO chronicle.events (position, event_id, aggregate_id, aggregate_type, version, event_type,"
    " schema_version, payload, metadata, command_id, user_id, origin, correlation_id, causation_id, recorded_at)"
    " SELECT head.base + e.i, e.id, e.a, e.t, e.v, e.e, e.s, decode(e.p, 'hex'), coalesce(e.m, '{}'::jsonb),"
    " e.c, e.u, e.o, e.r, e.k, 'epoch'::timestamptz + e.at * interval '1 microsecond'"
    " FROM head, jsonb_to_recordset(%(events)s::jsonb) AS e(i bigint, id uuid, a text, t text, v bigint,"
    " x bigint, e text, s int, p text, m jsonb, c text, u text, o text, r text, k text, at bigint)"
    " WHERE e.x = 0 OR EXISTS (SELECT 1 FROM chronicle.events y WHERE y.aggregate_id = e.a AND y.version = e.x)"
    " RETURNING position)"
    " SELECT CASE WHEN count(*) = %(total)s THEN min(position) ELSE chronicle.refuse_batch() END FROM appended"
)
REFUSED_BATCH = "CH001"


@dataclass(frozen=True, slots=True)
class Append:
    """One append waiting for its batch."""

    aggregate_id: str
    events: Sequence[NewEvent]
    expected_version: int
    commands: Sequence[CommandRecord]


class BatchRefused(Exception):
    """Some append of the batch would fail: retry them one by one."""


def events_json(batch: Sequence[Append]) -> str:
    rows: list[dict[str, object]] = []
    for append in batch:
        for version, new in enumerate(append.events, start=append.expected_version + 1):
            rows.append(
                {
                    "i": len(rows) + 1,
                    "id": new.event_id,
                    "a": append.aggregate_id,
                    "t": new.aggregate_type,
                    "v": version,
                    "x": append.expected_version,
                    "e": new.event_type,
                    "s": new.schema_version,
                    "p": new.payload.hex(),
                    "m": dict(new.metadata) if new.metadata else None,
                    "c": new.command_id,
                    "u": new.user_id,
                    "o": new.origin,
                    "r": new.correlation_id,
                    "k": new.causation_id,
                    "at": new.timestamp_us,
                }
            )
    return json.dumps(rows, separators=(",", ":"))


def commands_json(commands: Sequence[CommandRecord]) -> str:
    return json.dumps(
        [
            {
                "id": c.command_id,
                "a": c.aggregate_id,
                "t": c.command_type,
                "f": c.fingerprint.hex(),
                "first": c.first_version,
                "last": c.last_version,
                "rejection": None if c.rejection is None else rejection_dict(c.rejection),
                "p": c.principal,
                "u": c.user_id,
                "o": c.origin,
                "at": c.recorded_at_us,
            }
            for c in commands
        ],
        separators=(",", ":"),
    )


def recorded(batch: Sequence[Append], first_position: int) -> list[list[RecordedEvent]]:
    """Each append's events as committed, given the batch's first position
    (positions follow the order of ``events_json``)."""
    result = []
    position = first_position
    for append in batch:
        events = []
        for version, new in enumerate(append.events, start=append.expected_version + 1):
            events.append(
                RecordedEvent.committed(new, aggregate_id=append.aggregate_id, version=version, position=position)
            )
            position += 1
        result.append(events)
    return result


WriteBatch = Callable[[Sequence[Append]], Awaitable[list["Outcome"]]]
WriteOne = Callable[[Append], Awaitable[list[RecordedEvent]]]


@dataclass(frozen=True, slots=True)
class BatchCounts:
    """What group commit has written since the store opened."""

    batches: int  # transactions
    appends: int  # appends they carried (appends / batches: the mean batch)
    alone: int  # appends sent down the precise path after a refused batch


class GroupCommitter:
    def __init__(
        self, write_batch: WriteBatch, write_one: WriteOne, *, flushers: int = 2, max_events: int = 2000
    ) -> None:
        self._write_batch = write_batch
        self._write_one = write_one
        self._flushers = flushers
        self._max_events = max_events
        self._queue: list[tuple[Append, asyncio.Future[list[RecordedEvent]]]] = []
        self._active = 0
        self._flushing: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.batched_appends = 0
        self.fallbacks = 0

    def counts(self) -> BatchCounts:
        return BatchCounts(self.batches, self.batched_appends, self.fallbacks)

    async def append(self, append: Append) -> list[RecordedEvent]:
        reply: asyncio.Future[list[RecordedEvent]] = asyncio.get_running_loop().create_future()
        self._queue.append((append, reply))
        if self._active < self._flushers:
            self._active += 1
            task = asyncio.create_task(self._flush())
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)
        return await reply

    def _take(self) -> list[tuple[Append, asyncio.Future[list[RecordedEvent]]]]:
        """The next batch: queued appends up to the event budget, at most one
        per aggregate (a second append for one aggregate waits for the next
        batch; it expects the first one's versions)."""
        taken: list[tuple[Append, asyncio.Future[list[RecordedEvent]]]] = []
        rest: list[tuple[Append, asyncio.Future[list[RecordedEvent]]]] = []
        seen: set[str] = set()
        events = 0
        for item in self._queue:
            append = item[0]
            if append.aggregate_id in seen or (taken and events + len(append.events) > self._max_events):
                rest.append(item)
                continue
            seen.add(append.aggregate_id)
            events += len(append.events)
            taken.append(item)
        self._queue = rest
        return taken

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch = [item for item in self._take() if not item[1].done()]
                if batch:
                    await self._write(batch)
        finally:
            self._active -= 1

    async def _write(self, batch: list[tuple[Append, asyncio.Future[list[RecordedEvent]]]]) -> None:
        # A batch of one takes this path too: the batch statement is the
        # cheapest way to write, alone or not.
        try:
            outcomes = await self._write_batch([append for append, _ in batch])
        except Exception as error:  # the store is gone: every append of the batch fails alike
            for _, reply in batch:
                if not reply.done():
                    reply.set_exception(error)
            return
        self.batches += 1
        self.batched_appends += len(batch)
        for (append, reply), outcome in zip(batch, outcomes, strict=True):
            if outcome is ALONE:
                # Only the precise path can say what is wrong with it (a
                # command id already recorded: which record? a value the
                # database cannot store: which?).
                self.fallbacks += 1
                try:
                    outcome = await self._write_one(append)
                except Exception as error:
                    outcome = error
            if reply.done():
                continue
            if isinstance(outcome, BaseException):
                reply.set_exception(outcome)
            elif isinstance(outcome, list):
                reply.set_result(outcome)


class _Alone:
    """Outcome of an append that must be written again on its own."""


ALONE = _Alone()
Outcome = list[RecordedEvent] | BaseException | _Alone

# Why a batch statement refused itself: where each aggregate stands, and
# which command ids are recorded already. One round trip, read only.
DIAGNOSE = (
    "SELECT a.id, coalesce((SELECT max(version) FROM chronicle.events e WHERE e.aggregate_id = a.id), 0)"
    " FROM unnest(%(aggregates)s::text[]) AS a(id)"
    " UNION ALL SELECT command_id, -1 FROM chronicle.commands WHERE command_id = ANY(%(commands)s::text[])"
)


def write_batch(conn: psycopg.Connection[Any], batch: Sequence[Append]) -> list[Outcome]:
    """Write ``batch`` on ``conn`` (the store's blocking side: this runs on a
    thread); one outcome per append: its events as committed, the
    ``ConcurrencyConflict`` it met, or ``ALONE``.

    The happy path is one statement. When it refuses itself (an aggregate
    moved on, a command id recorded already), one read says which appends
    are at fault: the stale ones fail with ``ConcurrencyConflict`` (their
    executor reloads and decides again), those with a recorded command id
    go ``ALONE`` to the precise path, and the rest are tried again as a
    batch. So a conflict costs its batch-mates two statements, not one
    transaction each; replicas that share aggregates depend on that.
    """
    outcomes: dict[int, Outcome] = {}
    pending = list(range(len(batch)))
    for _ in range(3):
        chosen = [batch[i] for i in pending]
        try:
            for i, events in zip(pending, _write_once(conn, chosen), strict=True):
                outcomes[i] = events
            pending = []
            break
        except psycopg.DataError:
            break  # a value PostgreSQL cannot store: the precise path names it
        except BatchRefused:
            current, recorded_ids = _diagnose(conn, chosen)
            still = []
            for i in pending:
                append = batch[i]
                if any(c.command_id in recorded_ids for c in append.commands):
                    outcomes[i] = ALONE
                elif current.get(append.aggregate_id, 0) != append.expected_version:
                    outcomes[i] = ConcurrencyConflict(
                        append.aggregate_id, append.expected_version, current=current.get(append.aggregate_id, 0)
                    )
                else:
                    still.append(i)
            if still == pending:
                break  # nothing to blame (a race with another replica): each goes alone
            pending = still
    for i in pending:
        outcomes[i] = ALONE
    return [outcomes[i] for i in range(len(batch))]


def _write_once(conn: psycopg.Connection[Any], batch: Sequence[Append]) -> list[list[RecordedEvent]]:
    if not batch:
        return []
    commands = [command for append in batch for command in append.commands]
    params = {
        "commands": commands_json(commands),
        "total": sum(len(a.events) for a in batch),
        "events": events_json(batch),
    }
    try:
        row = conn.execute(APPEND_BATCH, params).fetchone()
    except psycopg.Error as error:
        if isinstance(error, psycopg.errors.UniqueViolation) or error.sqlstate == REFUSED_BATCH:
            raise BatchRefused(str(error)) from error
        raise
    assert row is not None
    return recorded(batch, int(row[0]))


def _diagnose(conn: psycopg.Connection[Any], batch: Sequence[Append]) -> tuple[dict[str, int], set[str]]:
    rows = conn.execute(
        DIAGNOSE,
        {
            "aggregates": [a.aggregate_id for a in batch],
            "commands": [c.command_id for a in batch for c in a.commands],
        },
    ).fetchall()
    current = {row[0]: int(row[1]) for row in rows if row[1] >= 0}
    recorded_ids = {row[0] for row in rows if row[1] < 0}
    return current, recorded_ids
