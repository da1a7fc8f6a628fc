"""What a reaction keeps besides its checkpoint, among its documents (the
projections' table, under the reaction's name, sealed like a projection's
with encryption at rest), written in the transaction that moves its
checkpoint:

- ``state:<key>``: the state of one process (the reaction's ``state``
  message, per ``state_key``), deleted when the process leaves it empty;
- ``parked``: one ``chronicle.v1.ParkedCommands``, the commands it parked,
  oldest first, at most ``MAX_PARKED`` (parking asks for an operator's
  attention; more stop the reaction with its status).

Both are read through the batch's overlay (``processing/projections.py``),
so an event sees what the events before it in its batch left.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from google.protobuf import any_pb2
from google.protobuf.message import Message

from chronicle.v1 import reaction_service_pb2 as reaction_pb
from service.errors import ReactionFailed
from service.plugins.projections import ProjectedEvent
from service.plugins.reactions import Reaction, Refusal
from service.processing.projections import _Batch, _NeedsDocument

PARKED_KEY = "parked"
STATE_PREFIX = "state:"
MAX_PARKED = 1000
TYPE_URL_PREFIX = "type.googleapis.com/"


class ProcessState:
    """A reaction's state for one event: loaded from the batch's overlay,
    saved back into it."""

    def __init__(self, key: str, message: Message | None, stored: Message | None) -> None:
        self.key = key
        self.message = message
        self._stored = stored

    @classmethod
    async def load(cls, reaction: Reaction[Any], batch: _Batch, envelope: ProjectedEvent) -> ProcessState:
        state_type = reaction.state_type
        if state_type is None:
            return cls("", None, None)
        key = reaction.state_key(envelope)
        if not key:
            return cls("", state_type(), None)  # no process: a new state, not kept
        document_key = STATE_PREFIX + key
        try:
            stored = batch.read(document_key, state_type)
        except _NeedsDocument:
            await batch.load(document_key)
            stored = batch.read(document_key, state_type)
        message = state_type()
        if stored is not None:
            message.CopyFrom(stored)
        return cls(document_key, message, stored)

    def save(self, batch: _Batch) -> None:
        if not self.key or self.message is None:
            return
        if self.message == type(self.message)():
            if self._stored is not None:
                batch.write(self.key, None)  # the process is over: nothing left behind
        elif self.message != self._stored:
            batch.write(self.key, self.message)


class ParkedList:
    """The reaction's parked commands, as one batch changes them (read once,
    when the batch first parks one; written back with the batch)."""

    def __init__(self, batch: _Batch) -> None:
        self._batch = batch
        self._document: reaction_pb.ParkedCommands | None = None
        self.count: int | None = None  # known once read

    async def add(self, reaction: str, refusal: Refusal, envelope: ProjectedEvent, metadata: Mapping[str, str]) -> None:
        """Park ``refusal``'s command, sent with ``metadata`` because of ``envelope``'s event."""
        document = await self._load()
        if len(document.commands) >= MAX_PARKED:
            raise ReactionFailed(
                f"reaction {reaction} has {MAX_PARKED} parked commands: replay or dismiss them first",
                reason="TOO_MANY_PARKED",
                metadata={"reaction": reaction},
            )
        command = refusal.send.command
        document.commands.append(
            reaction_pb.ParkedCommand(
                command_id=refusal.command_id,
                aggregate_id=refusal.send.aggregate_id,
                command=any_pb2.Any(
                    type_url=TYPE_URL_PREFIX + command.DESCRIPTOR.full_name, value=command.SerializeToString()
                ),
                command_metadata=dict(metadata),
                user_id=envelope.user_id,
                reason=refusal.reason,
                message=refusal.message,
                metadata=dict(refusal.metadata),
                event_id=envelope.event_id,
                position=envelope.position,
                correlation_id=envelope.correlation_id,
                parked_at_us=time.time_ns() // 1000,
            )
        )
        self.count = len(document.commands)

    async def _load(self) -> reaction_pb.ParkedCommands:
        if self._document is None:
            self._document = await load_parked(self._batch)
        return self._document

    def write(self) -> None:
        if self._document is not None:
            self._batch.write(PARKED_KEY, self._document)


async def load_parked(batch: _Batch) -> reaction_pb.ParkedCommands:
    """The reaction's parked commands as ``batch`` sees them (a copy to change)."""
    try:
        stored = batch.read(PARKED_KEY, reaction_pb.ParkedCommands)
    except _NeedsDocument:
        await batch.load(PARKED_KEY)
        stored = batch.read(PARKED_KEY, reaction_pb.ParkedCommands)
    document = reaction_pb.ParkedCommands()
    if stored is not None:
        document.CopyFrom(stored)
    return document
