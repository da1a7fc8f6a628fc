"""``Retention`` on SQLite: one batch per write transaction, so that the
writer thread takes the appends that queued meanwhile between batches."""

from __future__ import annotations

import sqlite3

from service.store.sqlite import sql
from service.store.sqlite.writer import Writer, writing


class RetentionRole:
    _writer: Writer

    async def prune_commands(self, recorded_before_us: int, limit: int) -> int:
        return await self._writer.run(_delete, sql.PRUNE_COMMANDS, recorded_before_us, limit)

    async def prune_refusals(self, recorded_before_us: int, limit: int) -> int:
        return await self._writer.run(_delete, sql.PRUNE_REFUSALS, recorded_before_us, limit)


def _delete(db: sqlite3.Connection, statement: str, before_us: int, limit: int) -> int:
    with writing(db):
        return int(db.execute(statement, (before_us, limit)).rowcount)
