"""Running projections: each follows the log after its checkpoint and
commits a batch's document changes together with the new checkpoint.

Exactly once: a batch is read after checkpoint P, its events applied to an
in-memory overlay of the documents, and the overlay's writes committed with
the checkpoint moved from P to the batch's end, in one transaction. A crash
before the commit loses the overlay and the batch is applied again from P; a
crash after it finds the new checkpoint. Two replicas running one projection
cannot both commit a move from P: the loser reloads the checkpoint and goes
on from there (its work is wasted, never doubled).

Work done once: with a ``lease`` (``service/cluster/leases.py``), a runner
applies a batch only while its replica holds the projection's lease, so in
a cluster one replica runs each projection; the commit carries the lease's
fencing token, and the store refuses it (a conflict) if the lease has moved
meanwhile. A runner that gains the lease starts from the stored checkpoint.

A handler that raises stops its projection (others go on) at that event:
the batch's events before it are committed first (their writes, with the
checkpoint just before the failing event, in one commit as any batch's), the
error is logged and reported by ``status`` (``stopped_at``), and the runner
tries again from that event after a pause (the projection's
``retry_seconds``), so a fixed plugin or a transient fault resumes it. A
projection declared with ``on_failure="park"`` counts the tries on each
event; at its ``max_attempts``-th failure the event is parked instead:
recorded (``ParkedEvent``) in the commit that moves the checkpoint past it,
with the handler's writes for it dropped.

A rebuild (``ProjectionStore.reset_projection``, from any replica) moves the
checkpoint back to 0: a runner with a commit in flight finds it moved (a
conflict: it reloads), and an idle runner, whose read finds nothing new,
compares the stored checkpoint with its own and starts again from the stored
one. ``progress`` signals every commit of this runner, for readers waiting
for a position (``min_position``).

Documents are cached between batches (``DocumentCache``): a read model's hot
documents are read from the store once, not once per event. The cache is
exact because only a commit that moved the checkpoint from where this runner
left it can have written them: every commit of this runner updates the cache
with what it wrote, and anything else (a conflict with another runner, an
error) empties it. Forgetting an aggregate deletes the documents that name
it as a subject behind the runner's back: the store refuses a commit that
would put one again (``SubjectsForgotten``), and the runner empties its
cache and applies the batch again with those documents deleted, so what it
writes does not depend on what it happened to cache.

Handlers run on the event loop, as command handlers do: one that blocks
holds up every command of the server. ``handler_alarm`` (the executor's
``SlowCallAlarm``) warns of a call slower than ``slow_handler_seconds`` (the
server's ``--slow-handler-seconds``), naming the projection (or reaction)
and the event type.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Iterable, Sequence, Set
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, Protocol, TypeVar

from google.protobuf.message import DecodeError, Message

from chronicle.v1 import event_pb2
from service.errors import (
    ChronicleError,
    ConcurrencyConflict,
    LogRewound,
    ProjectionFailed,
    StoreUnavailable,
    SubjectsForgotten,
    ValidationError,
)
from service.plugins.projections import (
    DOCUMENT_CACHE_SIZE,
    MAX_DOCUMENT_BYTES,
    ProjectedEvent,
    Projection,
    document_key_problem,
    subject_problem,
)
from service.processing.overlap import started
from service.processing.projection_failures import StoredFailure, clear_failure, has_failure, record_failure
from service.processing.upcasting import EventReader
from service.processing.watchdog import Described, SlowCallAlarm
from service.store.base import KeyStore, LogReader, ProjectionStore
from service.store.leasing import Fencing
from service.store.records import DocumentWrite, LogFilter, LogPage, ParkedEvent, RecordedEvent, is_tombstone
from service.tasks import cancel_and_wait

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)
# A handler that needs a document not loaded makes the runner look ahead for
# the others the batch will need: until this many events in a row need none
# it has not found yet, or it has found this many.
PROBE_QUIET = 32
PROBE_KEYS = 500


class _NeedsDocument(BaseException):
    """A handler asked for a document not loaded yet (handlers are
    synchronous; loading is not). A BaseException, so that a handler's own
    ``except Exception`` cannot swallow it."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class _Raw(NamedTuple):
    """A document as stored (one per document a batch reads or writes: a
    tuple is made in C, a frozen dataclass sets each field through Python)."""

    type_name: str
    data: bytes


class DocumentCache:
    """A projection's documents as last read or written, up to ``size`` of
    them (the least recently used leave first); a key known to hold no
    document is remembered too."""

    def __init__(self, size: int = DOCUMENT_CACHE_SIZE) -> None:
        self._size = size
        self._documents: OrderedDict[str, _Raw | None] = OrderedDict()

    def get(self, key: str) -> _Raw | _Unknown | None:
        found = self._documents.get(key, UNKNOWN)
        if found is not UNKNOWN:
            self._documents.move_to_end(key)
        return found

    def put(self, key: str, raw: _Raw | None) -> None:
        self._documents[key] = raw
        self._documents.move_to_end(key)
        if len(self._documents) > self._size:
            self._documents.popitem(last=False)

    def clear(self) -> None:
        self._documents.clear()


class _Unknown:
    """Not in the cache: the store must be asked."""


UNKNOWN = _Unknown()


class _Batch:
    """The documents as one batch sees them: its own writes over the store's.

    Each handler call runs in a ``_Scope`` whose writes join the batch only
    when the call returns; a call that needs a document not yet loaded is
    abandoned (its writes with it), the document loaded, and the call run
    again, so a handler never sees its own half-applied writes twice.
    """

    def __init__(
        self,
        projection: str,
        store: ProjectionStore,
        cache: DocumentCache,
        forgotten: ForgottenSubjects | None = None,
        max_document_bytes: int = MAX_DOCUMENT_BYTES,
    ) -> None:
        self.projection = projection
        self._store = store
        self._cache = cache
        self.forgotten = forgotten or ForgottenSubjects()
        self.max_document_bytes = max_document_bytes
        # What the batch's handlers wrote, by key (None: deleted), and the
        # subjects each document names; encoded once, when the batch
        # commits, however often a key was written.
        # A handler's document is kept serialized (_Raw: its size checked
        # at the put, where it is serialized anyway); a reaction's as given.
        self.current: dict[str, Message | _Raw | None] = {}
        # What this batch loaded, kept for the batch whatever the cache
        # evicts: a handler call that needs more documents than the cache
        # holds would otherwise load, lose and load them again for ever.
        self._loaded: dict[str, _Raw | None] = {}
        self._subjects: dict[str, tuple[str, ...]] = {}
        # The due times of the documents written with one (a reaction's deadlines).
        self._due: dict[str, int] = {}
        self._writes: list[DocumentWrite] | None = None
        self.parked: list[ParkedEvent] = []

    async def load(self, keys: Iterable[str]) -> None:
        """Read ``keys`` from the store into the cache, in one read; a key
        without a document is remembered as such."""
        wanted = list(keys)
        found = {stored.key: stored for stored in await self._store.load_documents(self.projection, wanted)}
        for key in wanted:
            stored = found.get(key)
            raw = None if stored is None else _Raw(stored.type_name, stored.data)
            self._loaded[key] = raw
            self._cache.put(key, raw)

    def read(self, key: str, message_type: type[M]) -> M | None:
        # Every get of every handler call comes here (and a read model
        # larger than its cache calls its handlers twice per event): one
        # lookup per place, and the parse inline, not in a helper.
        found = self.current.get(key, UNKNOWN)
        if isinstance(found, _Unknown):
            found = self._loaded.get(key, UNKNOWN)
            if isinstance(found, _Unknown):
                found = self._cache.get(key)
                if isinstance(found, _Unknown):
                    raise _NeedsDocument(key)
        if found is None:
            return None
        if not isinstance(found, _Raw):  # a reaction's write, kept as its message
            return _copy_as(found, message_type, key, self.projection)
        if found.type_name != message_type.DESCRIPTOR.full_name:
            raise _type_mismatch(key, self.projection, found.type_name, message_type)
        try:
            return message_type.FromString(found.data)
        except DecodeError as error:
            raise _corrupt(key, self.projection) from error

    def write(
        self, key: str, document: Message | _Raw | None, subjects: tuple[str, ...] = (), due_us: int | None = None
    ) -> None:
        self.current[key] = document
        self._subjects[key] = subjects
        if due_us is not None:
            self._due[key] = due_us
        elif self._due:  # nearly always empty: a reaction's deadlines only
            self._due.pop(key, None)
        self._writes = None

    def due_of(self, key: str) -> int | None:
        """The due time ``key`` was last written with in this batch."""
        return self._due.get(key)

    @property
    def writes(self) -> list[DocumentWrite]:
        if self._writes is None:
            due = self._due
            self._writes = [
                DocumentWrite(key)
                if document is None
                else DocumentWrite(
                    key, document.type_name, document.data, self._subjects[key], due.get(key) if due else None
                )
                if isinstance(document, _Raw)
                else DocumentWrite(
                    key,
                    str(document.DESCRIPTOR.full_name),
                    document.SerializeToString(),
                    self._subjects[key],
                    due.get(key) if due else None,
                )
                for key, document in self.current.items()
            ]
        return self._writes

    def emptied(self) -> _Batch:
        """A batch without writes, over what this one loaded."""
        fresh = _Batch(self.projection, self._store, self._cache, self.forgotten, self.max_document_bytes)
        fresh._loaded = dict(self._loaded)
        return fresh

    def committed(self) -> None:
        """The batch's writes are in the store: the cache now holds them too."""
        for write in self.writes:
            self._cache.put(write.key, None if write.data is None else _Raw(write.type_name, write.data))


class _Scope:
    """``Documents`` for one handler call."""

    def __init__(self, batch: _Batch) -> None:
        self._batch = batch
        self._writes: dict[str, tuple[Message | _Raw | None, tuple[str, ...]]] = {}

    def get(self, key: str, message_type: type[M]) -> M | None:
        if key in self._writes:
            found = self._writes[key][0]
            if found is None:
                return None
            if isinstance(found, _Raw):
                return _parsed(found, message_type, key, self._batch.projection)
            return _copy_as(found, message_type, key, self._batch.projection)
        try:
            return self._batch.read(key, message_type)
        except _NeedsDocument:
            # Checked only when it is to be loaded: a key the batch or its
            # cache holds was checked when a handler first wrote it or asked
            # for it, and a key refused is never loaded, so never held.
            problem = document_key_problem(key)
            if not problem:
                raise
        raise self._bad_key(key, problem)

    def put(self, key: str, document: Message, *, subject: str | Iterable[str] | None = None) -> None:
        # Checked here, in the handler's call, not when the batch commits:
        # a key or a document the store or the read API cannot take fails
        # the handler on its event (stopped there, or parked), where a
        # failed commit would be tried again for ever.
        if problem := document_key_problem(key):
            raise self._bad_key(key, problem)
        subjects = _subjects(subject)
        for one in subjects:
            if problem := subject_problem(one):
                raise ProjectionFailed(
                    f"projection {self._batch.projection}: subject {one[:60]!r} of document {key!r} {problem}",
                    reason="INVALID_SUBJECT",
                    metadata={"projection": self._batch.projection, "key": key},
                )
        # Serialized here, once: its length is the size checked, and the
        # bytes are what the commit writes (a copy would be serialized
        # there), so what the handler does to the message afterwards does
        # not change what was put.
        data = document.SerializeToString()
        size = len(data)
        if size > self._batch.max_document_bytes:
            limit = self._batch.max_document_bytes
            raise ProjectionFailed(
                f"projection {self._batch.projection}: document {key!r} is {size} bytes, more than the"
                f" {limit} the server can send back (half of --max-message-bytes): split it over several keys",
                reason="DOCUMENT_TOO_LARGE",
                metadata={
                    "projection": self._batch.projection,
                    "key": key,
                    "size": str(size),
                    "max_document_bytes": str(limit),
                },
            )
        if subjects and self._batch.forgotten.any_of(subjects):
            # Derived from a forgotten aggregate: it must not exist.
            self._writes[key] = (None, ())
            return
        self._writes[key] = (_Raw(document.DESCRIPTOR.full_name, data), subjects)

    def delete(self, key: str) -> None:
        if problem := document_key_problem(key):
            raise self._bad_key(key, problem)
        self._writes[key] = (None, ())

    def _bad_key(self, key: str, problem: str) -> ProjectionFailed:
        """A key refused by ``GetDocument``'s rule (``document_key_problem``):
        no document is written that cannot be read by its key, nor one the
        store cannot hold. The key is quoted by its repr (escaped), cut
        short: the text is stored with the failure, where NUL or a surrogate
        could not be."""
        shown = repr(key[:60]) + ("..." if len(key) > 60 else "")
        return ProjectionFailed(
            f"projection {self._batch.projection}: document key {shown} {problem}",
            reason="INVALID_KEY",
            metadata={"projection": self._batch.projection, "key": shown},
        )

    def commit(self) -> None:
        for key, (document, subjects) in self._writes.items():
            self._batch.write(key, document, subjects)


class _ProbeScope(_Scope):
    """``Documents`` for a handler call run only to learn which document it
    needs loaded (``ProjectionRunner._probe``): its writes are thrown away
    and what it raises does not count, so its puts and deletes skip the
    checks (the call that counts makes them) and keep no copy. Its gets
    still check a key before asking for it to be loaded: no key is loaded
    that a handler could not have asked for."""

    def put(self, key: str, document: Message, *, subject: str | Iterable[str] | None = None) -> None:
        self._writes[key] = (document, ())

    def delete(self, key: str) -> None:
        self._writes[key] = (None, ())


class ForgottenSubjects:
    """Aggregates a runner learned were forgotten (from a refused commit),
    the most recent ``size``: a put naming one becomes a delete. One that
    left this memory is learned again from the next refusal."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, subjects: Iterable[str]) -> None:
        for subject in subjects:
            self._ids[subject] = None
            self._ids.move_to_end(subject)
        while len(self._ids) > self._size:
            self._ids.popitem(last=False)

    def any_of(self, subjects: Iterable[str]) -> bool:
        if not self._ids:  # the usual case: nothing forgotten lately
            return False
        return any(subject in self._ids for subject in subjects)


def _subjects(subject: str | Iterable[str] | None) -> tuple[str, ...]:
    if subject is None:
        return ()
    if isinstance(subject, str):
        return (subject,)
    # In the order given, repeats dropped: the same list stays the same
    # array in the row (so an update that does not change it stays HOT).
    # Nearly always there are none: the set says so at half the cost of
    # building the ordered dict that drops them.
    subjects = tuple(subject)
    if len(subjects) > 1 and len(set(subjects)) < len(subjects):
        return tuple(dict.fromkeys(subjects))
    return subjects


def _parsed(raw: _Raw, message_type: type[M], key: str, projection: str) -> M:
    """A document a handler put in this call, read back (``_Batch.read``
    parses the others inline)."""
    if raw.type_name != message_type.DESCRIPTOR.full_name:
        raise _type_mismatch(key, projection, raw.type_name, message_type)
    try:
        return message_type.FromString(raw.data)
    except DecodeError as error:
        raise _corrupt(key, projection) from error


def _corrupt(key: str, projection: str) -> ProjectionFailed:
    return ProjectionFailed(f"document {key!r} of projection {projection} does not parse", reason="CORRUPT_DOCUMENT")


def _copy_as(found: Message, message_type: type[M], key: str, projection: str) -> M:
    if not isinstance(found, message_type):
        raise _type_mismatch(key, projection, str(found.DESCRIPTOR.full_name), message_type)
    copy = message_type()
    copy.CopyFrom(found)
    return copy


def _type_mismatch(key: str, projection: str, stored: str, wanted: type[Message]) -> ProjectionFailed:
    # Types by their full names, in the message and the metadata alike (as a
    # reaction's DOCUMENT_TYPE_MISMATCH says them).
    expected = str(wanted.DESCRIPTOR.full_name)
    return ProjectionFailed(
        f"document {key!r} of projection {projection} is a {stored}, not a {expected}",
        reason="DOCUMENT_TYPE_MISMATCH",
        metadata={"projection": projection, "key": key, "stored_type": stored, "expected_type": expected},
    )


def handler_alarm(threshold: float) -> SlowCallAlarm:
    """The runners' (``CheckpointedRunner._slow_call`` says what was slow):
    as the executor does for command handlers, a projection's handlers and
    a reaction's functions run on the event loop, and stall every command of
    the server while they run."""
    return SlowCallAlarm(threshold=threshold, stalled="every command of the server", logger=log)


class Progress:
    """Signals that a runner committed (its checkpoint moved), for readers
    waiting for a position. Take ``next()`` before reading the checkpoint,
    then wait on it: a commit in between is not missed."""

    def __init__(self) -> None:
        self._signal = asyncio.Event()

    def next(self) -> asyncio.Event:
        return self._signal

    def committed(self) -> None:
        self._signal.set()
        self._signal = asyncio.Event()


@dataclass(frozen=True, slots=True)
class Parking:
    """A projection that parks is trying an event again: its handler failed
    on it ``attempts`` times, and at ``max_attempts`` it is parked."""

    position: int
    attempts: int
    max_attempts: int


@dataclass
class ProjectionStatus:
    name: str
    position: int = 0
    running: bool = False
    # The failure holding the projection here now: set at each failed
    # attempt, cleared when a step goes through, when another replica holds
    # the lease and when the runner stops (``last_error`` keeps it).
    error: str = ""
    # The last failure met here, kept once it is over, and when (Unix
    # seconds) it was last met.
    last_error: str = ""
    last_error_at: float = 0.0
    # The aggregate whose event ``last_error`` was met on ("" for a failure
    # at no event): its text may quote the event's payload, and is withdrawn
    # once that aggregate is forgotten (``withdraw_if_forgotten``).
    error_aggregate_id: str = ""
    # With ``error``: the event its handler failed on, to be parked after
    # its plugin's max_attempts (None when ``error`` is no such failure).
    parking: Parking | None = None
    # With ``error``: the position of the event a handler failed on, where
    # the projection stopped (0 when ``error`` is no such failure).
    stopped_at: int = 0
    applied: int = 0
    conflicts: int = field(default=0)


# How long a runner that was waiting for commits lets more arrive before it
# reads them: under load, one read and one commit serve dozens of events; idle,
# a read model is this much later than the log.
BATCH_DELAY = 0.02


# Failures on an event that a newer version of the plugin may read: a runner
# that meets one gives its lease up for a while (docs/deployment.md,
# "Rolling a new plugin version").
NEEDS_A_NEWER_VERSION = frozenset({"SCHEMA_VERSION_TOO_NEW", "UNKNOWN_EVENT_TYPE"})


class ProjectionLease(Protocol):
    """The lease that says whether this replica runs the projection."""

    def fencing(self) -> Fencing | None:
        """The token to commit under while this replica holds the lease, else None."""

    def holder(self) -> str:
        """The address of the replica that holds it ("" if none does, or it is not known yet)."""

    def step_aside(self) -> None:
        """Give it up for a while, for a replica that can go on to take."""


def readable(reader: EventReader, stored: RecordedEvent) -> Iterable[tuple[RecordedEvent, Message]]:
    """``stored`` as a runner's handlers get it: today's events it reads as
    (upcast), or a deleted aggregate's tombstone as its ``AggregateDeleted``
    (read only by a runner that handles deletions: its filter names the type)."""
    if is_tombstone(stored):
        return ((stored, event_pb2.AggregateDeleted.FromString(stored.payload)),)
    return ((event.record, event.message) for event in reader.decode(stored))


def envelope_of(record: RecordedEvent) -> ProjectedEvent:
    """What a projection's or a reaction's handler is told of an event
    beside its message."""
    return ProjectedEvent(
        record.event_id,
        record.aggregate_id,
        record.aggregate_type,
        record.version,
        record.position,
        record.event_type,
        record.timestamp_us,
        record.user_id,
        record.origin,
        record.correlation_id,
        record.metadata,
    )


class _Status(Protocol):
    name: str
    position: int
    error: str
    last_error: str
    last_error_at: float
    running: bool
    conflicts: int


class CheckpointedRunner:
    """What projection and reaction runners share: a checkpoint in the
    projection store under the status's name, read again after a failure;
    a loop that steps from it whenever the log moves on; and failures kept
    in the status, logged and retried every ``_retry_interval`` seconds,
    whatever raised them."""

    KIND = "projection"
    _logger = log
    status: _Status
    _log: LogReader
    _documents: ProjectionStore
    _retry_interval: float
    _poll_interval: float
    _batch_delay: float
    _nudged: asyncio.Event  # set by ``nudge``; each runner makes its own
    _lease: ProjectionLease | None = None
    _task: asyncio.Task[None] | None = None
    # The failure last logged, and the failed attempts since the last step
    # that went through: a database away for a minute is one line per
    # runner, not one every retry interval.
    _said: str = ""
    _failed_attempts: int = 0

    async def step(self, position: int) -> int:
        """Handle the events after ``position`` a batch at a time; return
        the new checkpoint."""
        raise NotImplementedError

    @property
    def holds_lease(self) -> bool:
        """Whether this replica runs it now (always, without a lease)."""
        return self._lease is None or self._lease.fencing() is not None

    @property
    def runs_on(self) -> str:
        """The address of the replica that runs it (holds its lease) as this
        one last heard: "" when none does or it is not known yet, and
        without a lease."""
        return self._lease.holder() if self._lease is not None else ""

    @property
    def error_now(self) -> str:
        """The failure holding it on this replica now: "" while it goes,
        and whenever it does not run here (another replica holds the lease,
        or the runner stopped), whatever it met while it did."""
        return self.status.error if self.status.running and self.holds_lease else ""

    async def _run(self) -> None:
        self.status.running = True
        try:
            position = await self._load_position()
            while True:
                try:
                    position = await self.step(position)
                    # Through, or another replica runs it now: either way
                    # no failure holds it here.
                    self._clear_error()
                    self._going_again()
                    await self._stepped()
                    await self._wait_for_work(position)
                except ConcurrencyConflict:
                    self.status.conflicts += 1  # another replica committed these events first
                    position = await self._load_position()
                    continue
                except Exception as error:
                    failure = self._chronicle_error(error)
                    self._failed(failure)
                    await self._failure_met()
                    if failure.reason in NEEDS_A_NEWER_VERSION and self._lease is not None and self.holds_lease:
                        # An event a newer plugin version wrote (a rolling
                        # upgrade): a replica running that version can go on.
                        self._logger.warning(
                            "%s %s gives its lease up for a while: another replica may read what this one cannot",
                            self.KIND,
                            self.status.name,
                        )
                        self._lease.step_aside()
                    await self._pause_after_failure()
                    position = await self._load_position()
                    continue
                # Let the commits of the next few milliseconds join the batch:
                # a read and a commit per handful of events, not per event.
                await asyncio.sleep(self._batch_delay)
        finally:
            self.status.running = False
            self._clear_error()

    async def _stepped(self) -> None:
        """After a step that went through (or found the lease elsewhere)."""

    async def _failure_met(self) -> None:
        """After a failure, kept in the status (``_failed``), before the pause."""

    def _slow_call(self, event_type: str, position: int, what: str = "") -> Described:
        """A call of its handler on ``event_type`` at ``position`` that was
        slow, as ``handler_alarm`` says it (``what``: which function, if not
        the event's handler)."""
        return (
            f"slow {self.KIND} handler: {self.KIND} {self.status.name}{f' ({what})' if what else ''} on {event_type}"
            f" at position {position}",
            {self.KIND: self.status.name, "event_type": event_type, "position": position},
        )

    def _clear_error(self) -> None:
        """No failure holds it here now (``last_error`` keeps the last one)."""
        self.status.error = ""

    def _chronicle_error(self, error: Exception) -> ChronicleError:
        """``error`` as the status shows it. A ChronicleError says what
        failed; anything else is a bug below, logged with its traceback, and
        must not end the runner for good (its read model or reaction would
        stand still until a restart)."""
        if isinstance(error, ChronicleError):
            return error
        self._logger.exception("%s %s met an unexpected error", self.KIND, self.status.name)
        return self._unexpected(error)

    def nudge(self) -> None:
        """Look at the log and the checkpoint now (an operator rebuilt,
        skipped or reset here), not at the next commit or poll, nor after
        the pause that follows a failure."""
        self._nudged.set()

    def _poll_wait(self) -> float:
        """The longest wait for a commit before the runner looks again."""
        return self._poll_interval

    async def _wait_for_work(self, position: int) -> None:
        """Until the log has events after ``position``, ``_poll_wait`` has
        passed, or a nudge, whichever comes first."""
        if self._nudged.is_set():
            self._nudged.clear()
            return
        commit = asyncio.ensure_future(self._log.wait_for_commit(position, self._poll_wait()))
        nudge = asyncio.ensure_future(self._nudged.wait())
        try:
            await asyncio.wait((commit, nudge), return_when=asyncio.FIRST_COMPLETED)
        finally:
            commit.cancel()
            nudge.cancel()
        self._nudged.clear()

    async def _pause_after_failure(self) -> None:
        """The wait before a failed step is tried again, cut short by a
        nudge: what an operator did here is taken up at once, not after
        retry_seconds."""
        try:
            async with asyncio.timeout(self._retry_interval):
                await self._nudged.wait()
        except TimeoutError:
            return
        self._nudged.clear()

    def _unexpected(self, error: Exception) -> ChronicleError:
        """An error that is not a ChronicleError, as the status shows it."""
        return ProjectionFailed(f"{type(error).__name__}: {error}")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self.KIND}:{self.status.name}")

    async def stop(self) -> None:
        # Whatever its last step met, the rest of the shutdown must still
        # run; an uncommitted batch is applied again later.
        await cancel_and_wait(self._task, f"{self.KIND} {self.status.name}", self._logger)

    async def _load_position(self) -> int:
        while True:
            try:
                position = await self._documents.projection_position(self.status.name)
                self.status.position = position
                return position
            except Exception as error:
                self._failed(self._chronicle_error(error))
                await asyncio.sleep(self._retry_interval)

    def _failed(self, error: ChronicleError) -> None:
        """Kept in the status every time; logged when it is not the failure
        logged last (a store away: by its reason, its message varies), as an
        ERROR, or a WARNING for a store that is away (health says so too);
        the retries of the same failure at DEBUG."""
        self.status.error = self.status.last_error = f"{error.reason}: {error.message}"
        self.status.last_error_at = time.time()
        self._failed_attempts += 1
        away = isinstance(error, StoreUnavailable)
        said = error.reason if away else self.status.error
        if said == self._said:
            level = logging.DEBUG
        else:
            level = logging.WARNING if away else logging.ERROR
            self._said = said
        self._logger.log(
            level,
            "%s %s failed: %s; retrying every %g s",
            self.KIND,
            self.status.name,
            self.status.error,
            self._retry_interval,
        )

    def _going_again(self) -> None:
        """After a step that went through: say so once, if it had failed
        (or that the failures here are over because another replica runs
        it now)."""
        if self._failed_attempts:
            if self.holds_lease:
                self._logger.info(
                    "%s %s is going again after %d failed attempts", self.KIND, self.status.name, self._failed_attempts
                )
            else:
                self._logger.info(
                    "%s %s no longer runs here (another replica holds its lease) after %d failed attempts here",
                    self.KIND,
                    self.status.name,
                    self._failed_attempts,
                )
            self._failed_attempts, self._said = 0, ""


class RunsElsewhere(ValidationError):
    """An event can be skipped only by the replica that runs its projection
    (FAILED_PRECONDITION, that replica's address in "runner")."""

    default_reason = "PROJECTION_RUNS_ELSEWHERE"
    recorded = False


class NotStoppedThere(ValidationError):
    """The projection does not stand still at the event asked to be skipped."""

    default_reason = "NOT_STOPPED_AT"
    recorded = False


def _not_stopped_there(projection: str, position: int, stopped_at: int) -> NotStoppedThere:
    where = f"at position {stopped_at}" if stopped_at else "at no event now"
    return NotStoppedThere(
        f"projection {projection} is not stopped at position {position} (it stands still {where}):"
        " only the event it stopped on can be skipped",
        metadata={"projection": projection, "position": str(position), "stopped_at": str(stopped_at)},
    )


class ProjectionRunner(CheckpointedRunner):
    status: ProjectionStatus

    def __init__(
        self,
        projection: Projection,
        *,
        log: LogReader,
        documents: ProjectionStore,
        reader: EventReader,
        poll_interval: float = 1.0,
        retry_interval: float | None = None,
        batch_delay: float = BATCH_DELAY,
        page_bytes: int = 1024 * 1024,
        lease: ProjectionLease | None = None,
        slow_handler_seconds: float = 0.1,
        max_document_bytes: int = MAX_DOCUMENT_BYTES,
    ) -> None:
        self.projection = projection
        # The largest document its handlers may put: what the read API can send back.
        self._max_document_bytes = max_document_bytes
        self._slow = handler_alarm(slow_handler_seconds)
        self._page_bytes = page_bytes
        self._lease = lease
        self._fencing: Fencing | None = None  # the token of the last step
        self._log = log
        self._documents = documents
        self._reader = reader
        self._poll_interval = poll_interval
        self._batch_delay = batch_delay
        self._retry_interval = projection.retry_seconds if retry_interval is None else retry_interval
        self.status = ProjectionStatus(projection.name)
        self.progress = Progress()
        self._cache = DocumentCache(projection.cache_size)
        self._forgotten = ForgottenSubjects()
        # Failed tries per event (position, id) of a projection that parks,
        # and the last error; forgotten once the runner gets past them.
        self._failures: dict[tuple[int, str], tuple[int, str]] = {}
        self._parking: Parking | None = None  # the failure being raised is one on an event it will park
        self._stopped_at = 0  # the failure being raised is a handler's on the event at this position
        self._failing_aggregate = ""  # the failure being raised is a handler's on an event of this aggregate
        self._nudged = asyncio.Event()
        # The failure this runner stored for every replica to read (None:
        # none; unknown at start and when the lease comes: another replica
        # may have stored one, so the first step through deletes it).
        self._stored_failure: StoredFailure | None = None
        self._failure_maybe_stored = True
        # Whether the stored version of the documents was found to be the
        # declared one since this runner last (re)took the projection: asked
        # again after a failure, a lease taken and a checkpoint moved back.
        self._version_checked = False
        self._version_stopped = False  # the failure it stands still on is PROJECTION_VERSION_CHANGED
        wanted = projection.event_types | reader.upcast_types
        self._filter = LogFilter(aggregate_types=projection.aggregate_types, event_types=frozenset(wanted))

    def rebuilt(self) -> None:
        """RebuildProjection reset it here, recording this replica's declared
        version: a stop for documents of another version is over. Its error
        goes at once (``projection rebuild`` follows the status, and takes an
        error of a projection that stops on failures for the rebuild's), and
        the runner looks at once."""
        if self._version_stopped:
            self._version_stopped = False
            self._clear_error()
        self.nudge()

    async def skip(self, position: int) -> ParkedEvent:
        """Park the event at ``position``, where the projection stands
        still on this replica (a handler failed on it, or it could not be
        read), as ``on_failure="park"`` parks one: recorded with its last
        error in the commit that moves the checkpoint past it, nothing of it
        applied; the runner goes on from there at once. A rebuild applies it
        again. ``RunsElsewhere`` (PROJECTION_RUNS_ELSEWHERE) unless this
        replica holds the projection's lease; ``NotStoppedThere``
        (NOT_STOPPED_AT) unless it stands still at ``position`` now, or the
        checkpoint moved meanwhile (it got past the event by itself, or
        another call skipped it first)."""
        fencing = self._lease.fencing() if self._lease is not None else None
        if self._lease is not None and fencing is None:
            runner = self._lease.holder()
            raise RunsElsewhere(
                f"projection {self.projection.name} runs on another replica ({runner or 'not known yet'}):"
                " ask it to skip the event",
                metadata={"projection": self.projection.name, "runner": runner},
            )
        stopped_at = self.status.stopped_at if self.error_now else 0
        error = self.status.error
        if stopped_at != position or position == 0:
            raise _not_stopped_there(self.projection.name, position, stopped_at)
        checkpoint = await self._documents.projection_position(self.projection.name)
        page = await self._log.read_log(checkpoint, self._filter, 1)
        if checkpoint != position - 1 or not page.events or page.events[0].position != position:
            raise _not_stopped_there(self.projection.name, position, 0)
        record = page.events[0]
        tried = self._failures.get((record.position, record.event_id))
        parked = ParkedEvent(
            self.projection.name,
            record.position,
            record.event_id,
            record.event_type,
            record.aggregate_id,
            error,
            tried[0] if tried else max(1, self._failed_attempts),
            time.time_ns() // 1000,
        )
        try:
            await self._documents.commit_projection(
                self.projection.name,
                expected_position=checkpoint,
                new_position=position,
                writes=(),
                fencing=fencing,
                parked=(parked,),
            )
        except ConcurrencyConflict:
            raise _not_stopped_there(self.projection.name, position, 0) from None
        log.warning(
            "projection %s parks %s at position %d, skipped by an administrator: %s",
            self.projection.name,
            record.event_type,
            record.position,
            error,
        )
        self._clear_error()
        self.status.position = position
        self.progress.committed()
        self.nudge()
        return parked

    async def step(self, position: int) -> int:
        """Apply the next batch after ``position`` and commit it; return the
        new checkpoint. Catches up fully before returning when it can.

        A commit the store refuses because a document names an aggregate
        forgotten meanwhile (``SubjectsForgotten``) wrote nothing, and no
        batch after it committed (commits follow one another): the runner
        learns those subjects and applies the batches again from the stored
        checkpoint, with an empty cache (documents it read may have been
        deleted with their subject since) and those subjects' documents
        deleted."""
        while True:
            try:
                return await self._catch_up(position)
            except SubjectsForgotten as forgotten:
                self._forgotten.add(forgotten.subjects)
                position = await self._documents.projection_position(self.projection.name)

    async def _catch_up(self, position: int) -> int:
        """While catching up, three things overlap: the next batch is read while
        this one is applied, and this one is applied while the one before
        commits (PostgreSQL and Python each work while the other does). A
        batch is applied on what the batches before it wrote (the cache holds
        their writes); the commits still follow one another, each from the
        checkpoint the one before moved to, so if one fails nothing after it
        commits, and the runner starts again from the stored checkpoint with
        an empty cache.

        With a lease: nothing while another replica holds it; from the stored
        checkpoint when this one has (again) taken it; each batch only while
        it still holds it, committed under its fencing token."""
        fencing = self._lease.fencing() if self._lease is not None else None
        if self._lease is not None:
            if fencing is None:
                return position  # another replica runs it now
            if fencing != self._fencing:  # (again) ours: from the stored checkpoint
                self._fencing = fencing
                # Another replica may have stored a failure, or deleted this one's.
                self._stored_failure, self._failure_maybe_stored = None, True
                self._cache.clear()
                self._version_checked = False
                position = self.status.position = await self._documents.projection_position(self.projection.name)
        if not self._version_checked:
            position = await self._of_declared_version(position)
        ahead: asyncio.Future[LogPage] | None = None
        committing: asyncio.Future[None] | None = None
        in_flight: Set[str] = frozenset()  # the keys the commit in flight writes
        committed_to = position
        try:
            while True:
                page = await (ahead or self._read(position))
                ahead = None
                if page.scanned_to == position:
                    if committing is None and committed_to == position:
                        position = committed_to = await self._stored_checkpoint(position, page.head)
                    break
                if self._lease is not None and self._lease.fencing() != fencing:
                    break  # the lease moved: the next step starts over
                if page.more:
                    ahead = await started(self._read(page.scanned_to, self.projection.catch_up_batch_size))
                batch = _Batch(
                    self.projection.name, self._documents, self._cache, self._forgotten, self._max_document_bytes
                )
                unreadable: tuple[RecordedEvent, ChronicleError] | None = None
                try:
                    events = [
                        pair
                        for stored in page.events
                        # Forgotten (redacted): nothing to read, and what was
                        # derived from it went with it (documents name their
                        # subjects); a read model built after the forgetting (a
                        # new projection, a moved store) goes without it.
                        if not stored.redacted
                        for pair in readable(self._reader, stored)
                    ]
                except ChronicleError:
                    # An event no plugin reads: the ones before it are applied
                    # and committed, and it stops there (the failure path only).
                    events, unreadable = self._readable_before(page)
                for index, (record, message) in enumerate(events):
                    while True:
                        try:
                            missing = self._apply_or_park(batch, record, message)
                        except ChronicleError:
                            # It stops at this event: what came before it is
                            # committed first (the failure path only).
                            if committing is not None:
                                await committing
                                committing = None
                                self.status.position = committed_to
                                self.progress.committed()
                            await self._commit_before(batch, events[:index], record, position, fencing)
                            raise
                        if missing is None:
                            break
                        # Handlers are synchronous, loading is not; and the
                        # store must hold what earlier batches wrote first.
                        wanted = self._needed_ahead(batch, events, index + 1, missing)
                        if committing is not None and not in_flight.isdisjoint(wanted):
                            # The store holds what the batch before wrote
                            # only once its commit is in. Other keys load
                            # meanwhile (on another connection: PostgreSQL
                            # commits one while it reads the others).
                            await committing
                            committing = None
                            self.status.position = committed_to
                            self.progress.committed()
                        await batch.load(wanted)
                if committing is not None:
                    await committing
                    committing = None
                    self.status.position = committed_to
                    self.progress.committed()
                if unreadable is not None:
                    await self._commit_before(batch, events, unreadable[0], position, fencing)
                    raise unreadable[1]
                committing = await started(
                    self._commit(batch, expected_position=position, new_position=page.scanned_to, fencing=fencing)
                )
                batch.committed()  # the next batch reads what this one wrote
                in_flight = batch.current.keys()
                self.status.applied += len(page.events)
                position = committed_to = page.scanned_to
                if ahead is None:
                    break
            if committing is not None:
                await committing
                committing = None
                self.progress.committed()
            self.status.position = position
            self.status.error = ""
            self._failures.clear()
            return position
        except BaseException:
            # Another runner may have moved on (a conflict), a commit's fate
            # is unknown, or the store refused one (a forgotten subject):
            # what the cache holds can no longer be trusted.
            self._cache.clear()
            raise
        finally:
            if ahead is not None:
                ahead.cancel()
            if committing is not None:
                committing.cancel()

    async def _commit(
        self, batch: _Batch, *, expected_position: int, new_position: int, fencing: Fencing | None
    ) -> None:
        """Commit ``batch``; then say which events it parked. Said once the
        commit is in, not when the event is set aside: a batch that fails
        on a later event is not committed, and sets the same event aside
        again when it is tried again."""
        await self._documents.commit_projection(
            self.projection.name,
            expected_position=expected_position,
            new_position=new_position,
            writes=batch.writes,
            fencing=fencing,
            parked=batch.parked,
        )
        for parked in batch.parked:
            log.warning(
                "projection %s parks %s at position %d after %d attempts: %s",
                self.projection.name,
                parked.event_type,
                parked.position,
                parked.attempts,
                parked.error,
            )

    def _readable_before(
        self, page: LogPage
    ) -> tuple[list[tuple[RecordedEvent, Message]], tuple[RecordedEvent, ChronicleError] | None]:
        """The events of ``page`` before the first one that cannot be read,
        and that one with its error (all of them and None if, read again,
        every one can)."""
        events: list[tuple[RecordedEvent, Message]] = []
        for stored in page.events:
            if stored.redacted:
                continue
            try:
                events.extend(readable(self._reader, stored))
            except ChronicleError as error:
                return events, (stored, error)
        return events, None

    async def _commit_before(
        self,
        batch: _Batch,
        before: Sequence[tuple[RecordedEvent, Message]],
        failing: RecordedEvent,
        position: int,
        fencing: Fencing | None,
    ) -> None:
        """The batch's handler failed on ``failing``: commit the events
        ``before`` it, with the checkpoint just before it (the runner stops
        "at that event"), in one commit like any batch's. ``batch`` holds
        just their writes (a failed call's never join it); but when the
        failing event is one of several that an upcaster made of one stored
        event, the ones before it go with it: the others are applied again
        in a batch of their own."""
        self._stopped_at = 0  # until what came before it is in: a store away is no failure at an event
        end = failing.position - 1
        if end > position:
            prefix = [pair for pair in before if pair[0].position < failing.position]
            if len(prefix) < len(before):
                batch = batch.emptied()
                for record, message in prefix:
                    while (missing := self._apply_or_park(batch, record, message)) is not None:
                        await batch.load((missing,))
            await self._commit(batch, expected_position=position, new_position=end, fencing=fencing)
            batch.committed()
            self.status.applied += len(prefix)
            self.status.position = end
            self.progress.committed()
        self._stopped_at = failing.position

    async def _of_declared_version(self, position: int) -> int:
        """Make sure the documents are of the declared version before
        applying anything on them; the position to go on from. A first run
        records the declared version with its checkpoint. A stored version
        that differs stops the projection here (PROJECTION_VERSION_CHANGED:
        its documents mean something else than its handlers would make),
        until a rebuild records the declared one; with ``rebuild_on_change``
        a higher declared version rebuilds it from the start instead (only a
        lease holder gets here). A lower one never does: that is a replica
        of an older plugin (a rollback, or mid-roll), whose rebuild would
        undo the newer one's."""
        name, declared = self.projection.name, self.projection.version
        stored = await self._documents.start_projection_version(name, declared)
        if stored != declared:
            if not (self.projection.rebuild_on_change and declared > stored):
                # It will not get past its checkpoint until rebuilt: a read
                # waiting for a later position is refused at once (stopped()).
                self._stopped_at = position + 1
                self._version_stopped = True
                raise ProjectionFailed(
                    f"projection {name} is declared at version {declared} and its documents were built by version"
                    f" {stored}: it does not run on documents of another meaning; rebuild it"
                    f" (RebuildProjection, chronicle projection rebuild {name}) to build them at version {declared}",
                    reason="PROJECTION_VERSION_CHANGED",
                    metadata={"projection": name, "version": str(declared), "stored_version": str(stored)},
                )
            log.warning(
                "projection %s: rebuilding from the start of the log, its documents were built by version %d"
                " and it is declared at version %d (rebuild_on_change)",
                name,
                stored,
                declared,
            )
            await self._documents.reset_projection(name, version=declared)
            self._cache.clear()
            position = self.status.position = 0
            self.progress.committed()
        if self._version_stopped:  # rebuilt elsewhere (or by rebuild_on_change): that stop is over
            self._version_stopped = False
            self._clear_error()
        self._version_checked = True
        return position

    def _failed(self, error: ChronicleError) -> None:
        # A handler's failure on an event it will park (set just before it
        # was raised), or any other failure.
        self._version_checked = False  # a rebuild may be what ends it
        self.status.parking, self._parking = self._parking, None
        self.status.stopped_at, self._stopped_at = self._stopped_at, 0
        self.status.error_aggregate_id, self._failing_aggregate = self._failing_aggregate, ""
        super()._failed(error)
        self.progress.committed()  # a reader waiting for it learns of it at once (``stopped``)

    def _clear_error(self) -> None:
        super()._clear_error()
        self.status.parking = None
        self.status.stopped_at = 0
        self._failing_aggregate = ""

    async def _load_position(self) -> int:
        before = self.status.position
        position = await super()._load_position()
        if position < before:
            # Rebuilt (RebuildProjection deletes the stored failure): a
            # failure met again is stored again.
            self._stored_failure = None
        return position

    async def _failure_met(self) -> None:
        """Stopped at an event (not one it will park): the failure is
        stored for every replica (``projection_failures``), once per
        failure, not at every retry."""
        failed_at = self.status.stopped_at if self.status.parking is None else 0
        fencing = self._lease.fencing() if self._lease is not None else None
        if not failed_at or (self._lease is not None and fencing is None):
            return
        failure = StoredFailure(failed_at, self.status.error, self.status.error_aggregate_id)
        if failure != self._stored_failure and await record_failure(
            self._documents, self.projection.name, failure, fencing
        ):
            self._stored_failure = failure
            self._failure_maybe_stored = False

    async def _stepped(self) -> None:
        """Going again (here, holding the lease): a failure stored for
        every replica is over."""
        if not (self._stored_failure is not None or self._failure_maybe_stored) or not self.holds_lease:
            return
        if self._stored_failure is None and not await has_failure(self._documents, self.projection.name):
            self._failure_maybe_stored = False  # a read, not a write, on every start
            return
        fencing = self._lease.fencing() if self._lease is not None else None
        if await clear_failure(self._documents, self.projection.name, fencing):
            self._stored_failure = None
            self._failure_maybe_stored = False

    def stopped(self) -> tuple[int, str]:
        """The position of the event a handler failed on, where the
        projection stands still on this replica (an event it will not park:
        ``on_failure="stop"``; for documents of another version, the
        position after its checkpoint: nothing past it is applied until a
        rebuild), and the error; (0, "") when it does not
        stand still at an event here (it goes, it will park the event, it
        failed otherwise, or it runs elsewhere)."""
        if not self.error_now or self.status.parking is not None or not self.status.stopped_at:
            return 0, ""
        return self.status.stopped_at, self.status.error

    async def _stored_checkpoint(self, position: int, head: int | None = None) -> int:
        """Nothing new after ``position``: the checkpoint as stored, which
        differs only when the projection was rebuilt (moved back to 0) or
        another runner moved it, or the log went back under ``position``
        (its end ``head`` below it: restored from an older copy, failed over
        to a standby that lost commits), the checkpoint, kept in the same
        database, with it. Then the cache is stale and goes. A checkpoint
        beyond the log's end did not go back with it: going on would wait
        for the log to pass it and skip what comes before, so it is this
        runner's failure (LOG_REWOUND, in its status, tried again as any)."""
        stored = await self._documents.projection_position(self.projection.name)
        went_back = head is not None and head < position
        if went_back and head is not None and stored > head:
            raise LogRewound(
                f"projection {self.projection.name}: its checkpoint {stored} is beyond the log's end {head}: the"
                " log went back without it (not restored from one copy of the database?); it would skip the"
                " events written up to its checkpoint. Rebuild it (docs/subscriptions.md)",
                metadata={"projection": self.projection.name, "position": str(stored), "log_head": str(head)},
            )
        if went_back:
            log.warning(
                "projection %s: the log went back under its position %d (its end is now %d): restored or failed"
                " over? It goes on from its checkpoint as the database holds it, %d",
                self.projection.name,
                position,
                head,
                stored,
            )
        elif stored != position:
            log.info("projection %s: checkpoint moved from %d to %d (rebuilt)", self.projection.name, position, stored)
        if stored != position:
            self._cache.clear()
            self._version_checked = False  # a rebuild from another replica records its own version
            self.status.position = stored
            self.progress.committed()
        return stored

    def _apply_or_park(self, batch: _Batch, record: RecordedEvent, message: Message) -> str | None:
        """``_apply``; for a projection that parks, an event whose handler
        failed ``max_attempts`` times is parked in ``batch`` instead (and
        not tried again when a later event fails the batch before it
        commits)."""
        event = (record.position, record.event_id)
        failed = self._failures.get(event)
        if failed is None or failed[0] < self.projection.max_attempts:
            try:
                return self._apply(batch, record, message)
            except ChronicleError as error:
                self._failing_aggregate = record.aggregate_id
                if self.projection.on_failure != "park":
                    raise
                failed = (failed[0] + 1 if failed else 1, f"{error.reason}: {error.message}")
                self._failures[event] = failed
                if failed[0] < self.projection.max_attempts:
                    self._parking = Parking(record.position, failed[0], self.projection.max_attempts)
                    raise
        attempts, error_text = failed
        batch.parked.append(
            ParkedEvent(
                self.projection.name,
                record.position,
                record.event_id,
                record.event_type,
                record.aggregate_id,
                error_text,
                attempts,
                time.time_ns() // 1000,
            )
        )
        return None

    def _read(self, position: int, limit: int | None = None) -> Awaitable[LogPage]:
        """The page after ``position``: ``limit`` events (the projection's
        batch size unless told) and at most ``page_bytes``."""
        size = self.projection.batch_size if limit is None else limit
        return self._log.read_log(position, self._filter, size, max_bytes=self._page_bytes)

    def _needed_ahead(
        self, batch: _Batch, events: Sequence[tuple[RecordedEvent, Message]], start: int, missing: str
    ) -> set[str]:
        """``missing`` and the documents the next events' handlers will ask
        for that are not loaded either, to load them in one go rather than
        one round trip each (a cold cache: a rebuild, a read model larger
        than the cache). Found by trying the handlers on what is loaded, their
        writes thrown away: the handlers run again, in order, once loaded
        (a handler may be run several times; only its last run counts). Stops
        after ``PROBE_QUIET`` events in a row that need nothing new, so a
        rare miss in a warm cache costs a few handler calls, not a page."""
        wanted = {missing}
        quiet = 0
        for record, message in events[start:]:
            if quiet >= PROBE_QUIET or len(wanted) >= PROBE_KEYS:
                break
            key = self._probe(batch, record, message)
            if key is None or key in wanted:
                quiet += 1
            else:
                wanted.add(key)
                quiet = 0
        return wanted

    def _probe(self, batch: _Batch, record: RecordedEvent, message: Message) -> str | None:
        """The document ``record``'s handler would need loaded first, if any;
        nothing it writes is kept and nothing it raises counts."""
        registered = self.projection.handlers.get(record.event_type)
        if registered is None:
            return None
        try:
            registered[1](message, envelope_of(record), _ProbeScope(batch))
        except _NeedsDocument as need:
            return need.key
        except Exception:
            return None  # it may fail for real later, applied in order; not our business here
        return None

    def _apply(self, batch: _Batch, record: RecordedEvent, message: Message) -> str | None:
        """Run the event's handler; the key of a document it needs that is
        not loaded yet (nothing applied then: load it and call again)."""
        registered = self.projection.handlers.get(record.event_type)
        if registered is None:
            return None  # a type read only because an upcaster turns it into one of ours
        envelope = envelope_of(record)
        scope = _Scope(batch)
        started = time.perf_counter()
        try:
            registered[1](message, envelope, scope)
        except _NeedsDocument as need:
            return need.key
        except ChronicleError:
            raise
        except Exception as error:
            log.exception(
                "projection %s failed on %s at position %d",
                self.projection.name,
                record.event_type,
                record.position,
            )
            raise ProjectionFailed(
                f"projection {self.projection.name} failed on {record.event_type} at position"
                f" {record.position}: {type(error).__name__}: {error}",
                metadata={"projection": self.projection.name, "position": str(record.position)},
            ) from error
        finally:
            # Handlers run on the event loop: a slow one held up every command.
            self._slow.check(started, self._slow_call, record.event_type, record.position)
        scope.commit()
        return None


R = TypeVar("R", bound=CheckpointedRunner)


class Runners(Generic[R]):
    """Runners by name, started and stopped together."""

    def __init__(self, runners: Sequence[R]) -> None:
        self.runners = {runner.status.name: runner for runner in runners}

    def start(self) -> None:
        for runner in self.runners.values():
            runner.start()

    async def stop(self) -> None:
        for runner in self.runners.values():
            await runner.stop()


class Projections(Runners[ProjectionRunner]):
    """Every loaded plugin's projections."""


# Stands in for an error text withdrawn because its aggregate was forgotten.
WITHDRAWN_ERROR = "withdrawn: it was met on an event of an aggregate since forgotten"


class _ErrorHolder(Protocol):
    error: str
    last_error: str
    error_aggregate_id: str


async def withdraw_if_forgotten(status: _ErrorHolder, keys: KeyStore, *also: str) -> bool:
    """Withdraw the error texts of ``status`` when the aggregate they were
    met on, or one of ``also`` (a reaction's: the aggregate its failed
    command was sent to), has been forgotten (on any replica: the key's
    tombstone is in the store); whether it did. A handler's error may quote
    the event's payload (a refusal, the commanded aggregate's state), and
    forgetting promises that nothing of the aggregate stays readable
    (docs/security.md)."""
    for aggregate_id in (status.error_aggregate_id, *also):
        if aggregate_id and await _forgotten(keys, aggregate_id):
            break
    else:
        return False
    if status.error and status.error == status.last_error:
        status.error = WITHDRAWN_ERROR
    status.last_error = WITHDRAWN_ERROR
    status.error_aggregate_id = ""
    return True


async def _forgotten(keys: KeyStore, aggregate_id: str) -> bool:
    key = await keys.load_data_key(aggregate_id)
    return key is not None and key.wrapped is None
