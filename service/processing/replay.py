"""Answering a command id that was already processed: the original result
again, or the original refusal raised again, never a second execution."""

from __future__ import annotations

from collections.abc import Sequence

from service.errors import AggregateDeleted, CommandIdReused, rebuild_rejection
from service.processing.commands import BatchResult, CommandRequest, CommandResult
from service.processing.upcasting import EventReader
from service.store.base import AggregateQuery, EventRecorder
from service.store.records import CommandRecord


class Replayer:
    def __init__(self, store: EventRecorder, reader: EventReader) -> None:
        self._store = store
        self._reader = reader

    async def records(self, commands: Sequence[CommandRequest]) -> list[CommandRecord | None]:
        return [await self._store.find_command(c.command_id) for c in commands]

    async def replay(self, commands: Sequence[CommandRequest]) -> BatchResult:
        """The recorded outcome of ``commands``, if each id was recorded for
        the same command. A batch whose ids were recorded only in part is a
        reuse of those ids, not a retry."""
        return await self.replay_records(commands, await self.records(commands))

    async def replay_records(
        self, commands: Sequence[CommandRequest], records: Sequence[CommandRecord | None]
    ) -> BatchResult:
        for request, record in zip(commands, records, strict=True):
            if record is not None:
                self._check_same(request, record)
        found = [record for record in records if record is not None]
        if not found:
            raise ValueError("nothing to replay: no command id of the batch is recorded")
        if len(found) < len(records):
            raise CommandIdReused(found[0].command_id, "a command outside this batch")
        for record in found:
            if record.rejection is not None:
                r = record.rejection
                raise rebuild_rejection(r.kind, r.message, r.reason, r.metadata, r.violations)
        results = [await self._result(request, record) for request, record in zip(commands, found, strict=True)]
        return BatchResult(tuple(results), max(r.version for r in results), replayed=True)

    @staticmethod
    def _check_same(request: CommandRequest, record: CommandRecord) -> None:
        if record.aggregate_id != request.aggregate_id:
            raise CommandIdReused(request.command_id, f"a command on aggregate {record.aggregate_id!r}")
        if record.fingerprint != request.fingerprint:
            raise CommandIdReused(request.command_id, f"a different {record.command_type} command")

    async def _result(self, request: CommandRequest, record: CommandRecord) -> CommandResult:
        events = []
        if record.event_count > 0:
            stored = await self._store.read_aggregate(
                request.aggregate_id,
                AggregateQuery(from_version=record.first_version, to_version=record.last_version),
            )
            if len(stored) < record.event_count:
                raise AggregateDeleted(request.aggregate_id)  # its events are gone; the tombstone says why
            events = [current for event in stored for current in self._reader.records(event)]
        return CommandResult(tuple(events), record.last_version, replayed=True)
