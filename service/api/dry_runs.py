"""Dry runs audited like submissions.

A dry run decides a command on the current state and writes nothing, so no
command record audits it; yet it reads through the command's answer (does
the balance cover this amount? is this address taken?), so every one is
recorded in the audit log, accepted or refused, with who asked and from
where (``AuditEntry.dry_run``). Recorded here, around the pipeline, where
the call's peer address is known; the audit middleware leaves dry runs
alone. A dry run refused before it was decoded is audited with the other
such refusals (``service.api.refused_commands``), marked as a dry run too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from service.audit import AuditLog, now_us, refusal
from service.principal import Principal
from service.processing.commands import BatchResult, CommandBatch
from service.store.records import ACCEPTED, AuditEntry


class DryRunAudit:
    def __init__(self, audit: AuditLog) -> None:
        self._audit = audit

    async def audited(
        self, outcome: Awaitable[BatchResult], batch: CommandBatch, principal: Principal, peer: str
    ) -> BatchResult:
        """``outcome`` (the dry run under way), recorded once it is known:
        one entry per command of ``batch``."""
        try:
            result = await outcome
        except asyncio.CancelledError:
            raise  # the caller left; nothing was decided for it
        except BaseException as error:
            for request in batch.commands:
                entry = refusal(
                    error,
                    command_id=request.command_id,
                    command_type=request.spec.name,
                    aggregate_id=request.aggregate_id,
                    principal=principal.name,
                    user_id=request.user_id,
                    origin=request.origin,
                    dry_run=True,
                    peer=peer,
                )
                await self._audit.refused(entry)
            raise
        at = now_us()
        for request in batch.commands:
            await self._audit.record(
                AuditEntry(
                    recorded_at_us=at,
                    command_id=request.command_id,
                    command_type=request.spec.name,
                    aggregate_id=request.aggregate_id,
                    principal=principal.name,
                    user_id=request.user_id,
                    origin=request.origin,
                    outcome=ACCEPTED,
                    dry_run=True,
                    peer=peer,
                )
            )
        return result
