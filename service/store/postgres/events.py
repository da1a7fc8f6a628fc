"""``EventRecorder`` on PostgreSQL: appends (group commit, or the precise
path for claims and appends of no events) and reads of one aggregate."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

from service.store.base import AggregateQuery
from service.store.postgres import sql
from service.store.postgres.appends import AppendWriter
from service.store.postgres.connection import Statement
from service.store.postgres.database import Database
from service.store.postgres.group_commit import Append, GroupCommitter
from service.store.postgres.rows import first, rows, scalar
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
from service.store.sql_common import POSTGRES, aggregate_conditions, command_from_row, event_from_row, summary_from_row


class EventsRole:
    _db: Database
    _appends: AppendWriter
    _group: GroupCommitter

    def append(
        self,
        aggregate_id: str,
        events: Sequence[NewEvent],
        expected_version: int,
        *,
        commands: Sequence[CommandRecord] = (),
        claims: Sequence[ClaimChange] = (),
    ) -> Awaitable[list[RecordedEvent]]:
        if claims or not events:
            # Claims need their order and their own errors, appends of no
            # events a version check: both take the precise path.
            return self._appends.append_one(aggregate_id, events, expected_version, commands=commands, claims=claims)
        return self._group.append(Append(aggregate_id, events, expected_version, commands))

    async def find_command(self, command_id: str) -> CommandRecord | None:
        (result,) = await self._db.run(
            "find_command", [Statement(sql.FIND_COMMAND.encode(), (command_id,))], read_only=True
        )
        row = first(result)
        return None if row is None else command_from_row(row)

    async def head(self, aggregate_id: str) -> AggregateHead | None:
        (result,) = await self._db.run("head", [Statement(sql.HEAD.encode(), (aggregate_id,))], read_only=True)
        row = first(result)
        return None if row is None else AggregateHead(row[0], int(row[1]), row[2] == TOMBSTONE_EVENT_TYPE)

    async def read_aggregate(self, aggregate_id: str, query: AggregateQuery = AggregateQuery()) -> list[RecordedEvent]:
        conditions = aggregate_conditions(POSTGRES, aggregate_id, query)
        limit = None if query.limit is None else conditions.next_placeholder(query.limit) + "::bigint"
        statement = sql.read_aggregate(conditions.where, backwards=query.backwards, limit=limit)
        # Binary results: payloads arrive as bytes, not as hex to decode.
        (result,) = await self._db.run(
            "read_aggregate", [Statement(statement.encode(), conditions.params, binary=True)], read_only=True
        )
        return [event_from_row(row) for row in rows(result)]

    async def list_aggregates(
        self, prefix: str, *, after: str = "", limit: int, aggregate_type: str | None = None
    ) -> list[AggregateSummary]:
        upper = prefix_end(prefix)
        statement = sql.list_aggregates(upper=upper is not None, typed=aggregate_type is not None)
        params = [prefix, after, *([upper] if upper is not None else []), *([aggregate_type] if aggregate_type else [])]
        (result,) = await self._db.run(
            "list_aggregates", [Statement(statement.encode(), (*params, limit))], read_only=True
        )
        return [summary_from_row(row) for row in rows(result)]

    async def version_at(self, aggregate_id: str, timestamp_us: int) -> int:
        (result,) = await self._db.run(
            "version_at", [Statement(sql.VERSION_AT.encode(), (aggregate_id, timestamp_us))], read_only=True
        )
        return int(scalar(result) or 0)
