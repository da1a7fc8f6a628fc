"""Answering a command id that was already processed: the original result
again, or the original refusal raised again, never a second execution.

A retry can reach a server whose plugins differ from the ones that ran the
command (a rolling upgrade, docs/deployment.md "Rolling a new plugin
version"): its type may no longer be registered (renamed), or its events
may be of a schema this version cannot read. The record still says what
happened, so it is answered from the record either way; only the events
this server cannot read are left out of the answer (all of them, never a
part: a client must not mistake a part for the whole).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from service.errors import AggregateDeleted, CommandIdReused, EventNotReadable, rebuild_rejection
from service.processing.commands import BatchResult, CommandRequest, CommandResult
from service.processing.upcasting import EventReader
from service.store.base import AggregateQuery, EventRecorder
from service.store.records import CommandRecord


@dataclass(frozen=True, slots=True)
class SentCommand:
    """A command as its sender sent it, decoded or not: what its record is
    checked against (``fingerprint_of_unregistered``'s ``content``)."""

    command_id: str
    aggregate_id: str
    command_type: str
    content: bytes


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
            raise CommandIdReused(
                found[0].command_id, "a command outside this batch", original_type=found[0].command_type
            )
        for record in found:
            if record.rejection is not None:
                r = record.rejection
                raise rebuild_rejection(r.kind, r.message, r.reason, r.metadata, r.violations)
        results = [await self._result(record) for record in found]
        return BatchResult(tuple(results), max(r.version for r in results), replayed=True)

    async def replay_unregistered(
        self, command_id: str, aggregate_id: str, command_type: str, content: bytes
    ) -> CommandResult | None:
        """The recorded outcome of a command whose type no loaded plugin
        registers (renamed or retired since it ran), or None when its id was
        never recorded. ``content`` is the command's fingerprint as its
        sender's message gives it (``fingerprint_of_unregistered``)."""
        record = await self._store.find_command(command_id)
        if record is None:
            return None
        if record.aggregate_id != aggregate_id:
            raise CommandIdReused(
                command_id, f"a command on aggregate {record.aggregate_id!r}", original_type=record.command_type
            )
        if record.command_type != command_type or record.fingerprint != content:
            raise CommandIdReused(
                command_id, f"a different {record.command_type} command", original_type=record.command_type
            )
        if record.rejection is not None:
            r = record.rejection
            raise rebuild_rejection(r.kind, r.message, r.reason, r.metadata, r.violations)
        return await self._result(record)

    async def replay_unregistered_batch(self, sent: Sequence[SentCommand]) -> BatchResult | None:
        """The recorded outcome of a batch of which some command's type no
        loaded plugin registers (renamed since it ran), as ``replay`` answers
        a batch: None when no id of it was recorded (a new batch, refused
        as it is); ``CommandIdReused`` when only some were, or one was for
        other content; the recorded refusal raised again."""
        records = [await self._store.find_command(command.command_id) for command in sent]
        if all(record is None for record in records):
            return None
        for command, record in zip(sent, records, strict=True):
            if record is None:
                # A batch is recorded whole or not at all: a part is a reuse of those ids.
                found = next(r for r in records if r is not None)
                raise CommandIdReused(
                    found.command_id, "a command outside this batch", original_type=found.command_type
                )
            if record.aggregate_id != command.aggregate_id:
                raise CommandIdReused(
                    command.command_id,
                    f"a command on aggregate {record.aggregate_id!r}",
                    original_type=record.command_type,
                )
            if record.command_type != command.command_type or record.fingerprint != command.content:
                raise CommandIdReused(
                    command.command_id, f"a different {record.command_type} command", original_type=record.command_type
                )
        recorded = [record for record in records if record is not None]
        for record in recorded:
            if record.rejection is not None:
                r = record.rejection
                raise rebuild_rejection(r.kind, r.message, r.reason, r.metadata, r.violations)
        results = [await self._result(record) for record in recorded]
        return BatchResult(tuple(results), max(r.version for r in results), replayed=True)

    @staticmethod
    def _check_same(request: CommandRequest, record: CommandRecord) -> None:
        if record.aggregate_id != request.aggregate_id:
            raise CommandIdReused(
                request.command_id, f"a command on aggregate {record.aggregate_id!r}", original_type=record.command_type
            )
        if record.fingerprint != request.fingerprint:
            raise CommandIdReused(
                request.command_id, f"a different {record.command_type} command", original_type=record.command_type
            )

    async def _result(self, record: CommandRecord) -> CommandResult:
        events = []
        if record.event_count > 0:
            stored = await self._store.read_aggregate(
                record.aggregate_id,
                AggregateQuery(from_version=record.first_version, to_version=record.last_version),
            )
            if len(stored) < record.event_count:
                raise AggregateDeleted(record.aggregate_id)  # its events are gone; the tombstone says why
            try:
                events = [current for event in stored for current in self._reader.records(event)]
            except EventNotReadable:
                # Written by a newer plugin version than this one: the command
                # ran, and its version says where it left the aggregate; the
                # events are for a reader that can read them.
                events = []
        return CommandResult(tuple(events), record.last_version, replayed=True)
