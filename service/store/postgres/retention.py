"""``Retention`` on PostgreSQL: each batch one operation (one statement,
one round trip) through the store's pipelined connections, like every
other write; it locks only the rows it deletes."""

from __future__ import annotations

from service.store.postgres import sql
from service.store.postgres.connection import Statement
from service.store.postgres.database import Database


class RetentionRole:
    _db: Database

    async def prune_commands(self, recorded_before_us: int, limit: int) -> int:
        (result,) = await self._db.run("prune", [Statement(sql.PRUNE_COMMANDS.encode(), (recorded_before_us, limit))])
        return int(result.command_tuples or 0)

    async def prune_refusals(self, recorded_before_us: int, limit: int) -> int:
        (result,) = await self._db.run("prune", [Statement(sql.PRUNE_REFUSALS.encode(), (recorded_before_us, limit))])
        return int(result.command_tuples or 0)
