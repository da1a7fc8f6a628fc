"""``AuditRecorder`` on SQLite: entries of their own in ``refusals``, read
together with the command records (which audit accepted and refused
commands in their append's transaction)."""

from __future__ import annotations

import sqlite3

from service.store.base import AuditQuery
from service.store.records import AuditEntry
from service.store.sql_common import (
    SQLITE,
    Conditions,
    Row,
    audit_entry_conditions,
    audit_entry_params,
    audited_command_conditions,
    newest_audit_entries,
)
from service.store.sqlite import sql
from service.store.sqlite.writer import Writer


class AuditRole:
    _writer: Writer

    async def record_audit_entry(self, entry: AuditEntry) -> None:
        await self._writer.run(lambda db: db.execute(sql.RECORD_AUDIT_ENTRY, audit_entry_params(entry)))

    async def read_audit(self, query: AuditQuery) -> list[AuditEntry]:
        commands = audited_command_conditions(SQLITE, query, time_column="recorded_at_us")
        command_rows: list[Row] = []
        if commands is not None:
            command_rows = await self._writer.run(_newest, sql.audited_commands(commands.where), commands, query.limit)
        others = audit_entry_conditions(SQLITE, query, time_column="recorded_at_us")
        other_rows = await self._writer.run(_newest, sql.audited_others(others.where), others, query.limit)
        return newest_audit_entries(command_rows, other_rows, query.limit)


def _newest(db: sqlite3.Connection, statement: str, conditions: Conditions, limit: int) -> list[Row]:
    return db.execute(statement, [*conditions.params, limit]).fetchall()
