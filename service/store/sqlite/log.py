"""``LogReader`` on SQLite: the global log by position, never skipping (one
writer at a time: positions commit in order, see sql.py), woken by this
store's own appends."""

from __future__ import annotations

import sqlite3

from service.store.notifier import CommitNotifier
from service.store.records import LogFilter, LogPage
from service.store.sql_common import SQLITE, UNLIMITED_BYTES, Row, event_from_row, log_conditions, log_page
from service.store.sqlite import sql
from service.store.sqlite.writer import Writer, reading


class LogRole:
    _writer: Writer
    _commits: CommitNotifier

    async def read_log(
        self, after_position: int, log_filter: LogFilter, limit: int, *, max_bytes: int | None = None
    ) -> LogPage:
        conditions = log_conditions(SQLITE, after_position, log_filter)
        statement = sql.read_log(conditions.where)
        params = [*conditions.params, limit, max_bytes or UNLIMITED_BYTES]
        rows, (head, head_id, after_id) = await self._writer.run(_page_and_end, statement, params, after_position)
        events = tuple(event_from_row(row) for row in rows)
        full = len(events) == limit or (bool(rows) and len(events) < rows[0][-1])
        return log_page(
            events, head=int(head), after_position=after_position, full=full, head_id=head_id, after_id=after_id
        )

    async def log_head(self) -> int:
        (head,) = await self._writer.run(lambda db: db.execute(sql.LOG_HEAD).fetchone())
        return int(head)

    async def stored_event_kinds(self) -> list[tuple[str, str, int]]:
        found = await self._writer.run(lambda db: db.execute(sql.STORED_EVENT_KINDS).fetchall())
        return [(str(a), str(e), int(v)) for a, e, v in found]

    async def wait_for_commit(self, after_position: int, max_wait: float) -> None:
        # Appends through this store wake readers at once; appends by another
        # process on the same file are found when max_wait expires.
        await self._commits.wait_beyond(after_position, max_wait)


def _page_and_end(
    db: sqlite3.Connection, statement: str, params: list[object], after_position: int
) -> tuple[list[Row], Row]:
    # One read transaction: the page, the log's end and the ids of the events
    # at the end and at the read's start from the same snapshot (another
    # process may be writing the file). SQLite has one writer at a time, so
    # positions commit in order: never a gap that fills in later.
    with reading(db):
        rows = db.execute(statement, params).fetchall()
        end = db.execute(sql.LOG_END, (after_position,)).fetchone()
    return rows, end
