"""How many times each command of a reaction with ``on_failure="park"``
failed for a plugin's bug, kept in the store so that the count survives the
runner: a server that restarts (a crash loop, a rolling update) or a lease
that moves to another replica goes on from the stored count, so a poison
command is parked after ``max_attempts`` failures in total, whichever
process met them.

The counts are one document among the reaction's (``failures``, a
``chronicle.v1.CommandFailures``), for the one event the reaction is
stopped at: a failed batch stops at its first failing event, so the
commands being tried again are always those of one event. It is read at the
first failure met at an event (since the runner started or took its lease),
written by the commit that follows a failure counted (the batch's events
before the failing one, or a commit that leaves the checkpoint where it
is), and deleted by the commit that moves the checkpoint past that event.
A batch that meets no failure reads and writes nothing more: a healthy
reaction costs what it did. A count left behind (the event went through on
a runner that had not read it, since it met no failure there) names an
event the checkpoint has passed: it is not taken, and the next count
replaces it.
"""

from __future__ import annotations

from chronicle.v1 import reaction_service_pb2 as reaction_pb
from service.processing.projections import _Batch
from service.store.base import ProjectionStore

FAILURES_KEY = "failures"


class FailureCounts:
    """The failures counted for the commands of the event at ``position``,
    as stored and as this runner added to them."""

    def __init__(self, reaction: str, documents: ProjectionStore) -> None:
        self._reaction = reaction
        self._documents = documents
        self._position: int | None = None  # the event counted for (None: not read since forget)
        self._attempts: dict[str, int] = {}
        self._changed = False  # counted since the last commit
        self._stored = False  # a document for it is in the store

    def forget(self) -> None:
        """Read the counts from the store again at the next failure: another
        replica may have counted meanwhile (the lease moved and came back)."""
        self._position = None
        self._attempts = {}
        self._changed = self._stored = False

    async def failed(self, command_id: str, position: int, max_attempts: int) -> bool:
        """Count a failure of ``command_id``, sent for the event at
        ``position``; whether it has now failed ``max_attempts`` times.
        Once reached it stays so (the count is not raised past it) until the
        checkpoint passes the event: a command that could not be parked yet
        (TOO_MANY_PARKED) is parked at once when the reaction can go on."""
        if self._position != position:
            stored = await self._documents.load_document(self._reaction, FAILURES_KEY)
            found = reaction_pb.CommandFailures.FromString(stored.data) if stored is not None else None
            self._position = position
            self._attempts = dict(found.attempts) if found is not None and found.position == position else {}
            self._changed = False
            self._stored = found is not None
        attempts = self._attempts.get(command_id, 0) + 1
        if attempts >= max_attempts:
            return True
        self._attempts[command_id] = attempts
        self._changed = True
        return False

    def write(self, batch: _Batch, end: int) -> bool:
        """Put into ``batch``, which commits the checkpoint at ``end``, what
        changed of the counts: written when one was counted, deleted when
        ``end`` passes their event; whether anything was."""
        if self._position is None:
            return False
        if end >= self._position:
            if self._stored:
                batch.write(FAILURES_KEY, None)
                return True
            return False
        if self._changed:
            counts = reaction_pb.CommandFailures(position=self._position, attempts=self._attempts)
            batch.write(FAILURES_KEY, counts)
            return True
        return False

    def committed(self, end: int) -> None:
        """The batch ``write`` was given is committed at ``end``."""
        if self._position is None:
            return
        if end >= self._position:
            self.forget()  # the event went through (or its command was parked): nothing is tried again
        elif self._changed:
            self._changed = False
            self._stored = True
