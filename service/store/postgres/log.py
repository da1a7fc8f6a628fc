"""``LogReader`` on PostgreSQL: the global log by position, never skipping
(positions become visible in order: see sql.py), woken by NOTIFY."""

from __future__ import annotations

from service.store.postgres import sql
from service.store.postgres.connection import Statement
from service.store.postgres.database import Database
from service.store.postgres.rows import rows, scalar
from service.store.records import LogFilter, LogPage
from service.store.sql_common import POSTGRES, UNLIMITED_BYTES, event_from_row, log_conditions, log_page


class LogRole:
    _db: Database

    async def read_log(
        self, after_position: int, log_filter: LogFilter, limit: int, *, max_bytes: int | None = None
    ) -> LogPage:
        conditions = log_conditions(POSTGRES, after_position, log_filter)
        budget = max_bytes or UNLIMITED_BYTES
        statement = sql.read_log(
            conditions.where,
            conditions.next_placeholder(limit) + "::bigint",
            conditions.next_placeholder(budget) + "::bigint",
        )
        # One statement, one snapshot: the log's end and the page agree.
        filtered = log_filter.aggregate_types or log_filter.event_types or log_filter.origin is not None
        settings = [Statement(sql.LOG_PAGE_SETTINGS.encode())] if filtered and log_filter.aggregate_id is None else []
        *_, result = await self._db.run(
            "read_log", [*settings, Statement(statement.encode(), conditions.params, binary=True)], read_only=True
        )
        loaded = rows(result)
        head = int(loaded[0][0]) if loaded else 0
        events = tuple(event_from_row(row[1:]) for row in loaded if row[1] is not None)
        # Cut by size when the last event's running total reached the limit
        # (the next one, if any, was left out); "full" only says more may follow.
        full = len(events) == limit or (bool(events) and loaded[-1][-1] >= budget)
        return log_page(events, head=head, after_position=after_position, full=full)

    async def log_head(self) -> int:
        (result,) = await self._db.run("log_head", [Statement(sql.LOG_HEAD.encode())], read_only=True)
        return int(scalar(result) or 0)

    async def wait_for_commit(self, after_position: int, max_wait: float) -> None:
        self._db.listen()
        await self._db.commits.wait_beyond(after_position, max_wait)
