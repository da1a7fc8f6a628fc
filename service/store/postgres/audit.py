"""``AuditRecorder`` on PostgreSQL: entries of their own in ``refusals``,
read together with the command records (which audit accepted and refused
commands in their append's transaction)."""

from __future__ import annotations

from service.store.base import AuditQuery
from service.store.postgres import sql
from service.store.postgres.connection import Statement
from service.store.postgres.database import Database
from service.store.postgres.rows import rows
from service.store.records import AuditEntry
from service.store.sql_common import (
    POSTGRES,
    audit_entry_conditions,
    audit_entry_params,
    audited_command_conditions,
    newest_audit_entries,
)


class AuditRole:
    _db: Database

    async def record_audit_entry(self, entry: AuditEntry) -> None:
        await self._db.run(
            "record_audit_entry", [Statement(sql.RECORD_AUDIT_ENTRY.encode(), audit_entry_params(entry))]
        )

    async def read_audit(self, query: AuditQuery) -> list[AuditEntry]:
        statements = []
        commands = audited_command_conditions(POSTGRES, query, time_column="recorded_at")
        if commands is not None:
            limit = commands.next_placeholder(query.limit) + "::bigint"
            statements.append(Statement(sql.audited_commands(commands.where, limit).encode(), commands.params))
        others = audit_entry_conditions(POSTGRES, query, time_column="recorded_at")
        limit = others.next_placeholder(query.limit) + "::bigint"
        statements.append(Statement(sql.audited_others(others.where, limit).encode(), others.params))
        results = await self._db.run("read_audit", statements, read_only=True)
        return newest_audit_entries(rows(results[0]) if commands is not None else [], rows(results[-1]), query.limit)
