"""``EventRecorder`` on SQLite: an append (its command records, events and
claims) is one write transaction on the writer thread; reads of one
aggregate."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from service.errors import CommandAlreadyRecorded, ConcurrencyConflict, NotUnique
from service.store.base import AggregateQuery
from service.store.notifier import CommitNotifier
from service.store.records import (
    TOMBSTONE_EVENT_TYPE,
    AggregateHead,
    AggregateSummary,
    ClaimChange,
    CommandRecord,
    NewEvent,
    RecordedEvent,
    prefix_end,
)
from service.store.serialization import dump_metadata
from service.store.sql_common import (
    SQLITE,
    Row,
    aggregate_conditions,
    command_from_row,
    command_params,
    event_from_row,
    summary_from_row,
)
from service.store.sqlite import sql
from service.store.sqlite.writer import Writer, writing


class EventsRole:
    _writer: Writer
    _commits: CommitNotifier

    async def append(
        self,
        aggregate_id: str,
        events: Sequence[NewEvent],
        expected_version: int,
        *,
        commands: Sequence[CommandRecord] = (),
        claims: Sequence[ClaimChange] = (),
    ) -> list[RecordedEvent]:
        recorded = await self._writer.run(_append, aggregate_id, events, expected_version, commands, claims)
        if recorded:
            self._commits.notify(recorded[-1].position)
        return recorded

    async def find_command(self, command_id: str) -> CommandRecord | None:
        row = await self._writer.run(_find_command, command_id)
        return None if row is None else command_from_row(row)

    async def head(self, aggregate_id: str) -> AggregateHead | None:
        row = await self._writer.run(lambda db: db.execute(sql.HEAD, (aggregate_id,)).fetchone())
        return None if row is None else AggregateHead(row[0], row[1], row[2] == TOMBSTONE_EVENT_TYPE)

    async def read_aggregate(self, aggregate_id: str, query: AggregateQuery = AggregateQuery()) -> list[RecordedEvent]:
        conditions = aggregate_conditions(SQLITE, aggregate_id, query)
        statement = sql.read_aggregate(conditions.where, backwards=query.backwards, limited=query.limit is not None)
        params = conditions.params if query.limit is None else [*conditions.params, query.limit]
        rows = await self._writer.run(lambda db: db.execute(statement, params).fetchall())
        return [event_from_row(row) for row in rows]

    async def list_aggregates(
        self, prefix: str, *, after: str = "", limit: int, aggregate_type: str | None = None
    ) -> list[AggregateSummary]:
        upper = prefix_end(prefix)
        statement = sql.list_aggregates(upper=upper is not None, typed=aggregate_type is not None)
        params = (prefix, after, upper, aggregate_type, limit)
        rows = await self._writer.run(lambda db: db.execute(statement, params).fetchall())
        return [summary_from_row(row) for row in rows]

    async def version_at(self, aggregate_id: str, timestamp_us: int) -> int:
        params = (aggregate_id, timestamp_us, aggregate_id)
        (version,) = await self._writer.run(lambda db: db.execute(sql.VERSION_AT, params).fetchone())
        return int(version)


def _append(
    db: sqlite3.Connection,
    aggregate_id: str,
    events: Sequence[NewEvent],
    expected_version: int,
    commands: Sequence[CommandRecord],
    claims: Sequence[ClaimChange],
) -> list[RecordedEvent]:
    """The append's checks in the contract's order, under the write lock."""
    with writing(db):
        for command in commands:
            if (row := _find_command(db, command.command_id)) is not None:
                raise CommandAlreadyRecorded(command_from_row(row))
        recorded = _insert_events(db, aggregate_id, events, expected_version)
        for command in commands:
            db.execute(sql.INSERT_COMMAND, command_params(command))
        for claim in claims:
            _change_claim(db, aggregate_id, claim)
    return recorded


def _find_command(db: sqlite3.Connection, command_id: str) -> Row | None:
    row: Row | None = db.execute(sql.FIND_COMMAND, (command_id,)).fetchone()
    return row


def _insert_events(
    db: sqlite3.Connection, aggregate_id: str, events: Sequence[NewEvent], expected: int
) -> list[RecordedEvent]:
    (current,) = db.execute(sql.CURRENT_VERSION, (aggregate_id,)).fetchone()
    if current != expected:
        raise ConcurrencyConflict(aggregate_id, expected, current=current)
    recorded = []
    for version, new in enumerate(events, start=expected + 1):
        try:
            (position,) = db.execute(sql.INSERT_EVENT, _event_params(aggregate_id, version, new)).fetchone()
        except sqlite3.IntegrityError as error:
            # Unreachable while writers hold BEGIN IMMEDIATE, kept so that
            # the unique (aggregate_id, version) is what finally decides.
            if sql.VERSION_TAKEN in str(error):
                raise ConcurrencyConflict(aggregate_id, expected) from error
            raise
        recorded.append(RecordedEvent.committed(new, aggregate_id=aggregate_id, version=version, position=position))
    return recorded


def _change_claim(db: sqlite3.Connection, aggregate_id: str, claim: ClaimChange) -> None:
    params = (claim.scope, claim.value, aggregate_id)
    if claim.release:
        db.execute(sql.RELEASE_CLAIM, params)
        return
    db.execute(sql.TAKE_CLAIM, params)
    (holder,) = db.execute(sql.CLAIM_OWNER, (claim.scope, claim.value)).fetchone()
    if holder != aggregate_id:
        raise NotUnique(claim.scope, claim.value)


def _event_params(aggregate_id: str, version: int, new: NewEvent) -> tuple[object, ...]:
    """The values of ``sql.INSERT_EVENT``, in order."""
    return (
        new.event_id,
        aggregate_id,
        new.aggregate_type,
        version,
        new.event_type,
        new.schema_version,
        new.payload,
        dump_metadata(new.metadata),
        new.command_id,
        new.user_id,
        new.origin,
        new.correlation_id,
        new.causation_id,
        new.timestamp_us,
    )
