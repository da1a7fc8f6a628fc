"""What a reaction keeps besides its checkpoint, among its documents (the
projections' table, under the reaction's name, sealed like a projection's
with encryption at rest), written in the transaction that moves its
checkpoint:

- ``state:<key>``: the state of one process (the reaction's ``state``
  message, per ``state_key``), in a ``chronicle.v1.ProcessState`` with the
  aggregates it was derived from as its subjects; deleted when the process
  leaves it empty;
- ``parked:<command id>``: a command it parked (``chronicle.v1.ParkedCommand``:
  the command's payload, its refusal's text), naming the command's aggregate
  and its event's as subjects; or a deadline parked in place of firing (its
  function failed ``max_attempts`` times under ``on_failure="park"``:
  ``ParkedCommand.deadline``), naming its process's subjects;
- ``parked``: the index of those, oldest first (``chronicle.v1.ParkedCommands``
  with ids and positions only), at most ``MAX_PARKED`` (parking asks for an
  operator's attention; more stop the reaction with its status, just before
  the event that would park one too many: see ``TooManyParked``). An index,
  not a listing by key prefix: with encryption at rest document keys are
  keyed hashes, which cannot be listed;
- ``deadline:<state key>:<name>``: a process's pending deadline
  (``chronicle.v1.Deadline``: its state key, name and due time, and how
  many times its function failed under ``on_failure="park"``), stored
  with its due time, which the store indexes (``due_documents``): what the
  runner finds due. The process's state lists its deadlines too, and is
  what a deadline fires by (``processing/deadlines.py``); both name the
  same subjects, and go together;
- ``failures``: with ``on_failure="park"``, how many times the commands of
  the event it is stopped at failed for a plugin's bug
  (``processing/reaction_failures.py``).

Forgetting an aggregate (``AdminService.ForgetAggregate``) deletes the
documents naming it, as it does a projection's: the states and parked
commands derived from it go, the others stay. An index entry whose document
is gone is dropped when the index is next written.

All are read through the batch's overlay (``processing/projections.py``),
so an event sees what the events before it in its batch left; a
``ReactionBatch`` and its ``ParkedList`` can be taken back to what they
held before an event (``savepoint``, ``rollback``), so that a batch can
commit the events before the one that cannot be handled yet.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Mapping
from typing import Any, TypeVar

from google.protobuf import any_pb2
from google.protobuf.message import Message

from chronicle.v1 import reaction_service_pb2 as reaction_pb
from service.errors import ReactionFailed
from service.plugins.projections import ProjectedEvent
from service.plugins.reactions import Reaction, Refusal
from service.processing.projections import DocumentCache, ForgottenSubjects, _Batch, _NeedsDocument, _Raw
from service.store.base import ProjectionStore

M = TypeVar("M", bound=Message)

PARKED_KEY = "parked"
PARKED_PREFIX = "parked:"
STATE_PREFIX = "state:"
DEADLINE_PREFIX = "deadline:"
MAX_PARKED = 1000
TYPE_URL_PREFIX = "type.googleapis.com/"


class TooManyParked(ReactionFailed):
    """Parking one more command would make more than the reaction's limit:
    the reaction stops before the event that parks it, until an operator
    replays or dismisses some."""


class ReactionBatch(_Batch):
    """A reaction's batch: the projections' overlay, with savepoints. Each
    write notes what it replaced, so ``rollback`` can take the batch back to
    what it held at a ``savepoint`` (before an event), its earlier events'
    writes kept."""

    def __init__(
        self, reaction: str, store: ProjectionStore, cache: DocumentCache, forgotten: ForgottenSubjects
    ) -> None:
        super().__init__(reaction, store, cache, forgotten)
        # Per write: its key, and the document, subjects and due time it replaced.
        self._undo: list[tuple[str, Message | _Raw | _Absent | None, tuple[str, ...], int | None]] = []

    def write(
        self, key: str, document: Message | _Raw | None, subjects: tuple[str, ...] = (), due_us: int | None = None
    ) -> None:
        self._undo.append((key, self.current.get(key, ABSENT), self._subjects.get(key, ()), self._due.get(key)))
        super().write(key, document, subjects, due_us)

    def savepoint(self) -> int:
        return len(self._undo)

    def rollback(self, savepoint: int) -> None:
        """Undo the writes made since ``savepoint``, the last first."""
        while len(self._undo) > savepoint:
            key, document, subjects, due_us = self._undo.pop()
            self._due.pop(key, None)
            if isinstance(document, _Absent):
                del self.current[key]
                self._subjects.pop(key, None)
            else:
                self.current[key] = document
                self._subjects[key] = subjects
                if due_us is not None:
                    self._due[key] = due_us
        self._writes = None


class _Absent:
    """Not written by the batch (yet)."""


ABSENT = _Absent()


class ProcessState:
    """A reaction's state for one event (or one deadline): loaded from the
    batch's overlay, saved back into it with its subjects: those it had, the
    aggregates of the commands sent for it, and the event's aggregate if the
    event was acted on (the state changed, a command was sent, a deadline
    scheduled or cancelled).

    Not the event's aggregate otherwise: a state key routes by what the
    event carries, which a client may choose (its correlation id, its
    metadata), and an event the functions passed by left nothing of itself
    in the state; named a subject, forgetting the aggregate of whoever sent
    it (a stranger's, or an attacker's own) would delete a process it had
    no part in.

    Its deadlines are kept in it (``chronicle.v1.ProcessState.deadlines``,
    what a deadline fires by) and, each, as a document of its own with its
    due time (``deadline:<state key>:<name>``, what the store finds due),
    written with the state's subjects: forgetting one deletes both, and
    deleting the state (left empty, dropped) deletes its deadlines."""

    def __init__(
        self,
        key: str,
        message: Message | None,
        stored: Message | None,
        subjects: frozenset[str] = frozenset(),
        *,
        event_aggregate: str = "",
        handed: Message | None = None,
        wrapped: reaction_pb.ProcessState | None = None,
    ) -> None:
        self.key = key
        self.state_key = key[len(STATE_PREFIX) :] if key else ""
        self.message = message
        self._stored = stored
        self._stored_subjects = subjects
        self.subjects = set(subjects)
        # Stored as another type, upcast: deleted or rewritten whatever it holds.
        self.upcast = False
        # The event's aggregate, and the state as the functions were given
        # it: a subject only if they acted on the event (``save``).
        self._event_aggregate = event_aggregate
        self._handed = handed
        # Its deadlines by name, as stored and as the functions left them
        # (most processes have none: nothing built for them).
        self._stored_deadlines: dict[str, int] = {}
        self.deadlines: dict[str, reaction_pb.ScheduledDeadline] = {}
        if wrapped is not None and wrapped.deadlines:
            self._stored_deadlines = {entry.name: entry.due_us for entry in wrapped.deadlines}
            self.deadlines = {entry.name: entry for entry in wrapped.deadlines}
        self.started_us = wrapped.started_us if wrapped is not None else 0
        self._stored_updated_us = wrapped.updated_us if wrapped is not None else 0
        self.scheduled = False  # a deadline was scheduled for it now
        self._deadlines_changed = False  # scheduled or cancelled: the state is written

    def sent_to(self, aggregate_id: str) -> None:
        """A command was sent to ``aggregate_id`` for the event: the process
        is derived from both."""
        self.subjects.add(aggregate_id)
        if self._event_aggregate:
            self.subjects.add(self._event_aggregate)

    def acted(self) -> None:
        """The functions acted on the event (a command, a deadline): the
        process is derived from its aggregate."""
        if self._event_aggregate:
            self.subjects.add(self._event_aggregate)

    def schedule(self, name: str, due_us: int, envelope: ProjectedEvent) -> None:
        """Deadline ``name`` is due at ``due_us`` (replacing one of that
        name), scheduled by ``envelope``'s event."""
        self.deadlines[name] = reaction_pb.ScheduledDeadline(
            name=name,
            due_us=due_us,
            event_id=envelope.event_id,
            aggregate_id=envelope.aggregate_id,
            aggregate_type=envelope.aggregate_type,
            version=envelope.version,
            position=envelope.position,
            event_type=envelope.event_type,
            timestamp_us=envelope.timestamp_us,
            user_id=envelope.user_id,
            origin=envelope.origin,
            correlation_id=envelope.correlation_id,
            metadata=dict(envelope.metadata),
        )
        self.scheduled = self._deadlines_changed = True
        self.acted()

    def cancel(self, name: str) -> None:
        """Forget deadline ``name``; none scheduled: nothing."""
        if self.deadlines.pop(name, None) is not None:
            self._deadlines_changed = True
            self.acted()

    @classmethod
    async def load(cls, reaction: Reaction[Any], batch: _Batch, envelope: ProjectedEvent) -> ProcessState:
        state_type = reaction.state_type
        if state_type is None:
            return cls("", None, None)
        key = reaction.state_key(envelope)
        if not key:
            return cls("", state_type(), None)  # no process: a new state, not kept
        return await cls.load_key(reaction, batch, key, event_aggregate=envelope.aggregate_id)

    @classmethod
    async def load_key(
        cls, reaction: Reaction[Any], batch: _Batch, key: str, *, event_aggregate: str = ""
    ) -> ProcessState:
        """The state under ``key`` (a process's deadline: no event)."""
        state_type = reaction.state_type
        assert state_type is not None
        document_key = STATE_PREFIX + key
        wrapped = await _read(batch, document_key, reaction_pb.ProcessState)
        message = state_type()
        stored: Message | None = None
        subjects: frozenset[str] = frozenset()
        if wrapped is not None:
            if wrapped.state.Unpack(message):
                stored = state_type()
                stored.CopyFrom(message)
            else:
                # Stored as a type the reaction declared before: its upcaster's
                # result, stored in its place (``stored`` None: it differs).
                message = _upcast_state(reaction, key, wrapped.state)
            subjects = frozenset(wrapped.subjects)
        if stored is not None:
            handed = stored  # a copy of ``message`` as loaded
        else:
            handed = state_type()  # new, or upcast (rare): copied
            handed.CopyFrom(message)
        state = cls(
            document_key,
            message,
            stored,
            subjects,
            event_aggregate=event_aggregate,
            handed=handed,
            wrapped=wrapped,
        )
        state.upcast = wrapped is not None and stored is None
        return state

    @property
    def exists(self) -> bool:
        """Whether a state is stored under its key (before this change)."""
        return self._stored is not None or self.upcast

    def save(self, batch: _Batch, at_us: int = 0) -> None:
        """Write what changed into ``batch``; ``at_us``: the commit time of
        the event (or the due time of the deadline) that changed it."""
        if not self.key or self.message is None:
            return
        if self._event_aggregate and self.message != self._handed:
            self.subjects.add(self._event_aggregate)  # the state took something of the event
        deadlines = {name: entry.due_us for name, entry in self.deadlines.items()} if self.deadlines else {}
        if self.message == type(self.message)() or batch.forgotten.any_of(self.subjects):
            # The process is over (nothing left behind), or it was derived
            # from a forgotten aggregate (it must not exist); its deadlines
            # go with it.
            if self.exists:
                batch.write(self.key, None)
            for name in self._stored_deadlines:
                batch.write(deadline_key(self.state_key, name), None)
            return
        subjects_changed = self.subjects != self._stored_subjects
        if self.message != self._stored or subjects_changed or self._deadlines_changed:
            wrapped = reaction_pb.ProcessState(
                subjects=sorted(self.subjects),
                started_us=self.started_us or at_us,
                updated_us=at_us or self._stored_updated_us,
            )
            if self.deadlines:
                wrapped.deadlines.extend(sorted(self.deadlines.values(), key=lambda entry: (entry.due_us, entry.name)))
            wrapped.state.Pack(self.message)
            subjects = tuple(sorted(self.subjects))
            batch.write(self.key, wrapped, subjects)
            if not deadlines and not self._stored_deadlines:
                return  # the usual case: no deadline, none to write
            for name in self._stored_deadlines.keys() - deadlines.keys():
                batch.write(deadline_key(self.state_key, name), None)
            for name, due_us in deadlines.items():
                if subjects_changed or self._stored_deadlines.get(name) != due_us:
                    document = reaction_pb.Deadline(state_key=self.state_key, name=name, due_us=due_us)
                    batch.write(deadline_key(self.state_key, name), document, subjects, due_us=due_us)


def deadline_key(state_key: str, name: str) -> str:
    """The key of a process's deadline's document (a name has no ':')."""
    return f"{DEADLINE_PREFIX}{state_key}:{name}"


def stored_type_of(packed: any_pb2.Any) -> str:
    """The full name of the type a packed state is stored as (its type
    URL's last part: "box.v1.Box" of "type.googleapis.com/box.v1.Box")."""
    return packed.type_url.rpartition("/")[2]


def _upcast_state(reaction: Reaction[Any], key: str, packed: any_pb2.Any) -> Message:
    """The state ``key`` stored as ``packed``, of another type than the
    reaction's ``state``, as its upcaster for that type makes it."""
    state_type = reaction.state_type
    assert state_type is not None
    stored_as = stored_type_of(packed)
    found = reaction.state_upcasters.get(stored_as)
    if found is None:
        # Types by their full names, in the message as in the metadata (and
        # as plugin_check and ProjectionFailed's DOCUMENT_TYPE_MISMATCH say
        # them): what @reaction.upcast_state and the .proto files name.
        expected = str(state_type.DESCRIPTOR.full_name)
        raise ReactionFailed(
            f"the state {key!r} of reaction {reaction.name} is a {stored_as}, not a {expected}: keep the old"
            " type, register an upcaster for it (@reaction.upcast_state), or drop this state"
            f" (chronicle reaction {reaction.name} --drop-state {shlex.quote(key)})",
            reason="DOCUMENT_TYPE_MISMATCH",
            metadata={"reaction": reaction.name, "state_key": key, "stored_type": stored_as, "expected_type": expected},
        )
    old_type, upcaster = found
    try:
        upcast = upcaster(old_type.FromString(packed.value))
    except Exception as error:
        raise ReactionFailed(
            f"reaction {reaction.name}: the upcaster of its state {key!r} from {stored_as} raised"
            f" {type(error).__name__}: {error}",
            reason="STATE_UPCAST_FAILED",
            metadata={"reaction": reaction.name, "state_key": key, "stored_type": stored_as},
        ) from error
    if not isinstance(upcast, state_type):
        raise ReactionFailed(
            f"reaction {reaction.name}: the upcaster of its state {key!r} from {stored_as} returned a"
            f" {type(upcast).__name__}, not a {state_type.DESCRIPTOR.full_name}",
            reason="STATE_UPCAST_FAILED",
            metadata={"reaction": reaction.name, "state_key": key, "stored_type": stored_as},
        )
    return upcast


class ParkedList:
    """The reaction's parked commands, as one batch changes them (the index
    read once, when the batch first parks one; each command written at once,
    the index with the batch), at most ``limit`` of them."""

    def __init__(self, batch: _Batch, limit: int = MAX_PARKED, index: reaction_pb.ParkedCommands | None = None) -> None:
        self._batch = batch
        self._limit = limit
        # ``index``: one already read, which the caller writes (an operator's
        # replay of a parked deadline parks what its commands met into it).
        self._index = index
        self.count: int | None = None if index is None else len(index.commands)  # known once read
        self.added = 0  # parked by this batch

    def savepoint(self) -> int:
        return self.added

    def rollback(self, savepoint: int) -> None:
        """Forget the commands parked since ``savepoint`` (their documents
        go with the batch's rollback). They are the index's last entries:
        pruning drops only forgotten commands, never one the batch wrote."""
        if self._index is not None and self.added > savepoint:
            del self._index.commands[savepoint - self.added :]
            self.count = len(self._index.commands)
        self.added = savepoint

    async def add(self, reaction: str, refusal: Refusal, envelope: ProjectedEvent, metadata: Mapping[str, str]) -> None:
        """Park ``refusal``'s command, sent with ``metadata`` because of ``envelope``'s event."""
        command = refusal.send.command
        parked = reaction_pb.ParkedCommand(
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
            event_aggregate_id=envelope.aggregate_id,
        )
        await self._park(reaction, parked, f"the {envelope.event_type} at position {envelope.position}")

    async def add_deadline(
        self,
        reaction: str,
        parked_id: str,
        state_key: str,
        entry: reaction_pb.ScheduledDeadline,
        subjects: tuple[str, ...],
        error: ReactionFailed,
    ) -> None:
        """Park the deadline ``entry`` of process ``state_key`` (derived
        from ``subjects``), whose function failed with ``error``, under
        ``parked_id``, in place of firing it."""
        parked = reaction_pb.ParkedCommand(
            command_id=parked_id,
            user_id=entry.user_id,
            reason=error.reason,
            message=error.message,
            metadata=dict(error.metadata),
            event_id=entry.event_id,
            position=entry.position,
            correlation_id=entry.correlation_id,
            parked_at_us=time.time_ns() // 1000,
            event_aggregate_id=entry.aggregate_id,
            deadline=reaction_pb.ParkedDeadline(state_key=state_key, deadline=entry, subjects=subjects),
        )
        await self._park(reaction, parked, f"deadline {entry.name!r} of process {state_key!r}")

    async def _park(self, reaction: str, parked: reaction_pb.ParkedCommand, before: str) -> None:
        """Write ``parked`` and its index entry; ``TooManyParked`` (naming
        what it stopped ``before``) at the limit."""
        if self._batch.forgotten.any_of(subjects_of(parked)):
            return  # derived from a forgotten aggregate: nothing of it is kept
        index = await self._load()
        if len(index.commands) >= self._limit:
            await prune(self._batch, index)  # some may have been forgotten
        if len(index.commands) >= self._limit:
            raise TooManyParked(
                f"reaction {reaction} has {len(index.commands)} parked commands, its limit: it stopped before"
                f" {before}, which parks one more; replay or dismiss some (each lets it go on past one such event)",
                reason="TOO_MANY_PARKED",
                metadata={"reaction": reaction, "position": str(parked.position)},
            )
        index.last_sequence += 1  # never given twice: the listing's order (``parked_order``)
        parked.sequence = index.last_sequence
        write_parked(self._batch, parked)
        index.commands.append(_entry(parked))
        self.count = len(index.commands)
        self.added += 1

    async def _load(self) -> reaction_pb.ParkedCommands:
        if self._index is None:
            self._index = await load_index(self._batch)
        return self._index

    def write(self) -> None:
        if self._index is not None:
            self._batch.write(PARKED_KEY, self._index)


def subjects_of(parked: reaction_pb.ParkedCommand) -> tuple[str, ...]:
    """The aggregates a parked command is derived from: its own and its
    event's (a parked deadline: its process's and its scheduling event's)."""
    subjects = {parked.aggregate_id, parked.event_aggregate_id, *parked.deadline.subjects}
    return tuple(sorted(subjects - {""}))


def write_parked(batch: _Batch, parked: reaction_pb.ParkedCommand) -> None:
    batch.write(PARKED_PREFIX + parked.command_id, parked, subjects_of(parked))


def _entry(parked: reaction_pb.ParkedCommand) -> reaction_pb.ParkedCommand:
    """``parked``'s index entry: ids and positions, nothing of its content."""
    return reaction_pb.ParkedCommand(
        command_id=parked.command_id,
        event_id=parked.event_id,
        position=parked.position,
        parked_at_us=parked.parked_at_us,
        sequence=parked.sequence,
    )


async def load_index(batch: _Batch) -> reaction_pb.ParkedCommands:
    """The index of the reaction's parked commands as ``batch`` sees it (a copy to change)."""
    stored = await _read(batch, PARKED_KEY, reaction_pb.ParkedCommands)
    index = reaction_pb.ParkedCommands()
    if stored is not None:
        index.CopyFrom(stored)
    return index


async def load_parked_command(batch: _Batch, command_id: str) -> reaction_pb.ParkedCommand | None:
    """The parked command ``command_id`` (None: not parked, or forgotten)."""
    return await _read(batch, PARKED_PREFIX + command_id, reaction_pb.ParkedCommand)


async def prune(batch: _Batch, index: reaction_pb.ParkedCommands) -> None:
    """Drop from ``index`` the entries whose command was forgotten."""
    await batch.load(PARKED_PREFIX + entry.command_id for entry in index.commands)  # at once
    kept = [entry for entry in index.commands if await load_parked_command(batch, entry.command_id) is not None]
    if len(kept) != len(index.commands):
        del index.commands[:]
        index.commands.extend(kept)


# The listing's order, and where a page ended: the order it was parked in
# (``ParkedCommand.sequence``, from the index's ``last_sequence``: never
# given twice), then, for those parked before sequences existed (0, listed
# first), the position of the event that caused it, when it was parked, its
# id. Not the causing event's position first: a deadline's commands (and a
# parked deadline) are parked at its scheduling event's, which may be long
# before entries parked earlier, and a page token past those would skip it.
# Entries are only ever appended (with the next sequence) or removed, so a
# page that ended at one key goes on after it whatever left meanwhile, and
# what was parked meanwhile comes in a later page.
ParkedAt = tuple[int, int, int, str]
# Parked commands read per statement while a page is filled: each may carry
# up to 256 KB of metadata, so a page is read in steps, not all at once.
_READ_STEP = 50


def parked_order(entry: reaction_pb.ParkedCommand) -> ParkedAt:
    return (entry.sequence, entry.position, entry.parked_at_us, entry.command_id)


async def list_parked(documents: ProjectionStore, reaction: str) -> list[reaction_pb.ParkedCommand]:
    """The commands ``reaction`` parked, oldest first (the forgotten left out)."""
    found, _ = await list_parked_page(documents, reaction, after=None, limit=MAX_PARKED, max_bytes=2**62)
    return found


async def list_parked_page(
    documents: ProjectionStore, reaction: str, *, after: ParkedAt | None, limit: int, max_bytes: int
) -> tuple[list[reaction_pb.ParkedCommand], bool]:
    """A page of the commands ``reaction`` parked, oldest first (the
    forgotten left out), after ``after``: at most ``limit``, and up to the
    one that brings their size to ``max_bytes`` (at least one); and whether
    more follow."""
    stored = await documents.load_document(reaction, PARKED_KEY)
    if stored is None:
        return [], False
    entries = sorted(reaction_pb.ParkedCommands.FromString(stored.data).commands, key=parked_order)
    if after is not None:
        entries = [entry for entry in entries if parked_order(entry) > after]
    page: list[reaction_pb.ParkedCommand] = []
    size = 0
    for start in range(0, len(entries), _READ_STEP):
        keys = [PARKED_PREFIX + entry.command_id for entry in entries[start : start + _READ_STEP]]
        found = {document.key: document for document in await documents.load_documents(reaction, keys)}
        for offset, key in enumerate(keys):
            document = found.get(key)
            if document is None:
                continue  # forgotten
            page.append(reaction_pb.ParkedCommand.FromString(document.data))
            size += len(document.data) + 64  # with the framing of its fields and of the answer
            if len(page) >= limit or size >= max_bytes:
                return page, start + offset + 1 < len(entries)
    return page, False


async def _read(batch: _Batch, key: str, message_type: type[M]) -> M | None:
    try:
        return batch.read(key, message_type)
    except _NeedsDocument:
        await batch.load((key,))
        return batch.read(key, message_type)
