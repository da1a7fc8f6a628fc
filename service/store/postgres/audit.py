"""``AuditRecorder`` on PostgreSQL: entries of their own in ``refusals``,
read together with the command records (which audit accepted and refused
commands in their append's transaction)."""

from __future__ import annotations

from service.store.base import AuditQuery
from service.store.postgres import sql
from service.store.postgres.connection import Statement
from service.store.postgres.database import Database
from service.store.postgres.rows import rows
from service.store.records import ACCEPTED, REFUSED, AuditEntry
from service.store.sql_common import POSTGRES, audit_conditions, audit_entry_from_row, command_from_row

_OUTCOME = {None: "", ACCEPTED: " AND rejection IS NULL", REFUSED: " AND rejection IS NOT NULL"}


class AuditRole:
    _db: Database

    async def record_audit_entry(self, entry: AuditEntry) -> None:
        await self._db.run(
            "record_audit_entry",
            [
                Statement(
                    sql.RECORD_AUDIT_ENTRY.encode(),
                    (
                        entry.recorded_at_us,
                        entry.command_id,
                        entry.command_type,
                        entry.aggregate_id,
                        entry.principal,
                        entry.user_id,
                        entry.origin,
                        entry.reason,
                        entry.message,
                        entry.outcome,
                    ),
                )
            ],
        )

    async def read_audit(self, query: AuditQuery) -> list[AuditEntry]:
        statements = []
        if query.outcome in _OUTCOME:
            commands = audit_conditions(POSTGRES, query, time_column="recorded_at")
            limit = commands.next_placeholder(query.limit) + "::bigint"
            statements.append(
                Statement(
                    sql.audited_commands(commands.where, _OUTCOME[query.outcome], limit).encode(), commands.params
                )
            )
        others = audit_conditions(POSTGRES, query, time_column="recorded_at")
        if query.outcome is not None:
            others.add("outcome = {}", query.outcome)
        limit = others.next_placeholder(query.limit) + "::bigint"
        statements.append(Statement(sql.audited_others(others.where, limit).encode(), others.params))
        results = await self._db.run("read_audit", statements, read_only=True)
        entries = [command_from_row(r).audit_entry() for r in rows(results[0])] if len(results) == 2 else []
        entries += [audit_entry_from_row(r) for r in rows(results[-1])]
        entries.sort(key=lambda e: e.recorded_at_us, reverse=True)
        return entries[: query.limit]
