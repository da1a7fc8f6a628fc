"""Group commit: appends that arrive together share one transaction.

Each aggregate's worker appends one command at a time, but hundreds of
workers append at once. Giving each its own transaction costs a WAL flush,
several round trips and the position lock per command. ``GroupCommitter``
queues appends and writes each batch with two statements in one
transaction: the command records of the whole batch, then every event with
its position (taken from ``log_head`` in the same statement) and its
version guard. One flush, one lock acquisition, one round trip for the
statements and one for the commit, whatever the batch size.

Conflicts stay per aggregate. The batched statements never decide who
wins: if any append in a batch would fail (a command id already recorded,
an aggregate that moved on), the batch transaction rolls back and each of
its appends is retried alone through the precise path
(``PostgresStore._append_one``), which reports exactly that append's
error. Conflicts are rare in steady state (a worker owns its aggregate in
this process; only another replica or a retried command causes one), so the
fallback costs little overall.

A batch starts as soon as a flusher is free: a lone append is written at
once (no waiting to fill a batch); under load, the appends that queued while
the previous batch was being committed form the next one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from service.store.records import CommandRecord, NewEvent, RecordedEvent

log = logging.getLogger(__name__)

# Every event of the batch in one statement. Positions come from log_head in
# the same statement, whose row lock is then held to the commit: positions
# become visible in order (see store.py). A row is inserted only if its
# aggregate is at the expected version: version ``expected`` exists (or
# expected is 0), and ``expected + 1`` onward are guarded by the unique key.
INSERT_BATCH_EVENTS = (
    "WITH head AS (UPDATE chronicle.log_head SET last_position = last_position + %(total)s"
    " RETURNING last_position - %(total)s AS base)"
    " INSERT INTO chronicle.events (position, event_id, aggregate_id, aggregate_type, version, event_type,"
    " schema_version, payload, metadata, command_id, user_id, origin, correlation_id, causation_id, recorded_at)"
    " SELECT head.base + e.ord, e.event_id, e.aggregate_id, e.aggregate_type, e.version, e.event_type,"
    " e.schema_version, e.payload, e.metadata, e.command_id, e.user_id, e.origin, e.correlation_id,"
    " e.causation_id, e.recorded_at"
    " FROM head, unnest(%(event_ids)s::uuid[], %(aggregate_ids)s::text[], %(aggregate_types)s::text[],"
    " %(versions)s::bigint[], %(expected)s::bigint[], %(event_types)s::text[], %(schema_versions)s::int[],"
    " %(payloads)s::bytea[], %(metadata)s::jsonb[], %(command_ids)s::text[], %(user_ids)s::text[],"
    " %(origins)s::text[], %(correlation_ids)s::text[], %(causation_ids)s::text[], %(recorded_at)s::timestamptz[])"
    " WITH ORDINALITY AS e(event_id, aggregate_id, aggregate_type, version, expected, event_type, schema_version,"
    " payload, metadata, command_id, user_id, origin, correlation_id, causation_id, recorded_at, ord)"
    " WHERE e.expected = 0 OR EXISTS (SELECT 1 FROM chronicle.events x"
    " WHERE x.aggregate_id = e.aggregate_id AND x.version = e.expected)"
    " RETURNING position"
)


@dataclass(frozen=True, slots=True)
class Append:
    """One append waiting for its batch."""

    aggregate_id: str
    events: Sequence[NewEvent]
    expected_version: int
    commands: Sequence[CommandRecord]


class BatchRefused(Exception):
    """Some append of the batch would fail: retry them one by one."""


def moment(micros: int) -> datetime:
    return datetime.fromtimestamp(micros // 1_000_000, UTC).replace(microsecond=micros % 1_000_000)


def event_columns(batch: Sequence[Append]) -> dict[str, Any]:
    rows = [
        (append, version, new)
        for append in batch
        for version, new in enumerate(append.events, start=append.expected_version + 1)
    ]
    return {
        "total": len(rows),
        "event_ids": [new.event_id for _, _, new in rows],
        "aggregate_ids": [append.aggregate_id for append, _, _ in rows],
        "aggregate_types": [new.aggregate_type for _, _, new in rows],
        "versions": [version for _, version, _ in rows],
        "expected": [append.expected_version for append, _, _ in rows],
        "event_types": [new.event_type for _, _, new in rows],
        "schema_versions": [new.schema_version for _, _, new in rows],
        "payloads": [new.payload for _, _, new in rows],
        "metadata": [Jsonb(dict(new.metadata)) for _, _, new in rows],
        "command_ids": [new.command_id for _, _, new in rows],
        "user_ids": [new.user_id for _, _, new in rows],
        "origins": [new.origin for _, _, new in rows],
        "correlation_ids": [new.correlation_id for _, _, new in rows],
        "causation_ids": [new.causation_id for _, _, new in rows],
        "recorded_at": [moment(new.timestamp_us) for _, _, new in rows],
    }


def recorded(batch: Sequence[Append], first_position: int) -> list[list[RecordedEvent]]:
    """Each append's events as committed, given the batch's first position
    (positions follow the order of ``event_columns``)."""
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


WriteBatch = Callable[[Sequence[Append]], Awaitable[list[list[RecordedEvent]]]]
WriteOne = Callable[[Append], Awaitable[list[RecordedEvent]]]


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
        if len(batch) > 1:
            try:
                results = await self._write_batch([append for append, _ in batch])
            except BatchRefused:
                self.fallbacks += 1
            except Exception as error:  # the store is gone: every append of the batch fails alike
                for _, reply in batch:
                    if not reply.done():
                        reply.set_exception(error)
                return
            else:
                self.batches += 1
                self.batched_appends += len(batch)
                for (_, reply), result in zip(batch, results, strict=True):
                    if not reply.done():
                        reply.set_result(result)
                return
        for append, reply in batch:
            try:
                result = await self._write_one(append)
            except Exception as error:
                if not reply.done():
                    reply.set_exception(error)
            else:
                if not reply.done():
                    reply.set_result(result)


async def write_batch(
    conn: psycopg.AsyncConnection[Any],
    batch: Sequence[Append],
    insert_commands: str,
    command_columns: Callable[[Sequence[CommandRecord]], Any],
) -> list[list[RecordedEvent]]:
    """Write ``batch`` in one transaction on ``conn``; ``BatchRefused`` (and
    nothing written) if any of its appends would fail."""
    commands = [command for append in batch for command in append.commands]
    columns = event_columns(batch)
    try:
        async with conn.pipeline(), conn.transaction():
            if commands:
                await conn.execute(insert_commands, command_columns(commands))
            cursor = await conn.execute(INSERT_BATCH_EVENTS, columns)
            rows = await cursor.fetchall()
            if len(rows) != columns["total"]:
                raise BatchRefused("an aggregate of the batch is not at its expected version")
    except (psycopg.errors.UniqueViolation, psycopg.DataError) as error:
        # Which append is at fault, and how, is for the precise path to say.
        raise BatchRefused(str(error)) from error
    first = min(row[0] for row in rows)
    return recorded(batch, first)
