"""Running reactions: each follows the log after its checkpoint, sends the
commands its plugin's functions return, and commits its state, its parked
commands and the new checkpoint together.

Like a projection (``processing/projections.py``, whose document overlay and
cache this reuses): a batch of events is read after checkpoint P, handled in
log order, and its state changes committed with the checkpoint moved from P to
the batch's end, in one transaction, under the reaction's lease (one replica
runs each reaction in a cluster; the commit carries the lease's fencing
token).

Unlike a projection, a reaction acts outside its documents: it submits
commands, through the pipeline (router → worker → executor), one after
the other in the order returned, before the batch commits. A crash between
a command and the commit runs the batch again from P, and sends the same
commands again; their ids are derived from the event (see
``service.plugins.reactions``), so each is answered from its command record
(the same result, or the same recorded refusal) and nothing happens twice.
The state the functions see is the one committed at P, so they decide alike.

A command refused by its aggregate (a recorded refusal; or a command no
aggregate can take: an unknown type, a bad aggregate id, an aggregate of
another type) goes to the reaction's ``on_refused``; what it returns is sent
in turn (``IGNORE``: nothing, and nothing parked; counted ``ignored``).
Parked (no ``on_refused``, nothing returned, or ``MAX_ROUNDS``
compensations refused in a row): kept in the reaction's documents
(``processing/reaction_documents.py``), for an operator to replay or
dismiss (``replay``, ``dismiss``). Any other failure (the store unavailable, an overloaded
queue, a handler that raised, a function of the reaction that raised) stops
the batch at the event E it met it on, reported by ``status``, and E is
tried again after a pause.
A reaction declared with ``on_failure="park"`` counts the failures of
each command that failed for a plugin's bug (``_plugin_failure``: a handler
that raised, an event of its aggregate no plugin reads), in the store
(``processing/reaction_failures.py``: a restart goes on from the count); at
its ``max_attempts``-th it parks the command with that failure's reason
instead (``on_refused`` is not asked) and goes on. So too a deadline whose
``@on_deadline`` function fails, counted in its own document: parked in
place of firing (``_deadline_given_up``), replayed by calling it again;
and a deadline's command that fails so, counted in the deadline's document
(``Deadline.command_failures``): parked as an event's, the deadline fired.

A batch stopped at E commits what came before E: the batch's writes are
taken back to what they were before E (a savepoint per event) and committed
with the checkpoint moved to the event before E, so the processes of those
events go on and their commands are not sent again. E's commands sent
before the failure are sent again when E is tried again, under the same ids
(answered from their records), as after a crash. Too many parked commands
(``TooManyParked``: the limit reached by E) stop it so too: each parked
command an operator replays or dismisses lets the reaction go on by one
event that parks.

Loops: each command carries its cause chain's number of reaction hops
(``HOPS_KEY``: its event's plus one). One that would exceed the reaction's
``max_hops`` is not sent but parked, reason ``REACTION_LOOP``.

A function of the reaction (or a projection's handler) runs on the event
loop: a call slower than ``slow_handler_seconds`` is logged, naming the
reaction and the event type.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from google.protobuf.message import Message

from chronicle.v1 import reaction_service_pb2 as reaction_pb
from service.errors import (
    AggregateDeleted,
    AggregateForgotten,
    AggregateTypeMismatch,
    ChronicleError,
    CommandIdReused,
    EventNotReadable,
    HandlerFailed,
    LogRewound,
    PermissionDenied,
    ReactionFailed,
    ResourceNotFound,
    SubjectsForgotten,
    ValidationError,
    quoted,
)
from service.plugins.api import COMMAND_INTERNAL
from service.plugins.projections import ProjectedEvent
from service.plugins.reactions import (
    HOPS_KEY,
    IGNORE,
    MAX_ROUNDS,
    Cancel,
    Compensation,
    Reacted,
    Reaction,
    Refusal,
    Schedule,
    Send,
    actions,
    command_id_for,
    hops_of,
)
from service.plugins.registry import Registry
from service.principal import REACTION_PREFIX, tenant_of_id
from service.processing import reaction_documents
from service.processing.commands import CommandRequest, CommandResult
from service.processing.deadlines import (
    DEADLINE_FIRED,
    Clock,
    Soonest,
    command_seed,
    deadline_of,
    parked_deadline_id,
    set_timers,
    wall_clock_us,
)
from service.processing.projections import (
    BATCH_DELAY,
    CheckpointedRunner,
    DocumentCache,
    ForgottenSubjects,
    ProjectionLease,
    Runners,
    _Batch,
    envelope_of,
    handler_alarm,
    readable,
)
from service.processing.reaction_documents import (
    PARKED_KEY,
    PARKED_PREFIX,
    ParkedList,
    ProcessState,
    ReactionBatch,
    deadline_key,
    load_index,
    load_parked_command,
    prune,
    subjects_of,
    write_parked,
)
from service.processing.reaction_failures import FailureCounts
from service.processing.upcasting import EventReader
from service.processing.watchdog import Described
from service.store.base import LogReader, ProjectionStore
from service.store.imported import IMPORTED_KEY, is_imported
from service.store.leasing import Fencing
from service.store.records import LogFilter, LogPage, RecordedEvent

log = logging.getLogger(__name__)

# The longest aggregate id a command may name (as the codec checks a client's).
_MAX_AGGREGATE_ID = 200
Submit = Callable[[CommandRequest], Awaitable[CommandResult]]
# Told of each command's outcome: (reaction, "accepted" | "replayed" | "refused" | "parked" | "ignored"),
# and of each deadline fired: (reaction, "deadline_fired").
Outcomes = Callable[[str, str], None]
# What one of a reaction's functions returned, split: its commands, and its
# deadlines to schedule or cancel.
Actions = list[Send | Schedule | Cancel]
# Parked commands an operator's replay of all sends per commit (and per hold
# of the reaction's lock, so that the reaction goes on between them).
_REPLAY_STEP = 50


class ReactionLease(ProjectionLease, Protocol):
    """The lease that says whether this replica runs the reaction (and,
    ``holder``, which does)."""


class RunsElsewhere(ValidationError):
    """A parked command can only be replayed or dismissed by the replica
    that runs its reaction (FAILED_PRECONDITION, its address in "runner")."""

    default_reason = "REACTION_RUNS_ELSEWHERE"
    recorded = False


@dataclass(frozen=True, slots=True)
class Replayed:
    """What a replayed parked command met: accepted (and no longer parked),
    or refused again (and still parked, with this refusal)."""

    command_id: str
    accepted: bool
    reason: str = ""
    message: str = ""


@dataclass
class ReactionStatus:
    name: str
    position: int = 0
    running: bool = False
    error: str = ""  # the failure holding it here now (see ProjectionStatus)
    last_error: str = ""
    last_error_at: float = 0.0
    error_aggregate_id: str = ""  # the aggregate whose event it was met on (see ProjectionStatus)
    # The aggregate the command that failed was sent to ("" for a failure
    # of no command): a refusal or a handler's error may quote its state,
    # and is withdrawn once that aggregate is forgotten too.
    error_command_aggregate_id: str = ""
    # Since this server started. A batch that fails is tried again, and its
    # events handed to the functions again: counted once, when it commits.
    handled: int = 0  # events handed to the reaction's functions, in batches committed
    accepted: int = 0  # commands that appended (their first sending: not those answered from their record)
    refused: int = 0  # refusals met (one answered again from its record, its batch sent again, included)
    replayed: int = 0  # commands answered from their record (sent again: a crash, a failed batch, a lease moved)
    parked: int = 0
    ignored: int = 0  # refusals on_refused accepted as harmless (IGNORE): neither compensated nor parked
    conflicts: int = 0
    # Where it started: the position start_from fixed when it was new to the
    # store (see processing/reaction_starts.py).
    start_position: int = 0
    deadlines_fired: int = 0  # since this server started, in commits that went through


def _plugin_failure(error: ChronicleError) -> bool:
    """Whether the command failed for a bug in the plugins' code that runs
    it: a handler, apply function or middleware that raised or returned
    what it must not (``HandlerFailed``: HANDLER_FAILED, UNREGISTERED_EVENT,
    STATE_CHANGED_BY_HANDLER, TOO_MANY_LOOKUPS, MIDDLEWARE_FAILED), or an
    event of its aggregate that no loaded plugin reads (``EventNotReadable``:
    UPCAST_FAILED, CORRUPT_EVENT, …); or a command its plugin lets only
    other reactions send (COMMAND_INTERNAL: the plugins disagree on who
    sends it). Not the command's refusal, and not what waiting cures (the
    store away, a full queue, a conflict): only a fixed plugin does, so a
    reaction with ``on_failure="park"`` may park it."""
    return isinstance(error, HandlerFailed | EventNotReadable) or (
        isinstance(error, PermissionDenied) and error.reason == COMMAND_INTERNAL
    )


def _refusal(error: ChronicleError) -> bool:
    """Whether the command itself was refused (for good: handed back to the
    reaction), as opposed to a failure that trying again may cure. A deleted
    aggregate takes no command until it is restored: the reaction's to
    compensate, or an operator's to replay once it is back. A forgotten one
    takes none ever again."""
    return error.recorded or isinstance(
        error, AggregateTypeMismatch | CommandIdReused | AggregateDeleted | AggregateForgotten
    )


class ReactionRunner(CheckpointedRunner):
    KIND = "reaction"
    _logger = log
    status: ReactionStatus

    def __init__(
        self,
        reaction: Reaction[Any],
        *,
        registry: Registry,
        submit: Submit,
        log: LogReader,
        documents: ProjectionStore,
        reader: EventReader,
        poll_interval: float = 1.0,
        retry_interval: float | None = None,
        batch_delay: float = BATCH_DELAY,
        page_bytes: int = 1024 * 1024,
        lease: ReactionLease | None = None,
        outcomes: Outcomes | None = None,
        max_parked: int | None = None,
        slow_handler_seconds: float = 0.1,
        fix_start: Callable[[], Awaitable[int]] | None = None,
        clock: Clock = wall_clock_us,
    ) -> None:
        self.reaction = reaction
        self._registry = registry
        self._submit = submit
        self._log = log
        self._documents = documents
        self._reader = reader
        self._poll_interval = poll_interval
        self._retry_interval = reaction.retry_seconds if retry_interval is None else retry_interval
        self._batch_delay = batch_delay
        self._page_bytes = page_bytes
        self._lease = lease
        self._outcomes = outcomes
        # How many parked commands stop it (TOO_MANY_PARKED): the module's
        # limit unless told (tests park a few).
        self._max_parked = reaction_documents.MAX_PARKED if max_parked is None else max_parked
        self._slow = handler_alarm(slow_handler_seconds)
        self._fencing: Fencing | None = None
        self._cache = DocumentCache()
        self._forgotten = ForgottenSubjects()
        # A reaction that parks failures: how many times each command of the
        # event it is stopped at failed for a plugin's bug, kept in the store.
        self._failures = FailureCounts(reaction.name, documents)
        self.status = ReactionStatus(reaction.name)
        self._failing_aggregate = ""  # the failure being raised is one on an event of this aggregate
        self._failing_command_aggregate = ""  # ... and of a command sent to this aggregate
        wanted = reaction.event_types | reader.upcast_types
        self._filter = LogFilter(aggregate_types=reaction.aggregate_types, event_types=frozenset(wanted))
        self._origin = f"{REACTION_PREFIX}{reaction.name}"
        # Held by each step and by an operator's replay or dismissal: both
        # write the reaction's documents at its checkpoint, one at a time.
        self._lock = asyncio.Lock()
        # The positions of the events the batch in hand handed to the
        # functions: counted "handled" when (and as far as) it commits.
        self._handled: list[int] = []
        # Fixes its start (and says where it started) if the server's start
        # could not (the store was away then): before its first batch.
        self._fix_start = fix_start
        # Deadlines: what time it is (a test's clock moves by itself), and
        # the soonest due, known without a read per batch.
        self._clock = clock
        self._soonest = Soonest(reaction.name, documents)
        # The deadline being fired (None: an event is being handled).
        self._where_now: _Where | None = None
        # The deadline's document as the runner found it due, while it fires
        # (None for an operator's replay of a parked one), and the command of
        # it whose failure for a plugin's bug was just counted ("": none).
        self._firing: reaction_pb.Deadline | None = None
        self._firing_failed = ""
        # What an operator's replay of parked deadlines did, counted once it
        # commits: deadlines fired, commands their firing parked.
        self._replay_fired = 0
        self._replay_parked = 0
        # Where an operator's reset moved the checkpoint, for the next step
        # to go on from (None: not moved), and the wake-up that starts it.
        self._reset_to: int | None = None
        self._nudged = asyncio.Event()

    def started_at(self, position: int) -> None:
        """Its start is fixed (or was found), at ``position``: nothing left
        for the runner to fix."""
        self._fix_start = None
        self.status.start_position = position

    def _unexpected(self, error: Exception) -> ChronicleError:
        return ReactionFailed(f"{type(error).__name__}: {error}", reason="REACTION_FAILED")

    async def step(self, position: int) -> int:
        """Handle the events after ``position`` a batch at a time, each batch
        committed before the next is read; return the new checkpoint. With a
        lease: nothing while another replica holds it, from the stored
        checkpoint when this one has (again) taken it."""
        async with self._lock:
            while True:
                try:
                    return await self._step(position)
                except SubjectsForgotten as forgotten:
                    # A document the batch wrote names an aggregate forgotten
                    # meanwhile: nothing was written. The batch runs again from
                    # the checkpoint with those documents deleted (its commands
                    # answered from their records, as after a crash).
                    self._forgotten.add(forgotten.subjects)
                    position = self.status.position = await self._documents.projection_position(self.reaction.name)

    async def _step(self, position: int) -> int:
        if self._fix_start is not None:
            self.started_at(await self._fix_start())
            position = self.status.position = await self._documents.projection_position(self.reaction.name)
        if self._reset_to is not None:
            # Reset between two steps: the loop still holds the old checkpoint.
            position, self._reset_to = self._reset_to, None
        fencing = self._lease.fencing() if self._lease is not None else None
        if self._lease is not None:
            if fencing is None:
                return position
            if fencing != self._fencing:
                self._fencing = fencing
                self._cache.clear()
                self._failures.forget()  # another replica may have counted meanwhile
                self._soonest.forget()  # it may have scheduled some meanwhile
                position = self.status.position = await self._documents.projection_position(self.reaction.name)
        try:
            while True:
                page = await self._read(position)
                if page.scanned_to == position and page.head is not None and page.head < position:
                    return await self._went_back(position, page.head)
                if page.scanned_to == position:
                    # Caught up: every deadline due by now may fire.
                    await self._fire_due(position, fencing, self._clock())
                    break
                if self._lease is not None and self._lease.fencing() != fencing:
                    break  # the lease moved: the next step starts over
                if page.events:
                    # Behind: only those due before the next event to handle
                    # was committed (the events before their time are handled).
                    await self._fire_due(position, fencing, min(self._clock(), page.events[0].timestamp_us - 1))
                batch = ReactionBatch(self.reaction.name, self._documents, self._cache, self._forgotten)
                self._handled.clear()
                parked = ParkedList(batch, self._max_parked)
                end, failure = await self._handle(page, position, batch, parked)
                counted = self._failures.write(batch, end)
                if failure is not None and end == position:
                    # It stopped at its first event: nothing to commit but
                    # a failure counted, the checkpoint left where it is.
                    self.status.parked = parked.count or self.status.parked
                    if counted:
                        await self._documents.commit_projection(
                            self.reaction.name,
                            expected_position=position,
                            new_position=position,
                            writes=batch.writes,
                            fencing=fencing,
                        )
                        self._failures.committed(position)
                    raise failure
                parked.write()
                await self._documents.commit_projection(
                    self.reaction.name,
                    expected_position=position,
                    new_position=end,
                    writes=batch.writes,
                    fencing=fencing,
                )
                batch.committed()
                self._soonest.written(batch.writes)
                self._failures.committed(end)
                self.status.handled += sum(1 for handled in self._handled if handled <= end)
                position = self.status.position = end
                if parked.count is not None:
                    self.status.parked = parked.count
                for _ in range(parked.added):
                    self._count("parked")
                if failure is not None:
                    raise failure  # reported; tried again (from here) after a pause
                if not page.more:
                    break
            self.status.error = ""
            return position
        except BaseException:
            self._cache.clear()  # what the batch left in it was never committed
            raise

    async def _handle(
        self, page: LogPage, position: int, batch: ReactionBatch, parked: ParkedList
    ) -> tuple[int, Exception | None]:
        """React to the events of ``page`` (read after ``position``) in
        ``batch``; the position to commit up to (the page's end), and, when
        an event fails (a function that raised, a command that failed, one
        parked past the limit), the position of the event before it
        (``position`` for the first) and the failure, the batch taken back
        to what it was before that event."""
        for index, stored in enumerate(page.events):
            if stored.redacted or is_imported(stored):
                # Forgotten: nothing to read, nothing to react to (what
                # was derived from it went with it). Imported: history, whose
                # side effects the system it came from had (store/imported.py).
                continue
            savepoint = batch.savepoint(), parked.savepoint()
            self._failing_command_aggregate = ""
            try:
                for record, message in readable(self._reader, stored):
                    await self._react(batch, parked, record, message)
            except SubjectsForgotten:
                raise  # the whole batch runs again (``step``)
            except Exception as failure:
                batch.rollback(savepoint[0])
                parked.rollback(savepoint[1])
                self._failing_aggregate = stored.aggregate_id
                return (page.events[index - 1].position if index else position), failure
        return page.scanned_to, None

    def _failed(self, error: ChronicleError) -> None:
        self.status.error_aggregate_id, self._failing_aggregate = self._failing_aggregate, ""
        self.status.error_command_aggregate_id, self._failing_command_aggregate = self._failing_command_aggregate, ""
        super()._failed(error)

    async def replay(self, command_id: str) -> Replayed:
        """Send the parked command ``command_id`` again, under the id
        ``command_id_for("<parked id>/replay", <replays so far>)``: a replay
        whose outcome was lost (a crash before it was written down) is sent
        again under the same id, so it too happens once."""
        return await self._settle(command_id, replay=True)

    async def dismiss(self, command_id: str) -> None:
        """Forget the parked command ``command_id`` without sending it."""
        await self._settle(command_id, replay=False)

    async def replay_all(self, reason: str = "") -> list[Replayed]:
        """Send every parked command (those refused with ``reason``, if
        given) again, as ``replay`` does, oldest first and each once (one
        refused again is not sent twice; one parked meanwhile waits for
        another call). A step of them at a time, each step committed, the
        reaction free to go on between steps. A failure that is not a
        refusal stops it, what was sent before it committed."""
        done: list[Replayed] = []
        seen: set[str] = set()
        among: set[str] | None = None  # those parked when it began
        while True:
            async with self._lock:
                fencing = self._runs_here()
                if among is None:
                    batch = _Batch(self.reaction.name, self._documents, DocumentCache(), self._forgotten)
                    among = {entry.command_id for entry in (await load_index(batch)).commands}
                while True:
                    try:
                        step = await self._replay_step(reason, seen, among, fencing)
                        break
                    except SubjectsForgotten as forgotten:
                        self._forgotten.add(forgotten.subjects)
            if not step:
                return done
            done.extend(step)

    async def dismiss_all(self, reason: str = "") -> int:
        """Forget every parked command (those refused with ``reason``, if
        given) without sending it, in one commit; how many."""
        async with self._lock:
            fencing = self._runs_here()
            position, batch = await self._in_place()
            index = await load_index(batch)
            await prune(batch, index)
            kept = []
            for entry in index.commands:
                parked = await load_parked_command(batch, entry.command_id)
                if parked is not None and (not reason or parked.reason == reason):
                    batch.write(PARKED_PREFIX + entry.command_id, None)
                else:
                    kept.append(entry)
            dismissed = len(index.commands) - len(kept)
            del index.commands[:]
            index.commands.extend(kept)
            await self._commit_parked(batch, index, position, fencing)
            return dismissed

    async def dismiss_confirmed(self, command_ids: Sequence[str]) -> tuple[int, int]:
        """Forget the parked commands ``command_ids`` (those an operator
        confirmed) without sending them, in one commit under the lease's
        fencing: all of them, or none if the commit fails. One no longer
        parked (replayed or dismissed meanwhile) is counted as gone, not an
        error; one parked since and not named stays. (dismissed, gone)."""
        named = set(command_ids)
        async with self._lock:
            fencing = self._runs_here()
            position, batch = await self._in_place()
            index = await load_index(batch)
            await prune(batch, index)  # a forgotten one goes as it would anyway, counted gone
            kept = [entry for entry in index.commands if entry.command_id not in named]
            for entry in index.commands:
                if entry.command_id in named:
                    batch.write(PARKED_PREFIX + entry.command_id, None)
            dismissed = len(index.commands) - len(kept)
            del index.commands[:]
            index.commands.extend(kept)
            await self._commit_parked(batch, index, position, fencing)
            return dismissed, len(named) - dismissed

    async def drop_state(self, state_key: str) -> None:
        """Delete the state the reaction keeps under ``state_key``, whatever
        its type (one it cannot load included), and its deadlines, without
        moving its checkpoint: the process's next event starts from an empty
        state."""
        await self.drop_states((state_key,))

    async def drop_states(self, state_keys: Sequence[str]) -> None:
        """``drop_state`` of each of ``state_keys`` (distinct), in one
        commit: all, or none when the reaction keeps no state under one of
        them (PROCESS_STATE_NOT_FOUND, naming those)."""
        async with self._lock:
            fencing = self._runs_here()
            position, batch = await self._in_place()
            keys = [reaction_documents.STATE_PREFIX + state_key for state_key in state_keys]
            await batch.load(keys)  # in one read
            found = {
                state_key: batch.read(key, reaction_pb.ProcessState)
                for state_key, key in zip(state_keys, keys, strict=True)
            }
            missing = [state_key for state_key, wrapped in found.items() if wrapped is None]
            if missing:
                raise _no_states(self.reaction.name, missing, asked=len(state_keys))
            for state_key, wrapped in found.items():
                batch.write(reaction_documents.STATE_PREFIX + state_key, None)
                assert wrapped is not None
                for entry in wrapped.deadlines:  # the process's deadlines go with it
                    batch.write(deadline_key(state_key, entry.name), None)
            await self._commit_in_place(batch, position, fencing)

    async def _replay_step(
        self, reason: str, seen: set[str], among: set[str], fencing: Fencing | None
    ) -> list[Replayed]:
        """Replay up to ``_REPLAY_STEP`` parked commands of ``among`` not in
        ``seen`` (noted there), and commit what came of them; [] when none
        is left."""
        self._replay_fired = self._replay_parked = 0
        position, batch = await self._in_place()
        index = await load_index(batch)
        await prune(batch, index)
        chosen: list[reaction_pb.ParkedCommand] = []
        for entry in sorted(index.commands, key=reaction_documents.parked_order):
            wanted = entry.command_id in among and entry.command_id not in seen
            parked = await load_parked_command(batch, entry.command_id) if wanted else None
            if parked is not None and (not reason or parked.reason == reason):
                chosen.append(parked)
                if len(chosen) == _REPLAY_STEP:
                    break
        done: list[Replayed] = []
        failure: ChronicleError | None = None
        for parked in chosen:
            seen.add(parked.command_id)
            # A parked deadline's firing may park commands (into ``index``)
            # and then fail: taken back, so that what is committed is only
            # what the replays before it did (its refused commands, parked
            # again when it is replayed again, are not in the index twice).
            savepoint = batch.savepoint(), len(index.commands)
            try:
                outcome = await self._send_again(parked, batch, index)
            except ChronicleError as error:
                batch.rollback(savepoint[0])
                del index.commands[savepoint[1] :]
                failure = error  # what was sent before it is committed first
                break
            done.append(outcome)
            if outcome.accepted:
                batch.write(PARKED_PREFIX + parked.command_id, None)
                kept = [entry for entry in index.commands if entry.command_id != parked.command_id]
                del index.commands[:]
                index.commands.extend(kept)
            else:
                write_parked(batch, parked)  # with its new refusal
        if done:
            await self._commit_parked(batch, index, position, fencing)
        if failure is not None:
            raise failure
        return done

    async def _went_back(self, position: int, head: int) -> int:
        """The checkpoint as the database holds it, when the log's end is
        below ``position``, where this runner is in memory: the log went back
        under it (restored from an older copy, failed over to a standby that
        lost commits), and the checkpoint, kept in the same database, with
        it. Waiting for the log to pass ``position`` again would hold back
        the events written meanwhile at the reused positions (a commit from
        ``position`` would then fail its compare-and-set: held back, not
        skipped). What it cached, counted and scheduled went back too.

        A checkpoint beyond the log's end too did not go back with it (a
        database that cannot have been restored whole): going on would wait
        for the log to pass it and skip what comes before, so it is this
        runner's failure (LOG_REWOUND, in its status, tried again as any)."""
        stored = await self._documents.projection_position(self.reaction.name)
        if stored > head:
            raise LogRewound(
                f"reaction {self.reaction.name}: its checkpoint {stored} is beyond the log's end {head}: the log"
                " went back without it (not restored from one copy of the database?); it would skip the events"
                " written up to its checkpoint. Re-sync it deliberately (docs/subscriptions.md)",
                metadata={"reaction": self.reaction.name, "position": str(stored), "log_head": str(head)},
            )
        log.warning(
            "reaction %s: the log went back under its position %d (its end is now %d): restored or failed over?"
            " It goes on from its checkpoint as the database holds it, %d",
            self.reaction.name,
            position,
            head,
            stored,
        )
        self._cache.clear()
        self._failures.forget()
        self._soonest.forget()
        self.status.position = stored
        return stored

    async def _in_place(self) -> tuple[int, ReactionBatch]:
        """The checkpoint and a batch of its own (not the runner's cache),
        for a change to the reaction's documents that does not move it."""
        position = await self._documents.projection_position(self.reaction.name)
        return position, ReactionBatch(self.reaction.name, self._documents, DocumentCache(), self._forgotten)

    async def _commit_in_place(self, batch: _Batch, position: int, fencing: Fencing | None) -> None:
        """Commit ``batch`` (from ``_in_place``) at ``position``: the
        checkpoint does not move; the runner reads its documents afresh."""
        try:
            await self._documents.commit_projection(
                self.reaction.name,
                expected_position=position,
                new_position=position,
                writes=batch.writes,
                fencing=fencing,
            )
            # A replayed deadline's function may have scheduled one: the
            # runner's soonest must never be later than the truth.
            self._soonest.written(batch.writes)
        finally:
            self._cache.clear()

    async def _commit_parked(
        self, batch: _Batch, index: reaction_pb.ParkedCommands, position: int, fencing: Fencing | None
    ) -> None:
        """Commit ``batch``'s changes to the parked commands (and ``index``);
        the checkpoint does not move."""
        batch.write(PARKED_KEY, index)
        await self._commit_in_place(batch, position, fencing)
        self.status.parked = len(index.commands)
        # Replayed deadlines that fired count as a firing's do: fired, and
        # the commands their firing parked (a command refused again is
        # already parked, and not counted again).
        self.status.deadlines_fired += self._replay_fired
        for _ in range(self._replay_fired):
            self._count(DEADLINE_FIRED)
        for _ in range(self._replay_parked):
            self._count("parked")
        self._replay_fired = self._replay_parked = 0

    def _runs_here(self) -> Fencing | None:
        """The lease's fencing token, if this replica runs the reaction
        (None without a lease); RunsElsewhere if another does."""
        fencing = self._lease.fencing() if self._lease is not None else None
        if self._lease is not None and fencing is None:
            runner = self._lease.holder()
            raise RunsElsewhere(
                f"reaction {self.reaction.name} runs on another replica ({runner or 'not known yet'}): ask it",
                metadata={"reaction": self.reaction.name, "runner": runner},
            )
        return fencing

    async def _settle(self, command_id: str, *, replay: bool) -> Replayed:
        async with self._lock:
            fencing = self._runs_here()
            while True:
                try:
                    return await self._settle_at(command_id, replay=replay, fencing=fencing)
                except SubjectsForgotten as forgotten:
                    self._forgotten.add(forgotten.subjects)  # the command goes: it is not found again

    async def _settle_at(self, command_id: str, *, replay: bool, fencing: Fencing | None) -> Replayed:
        # The checkpoint does not move: the commit only rewrites the parked
        # commands, from a cache of its own.
        self._replay_fired = self._replay_parked = 0
        position, batch = await self._in_place()
        index = await load_index(batch)
        await prune(batch, index)  # the entries of forgotten commands leave with this commit
        entry = await load_parked_command(batch, command_id)
        at = next((i for i, p in enumerate(index.commands) if p.command_id == command_id), None)
        if at is None or entry is None or self._forgotten.any_of(subjects_of(entry)):
            raise ResourceNotFound(
                f"reaction {self.reaction.name} has no parked command {command_id}",
                reason="PARKED_COMMAND_NOT_FOUND",
                metadata={"reaction": self.reaction.name, "command_id": command_id},
            )
        outcome = Replayed(command_id, accepted=True)
        if replay:
            outcome = await self._send_again(entry, batch, index)
        if outcome.accepted:
            del index.commands[at]
            batch.write(PARKED_PREFIX + command_id, None)
        else:
            write_parked(batch, entry)  # with its new refusal
        await self._commit_parked(batch, index, position, fencing)
        return outcome

    async def _causing_tenant(self, entry: reaction_pb.ParkedCommand) -> str:
        """The tenant of the event that caused a parked command, as its
        first sending had it (the entry keeps the event's id and position,
        not its aggregate): "" if the event is gone (deleted, archived)."""
        page = await self._log.read_log(entry.position - 1, LogFilter(), 1) if entry.position else None
        for event in page.events if page is not None else ():
            if event.event_id == entry.event_id:
                return tenant_of_id(event.aggregate_id)
        return ""

    async def _send_again(
        self, entry: reaction_pb.ParkedCommand, batch: _Batch, index: reaction_pb.ParkedCommands
    ) -> Replayed:
        """Replay ``entry`` in ``batch`` (the caller commits it, and
        ``index``, the parked commands' index it read)."""
        if entry.HasField("deadline"):
            return await self._fire_again(entry, batch, index)
        name = entry.command.type_url.rpartition("/")[2]
        spec = self._registry.command(name)
        if spec is None:
            raise ResourceNotFound(
                f"no handler is registered for command type {quoted(name)}", reason="UNKNOWN_COMMAND_TYPE"
            )
        message = spec.message_type.FromString(entry.command.value)
        command_id = command_id_for(f"{entry.command_id}/replay", entry.replays)
        request = CommandRequest(
            command_id=command_id,
            aggregate_id=entry.aggregate_id,
            spec=spec,
            message=message,
            user_id=entry.user_id,
            origin=self._origin,
            correlation_id=entry.correlation_id,
            causation_id=entry.event_id,
            metadata=dict(entry.command_metadata),
            principal=self._origin,
            timestamp_us=time.time_ns() // 1000,
            tenant=await self._causing_tenant(entry),
        )
        # Counted as the reaction's own commands are: accepted ("replayed"
        # when answered from its record: a replay whose outcome a crash
        # lost), or refused; still parked, it is not counted parked again.
        try:
            result = await self._submit(request)
        except ChronicleError as error:
            if not _refusal(error):
                raise
            self._refused_once()
            entry.replays += 1
            entry.reason, entry.message = error.reason, error.message
            entry.metadata.clear()
            entry.metadata.update(error.metadata)
            return Replayed(command_id, accepted=False, reason=error.reason, message=error.message)
        self._accepted(replayed=result.replayed)
        return Replayed(command_id, accepted=True)

    async def _fire_again(
        self, entry: reaction_pb.ParkedCommand, batch: _Batch, index: reaction_pb.ParkedCommands
    ) -> Replayed:
        """Replay a parked deadline: its function called again with its
        process's state as it is now, what it returns done as at a firing
        (its commands under the ids of that firing: one whose outcome was
        lost is answered from its record; those refused compensated or
        parked into ``index``), the state saved in ``batch``. The function
        failing again, or the process over (its state left empty or
        dropped: its deadlines went with it), leaves it parked with that
        reason."""
        state_key, scheduled = entry.deadline.state_key, entry.deadline.deadline
        state = await ProcessState.load_key(self.reaction, batch, state_key)
        error: ReactionFailed | None = None
        if not state.exists:
            error = ReactionFailed(
                f"reaction {self.reaction.name}: process {state_key!r} is over (its state was left empty or"
                f" dropped), and its deadlines with it: deadline {scheduled.name!r} is not fired; dismiss it",
                reason="DEADLINE_WITHOUT_PROCESS",
                metadata={"reaction": self.reaction.name, "deadline": scheduled.name, "state_key": state_key},
            )
        else:
            parked = ParkedList(batch, self._max_parked, index)
            try:
                await self._run_deadline(state_key, scheduled, state, parked)
            except _FunctionFailed as failed:
                error = failed.error
            finally:
                self._where_now = None
        if error is not None:
            entry.replays += 1
            entry.reason, entry.message = error.reason, error.message
            entry.metadata.clear()
            entry.metadata.update(error.metadata)
            return Replayed(entry.command_id, accepted=False, reason=error.reason, message=error.message)
        state.save(batch, scheduled.due_us)
        self._replay_fired += 1
        self._replay_parked += parked.added
        return Replayed(entry.command_id, accepted=True)

    def _read(self, position: int) -> Awaitable[LogPage]:
        return self._log.read_log(position, self._filter, self.reaction.batch_size, max_bytes=self._page_bytes)

    async def _react(self, batch: _Batch, parked: ParkedList, record: RecordedEvent, message: Message) -> None:
        registered = self.reaction.handlers.get(record.event_type)
        if registered is None:
            return  # a type read only because an upcaster turns it into one of ours
        envelope = envelope_of(record)
        state = await ProcessState.load(self.reaction, batch, envelope)
        self._handled.append(record.position)
        function = registered[1]
        where = _at_event(envelope)
        reacted = self._call(function, lambda: function(message, envelope, state.message), where)
        seed = f"{self.reaction.name}/{record.event_id}"
        await self._act(reacted, seed, envelope, state, parked, where, function, rounds=0, now_us=envelope.timestamp_us)
        state.save(batch, envelope.timestamp_us)

    async def _fire_due(self, position: int, fencing: Fencing | None, until_us: int) -> None:
        """Fire the reaction's deadlines due by ``until_us`` (a batch of them,
        soonest first), committed together without moving the checkpoint
        from ``position``. Reads nothing unless one is known to be due. A
        deadline that fails stops there: those fired before it are committed,
        and the failure raised (tried again after the reaction's pause)."""
        soonest = await self._soonest.get()
        if soonest is None or soonest > until_us:
            return
        name = self.reaction.name
        found = await self._documents.due_documents(name, until_us=until_us, limit=self.reaction.batch_size)
        batch = ReactionBatch(name, self._documents, self._cache, self._forgotten)
        parked = ParkedList(batch, self._max_parked)
        fired = 0
        failure: Exception | None = None
        for stored in found:
            due = reaction_pb.Deadline.FromString(stored.data)
            savepoint = batch.savepoint(), parked.savepoint()
            self._failing_command_aggregate = ""
            self._firing, self._firing_failed = due, ""
            try:
                fired += await self._fire(batch, parked, due)
            except SubjectsForgotten:
                raise  # the step runs again (``step``)
            except _FunctionFailed as failed:
                batch.rollback(savepoint[0])
                parked.rollback(savepoint[1])
                try:
                    if await self._deadline_given_up(batch, parked, due, failed):
                        self._failing_aggregate = ""
                        continue  # parked: the others go on
                except Exception as error:
                    failure = error  # TOO_MANY_PARKED
                    break
                failure = failed.error
                break
            except Exception as error:
                batch.rollback(savepoint[0])
                parked.rollback(savepoint[1])
                if self._firing_failed:
                    await self._command_failure_counted(batch, due, self._firing_failed)
                failure = error
                break
            finally:
                self._where_now = self._firing = None
                self._firing_failed = ""
        parked.write()
        if batch.writes:
            await self._documents.commit_projection(
                name, expected_position=position, new_position=position, writes=batch.writes, fencing=fencing
            )
            batch.committed()
            if parked.count is not None:
                self.status.parked = parked.count
            for _ in range(parked.added):
                self._count("parked")
            self.status.deadlines_fired += fired
            for _ in range(fired):
                self._count(DEADLINE_FIRED)
        await self._soonest.read()  # what is left, and when
        if failure is not None:
            raise failure

    async def _fire(self, batch: ReactionBatch, parked: ParkedList, due: reaction_pb.Deadline) -> int:
        """Fire ``due`` in ``batch``: 1 if it fired, 0 if it was no longer
        pending (its process over or dropped, it cancelled or rescheduled:
        the process's state says, and a stale document goes)."""
        state = await ProcessState.load_key(self.reaction, batch, due.state_key)
        entry = state.deadlines.get(due.name)
        if entry is None or not state.exists:
            batch.write(deadline_key(due.state_key, due.name), None)
            return 0
        if entry.due_us != due.due_us:
            # Rescheduled (by a deadline fired before it in this batch): its
            # document is written again as the state says, so that one the
            # state disagrees with is never found due again and again.
            document = reaction_pb.Deadline(state_key=due.state_key, name=due.name, due_us=entry.due_us)
            subjects = tuple(sorted(state.subjects))
            batch.write(deadline_key(due.state_key, due.name), document, subjects, due_us=entry.due_us)
            return 0
        state.cancel(due.name)  # fired: gone, unless its function schedules it again
        # A failure here may quote the state, derived from the scheduling
        # event's aggregate (among others): its text is withdrawn once that
        # aggregate is forgotten, as an event's failure's.
        self._failing_aggregate = entry.aggregate_id
        await self._run_deadline(due.state_key, entry, state, parked)
        state.save(batch, entry.due_us)
        self._failing_aggregate = ""
        return 1

    async def _run_deadline(
        self, state_key: str, entry: reaction_pb.ScheduledDeadline, state: ProcessState, parked: ParkedList
    ) -> None:
        """Call the ``@on_deadline`` function of ``entry`` (a deadline of
        process ``state_key``) with ``state``, then do what it returned.
        ``_FunctionFailed`` when the function is the one at fault (missing,
        raised, returned what it must not); a failure of its commands is
        raised as it is."""
        deadline = deadline_of(state_key, entry)
        envelope = deadline.envelope
        where = self._where_now = _at_deadline(state_key, entry.name, envelope)
        handler = self.reaction.deadline_handlers.get(entry.name)
        subjects = tuple(sorted(state.subjects))
        try:
            if handler is None:
                raise ReactionFailed(
                    f"reaction {self.reaction.name}: process {state_key!r} has a deadline {entry.name!r} due, and no"
                    f" @on_deadline({entry.name!r}) function is declared: restore it, or drop the process's state"
                    f" (chronicle reaction {self.reaction.name} --drop-state {shlex.quote(state_key)})",
                    reason="UNKNOWN_DEADLINE",
                    metadata={"reaction": self.reaction.name, "deadline": entry.name, "state_key": state_key},
                )
            reacted = self._call(handler, lambda: handler(deadline, state.message), where)
            commands = self._timers(reacted, envelope, state, where, handler, now_us=entry.due_us)
        except ReactionFailed as error:
            raise _FunctionFailed(error, subjects) from error
        seed = command_seed(self.reaction.name, state_key, entry.name, entry.due_us)
        await self._send(commands, seed, envelope, state, parked, rounds=0, now_us=entry.due_us)

    async def _deadline_given_up(
        self, batch: ReactionBatch, parked: ParkedList, due: reaction_pb.Deadline, failed: _FunctionFailed
    ) -> bool:
        """``due``'s function failed (the batch taken back to before it).
        In a reaction that parks failures, count it in the deadline's
        document (committed with the deadlines fired before it, so that a
        restart goes on from the count); at its ``max_attempts``-th, park
        the deadline instead (the process's state no longer lists it, its
        document goes) and say so: True."""
        if self.reaction.on_failure != "park":
            return False
        state = await ProcessState.load_key(self.reaction, batch, due.state_key)
        key = deadline_key(due.state_key, due.name)
        if due.failures + 1 < self.reaction.max_attempts:
            counted = reaction_pb.Deadline()
            counted.CopyFrom(due)  # its commands' counts kept
            counted.failures += 1
            batch.write(key, counted, tuple(sorted(state.subjects)), due_us=due.due_us)
            return False
        entry = state.deadlines[due.name]
        parked_id = parked_deadline_id(self.reaction.name, due.state_key, due.name, due.due_us)
        await parked.add_deadline(self.reaction.name, parked_id, due.state_key, entry, failed.subjects, failed.error)
        state.cancel(due.name)
        state.save(batch, due.due_us)  # its document goes with it
        log.warning(
            "reaction %s parked deadline %r of process %r (as %s) after %d failures of its function: %s (its message"
            " is in the parked command: chronicle reaction %s --parked)",
            self.reaction.name,
            due.name,
            due.state_key,
            parked_id,
            self.reaction.max_attempts,
            failed.error.reason,
            self.reaction.name,
        )
        return True

    async def _command_failure_counted(self, batch: ReactionBatch, due: reaction_pb.Deadline, command_id: str) -> None:
        """``due``'s command ``command_id`` failed for a plugin's bug, not
        for the ``max_attempts``-th time (the batch taken back to before the
        deadline): its count written in the deadline's document, committed
        with the deadlines fired before it, so that a restart or a lease that
        moves goes on from it (as ``reaction_failures`` keeps an event's)."""
        state = await ProcessState.load_key(self.reaction, batch, due.state_key)
        counted = reaction_pb.Deadline()
        counted.CopyFrom(due)
        counted.command_failures[command_id] += 1
        batch.write(deadline_key(due.state_key, due.name), counted, tuple(sorted(state.subjects)), due_us=due.due_us)

    def _poll_wait(self) -> float:
        """A poll's while, or less: until the soonest deadline is due."""
        return self._soonest.wait(self._clock(), self._poll_interval)

    async def reset(self, to: int) -> int:
        """Move the checkpoint to ``to`` (ResetReaction), forward or back,
        and return where it was: between two batches (under the lock, which
        every step holds), in a commit fenced by the lease, so no batch read
        from the old checkpoint commits after it. ``RunsElsewhere`` unless
        this replica runs the reaction. Process states, parked commands and
        deadlines stay as they are: handled again, an event meets the state
        its process has now, and its commands, under ids derived from it,
        are answered from their records where the store has them."""
        async with self._lock:
            fencing = self._runs_here()
            before = await self._documents.projection_position(self.reaction.name)
            await self._documents.commit_projection(
                self.reaction.name, expected_position=before, new_position=to, writes=(), fencing=fencing
            )
            # What was read at the old checkpoint is not what the next batch starts from.
            self._cache.clear()
            self._failures.forget()
            self._reset_to = self.status.position = to
        self.nudge()
        return before

    async def _act(
        self,
        acted: Actions,
        seed: str,
        envelope: ProjectedEvent,
        state: ProcessState,
        parked: ParkedList,
        where: _Where,
        function: Callable[..., Compensation],
        *,
        rounds: int,
        now_us: int,
        refusal: Refusal | None = None,
    ) -> list[Send]:
        """Do what one of its functions returned: its deadlines scheduled
        (due ``now_us`` plus their ``after``) and cancelled in ``state``,
        then its commands sent; those commands."""
        commands = self._timers(acted, envelope, state, where, function, now_us=now_us, refusal=refusal)
        await self._send(commands, seed, envelope, state, parked, rounds=rounds, now_us=now_us)
        return commands

    def _timers(
        self,
        acted: Actions,
        envelope: ProjectedEvent,
        state: ProcessState,
        where: _Where,
        function: Callable[..., Compensation],
        *,
        now_us: int,
        refusal: Refusal | None = None,
    ) -> list[Send]:
        """Schedule and cancel in ``state`` the deadlines of ``acted`` (what
        ``function`` returned); its commands, to send."""
        commands = [action for action in acted if isinstance(action, Send)]
        if len(commands) < len(acted):
            who = f"{_named(function, refusal)} (on {where})"
            # A deadline's functions schedule only later ones: with no delay
            # two deadlines could fire each other for ever.
            set_timers(self.reaction, acted, envelope, state, who, now_us, later=self._where_now is not None)
        return commands

    def _call(
        self,
        function: Callable[..., Compensation],
        call: Callable[[], Reacted],
        where: _Where,
        refusal: Refusal | None = None,
    ) -> Actions:
        """Run one of the reaction's functions (``function``, by ``call``,
        for ``refusal`` if given, on ``where``: an event or a deadline),
        timed; what it returned, as commands and deadlines."""
        started = time.perf_counter()
        try:
            reacted = call()
        except ChronicleError:
            raise
        except Exception as error:
            log.exception("reaction %s failed on %s (%s)", self.reaction.name, where, _named(function, refusal))
            raise ReactionFailed(
                f"reaction {self.reaction.name} failed on {where}: {type(error).__name__}: {error}",
                metadata={"reaction": self.reaction.name, **where.metadata},
            ) from error
        finally:
            # Run on the event loop: a slow one held up every command.
            self._slow.check(started, self._slow_function, where, function, refusal)
        try:
            return actions(reacted)
        except TypeError as error:
            # A bug of the plugin's, as a raise is: said so that it can be
            # fixed (the status shows it, and the runner logs it).
            raise ReactionFailed(
                f"reaction {self.reaction.name}: {_named(function, refusal)} (on {where}) {error}",
                metadata={"reaction": self.reaction.name, **where.detailed},
            ) from error

    async def _send(
        self,
        commands: list[Send],
        seed: str,
        envelope: ProjectedEvent,
        state: ProcessState,
        parked: ParkedList,
        *,
        rounds: int,
        now_us: int,
    ) -> None:
        hops = hops_of(envelope) + 1  # the chain's reaction hops, with this one
        for index, send in enumerate(commands):
            command_id = command_id_for(seed, index)
            state.sent_to(send.aggregate_id)  # the process is derived from it, and from the event
            if hops > self.reaction.max_hops:
                await self._loop_parked(send, command_id, envelope, parked, hops)
                continue
            try:
                try:
                    result = await self._submit(self._request(command_id, send, envelope, hops, now_us))
                except ChronicleError as error:
                    if _refusal(error):
                        await self._refused(
                            send, command_id, error, envelope, state, parked, rounds=rounds, hops=hops, now_us=now_us
                        )
                    elif await self._gives_up(command_id, error, envelope):
                        await self._failure_parked(send, command_id, error, envelope, parked, hops)
                    else:
                        raise
                    continue
            except Exception:
                # What fails the batch here may quote this aggregate (its
                # refusal, its handler's error; the innermost of a
                # compensation's commands named first).
                self._failing_command_aggregate = self._failing_command_aggregate or send.aggregate_id
                raise
            self._accepted(replayed=result.replayed)

    async def _loop_parked(
        self, send: Send, command_id: str, envelope: ProjectedEvent, parked: ParkedList, hops: int
    ) -> None:
        """``send`` would take its chain past the reaction's ``max_hops``:
        parked (REACTION_LOOP), not sent, nor handed to ``on_refused``."""
        limit = self.reaction.max_hops
        log.warning(
            "reaction %s did not send %s to %s: it would be hop %d of the reactions' chain of correlation id"
            " %r, past the reaction's max_hops (%d): a reaction that reacts to what its own commands cause, without"
            " end? Parked as REACTION_LOOP (command %s, caused by %s %s at position %d)",
            self.reaction.name,
            send.command.DESCRIPTOR.full_name,
            send.aggregate_id,
            hops,
            envelope.correlation_id,
            limit,
            command_id,
            envelope.event_type,
            envelope.event_id,
            envelope.position,
            extra={
                "reaction": self.reaction.name,
                "event_type": envelope.event_type,
                "event_id": envelope.event_id,
                "correlation_id": envelope.correlation_id,
                "hops": hops,
            },
        )
        refusal = Refusal(
            send,
            command_id,
            "REACTION_LOOP",
            f"not sent: it would be reaction hop {hops} of its chain (correlation id {envelope.correlation_id!r}),"
            f" more than reaction {self.reaction.name}'s max_hops ({limit})",
            {"hops": str(hops), "max_hops": str(limit), "correlation_id": envelope.correlation_id},
        )
        await parked.add(self.reaction.name, refusal, envelope, _metadata(send, envelope, hops))

    async def _gives_up(self, command_id: str, error: ChronicleError, envelope: ProjectedEvent) -> bool:
        """Whether ``command_id``, failed with ``error``, is to be parked
        now: a plugin's bug (``_plugin_failure``), in a reaction that parks
        those, at its ``max_attempts``-th failure (counted in the store,
        whichever server met them: ``reaction_failures``; each earlier one
        fails the batch, tried again after a pause)."""
        if self.reaction.on_failure != "park" or not _plugin_failure(error):
            return False
        if self._where_now is not None:
            return self._deadline_command_gives_up(command_id)
        return await self._failures.failed(command_id, envelope.position, self.reaction.max_attempts)

    def _deadline_command_gives_up(self, command_id: str) -> bool:
        """``_gives_up`` for a command of the deadline being fired: its
        failures are counted in the deadline's document
        (``Deadline.command_failures``, written by ``_fire_due`` once the
        batch is taken back: ``_command_failure_counted``); at the
        ``max_attempts``-th it is parked and the deadline fires. An
        operator's replay of a parked deadline counts none: a failure is the
        replay's answer, and the deadline stays parked."""
        due = self._firing
        if due is None:
            return False
        if due.command_failures.get(command_id, 0) + 1 >= self.reaction.max_attempts:
            return True
        self._firing_failed = command_id
        return False

    async def _failure_parked(
        self,
        send: Send,
        command_id: str,
        error: ChronicleError,
        envelope: ProjectedEvent,
        parked: ParkedList,
        hops: int,
    ) -> None:
        """``send`` failed for a plugin's bug ``max_attempts`` times: parked
        with that failure (not handed to ``on_refused``: it is no answer of
        the aggregate's to compensate), for an operator to replay once a
        fixed plugin is deployed. Counted refused, as every parked command."""
        self._refused_once()
        log.warning(
            "reaction %s parked command %s (%s for %s) after %d failures: %s (its message is in the parked command:"
            " chronicle reaction %s --parked)",
            self.reaction.name,
            command_id,
            send.command.DESCRIPTOR.full_name,
            send.aggregate_id,
            self.reaction.max_attempts,
            error.reason,
            self.reaction.name,
        )
        refusal = Refusal(send, command_id, error.reason, error.message, dict(error.metadata))
        await parked.add(self.reaction.name, refusal, envelope, _metadata(send, envelope, hops))

    def _accepted(self, *, replayed: bool) -> None:
        """A command of the reaction's (its own, or a parked one an operator
        replayed) accepted: in its status and its metric alike."""
        if replayed:
            self.status.replayed += 1
        else:
            self.status.accepted += 1
        self._count("replayed" if replayed else "accepted")

    def _refused_once(self) -> None:
        """A command of the reaction's refused: in its status and its metric."""
        self.status.refused += 1
        self._count("refused")

    async def _refused(
        self,
        send: Send,
        command_id: str,
        error: ChronicleError,
        envelope: ProjectedEvent,
        state: ProcessState,
        parked: ParkedList,
        *,
        rounds: int,
        hops: int,
        now_us: int,
    ) -> None:
        self._refused_once()
        refusal = Refusal(send, command_id, error.reason, error.message, dict(error.metadata))
        handler = self.reaction.refused_handler
        if handler is not None and rounds < MAX_ROUNDS:
            ignored = False

            def compensate() -> Reacted:
                nonlocal ignored
                returned = handler(refusal, envelope, state.message)
                if returned is IGNORE:
                    ignored = True
                    return None
                return returned

            where = self._where_now or _at_event(envelope)
            compensation = self._call(handler, compensate, where, refusal)
            if ignored:
                self._ignored(send, command_id, error)
                return
            sent = await self._act(
                compensation,
                command_id,
                envelope,
                state,
                parked,
                where,
                handler,
                rounds=rounds + 1,
                now_us=now_us,
                refusal=refusal,
            )
            if sent:
                return
        # The reason and ids only: the refusal's text may quote the
        # aggregate's data ("account 'x' is closed"), which the store seals
        # under the aggregate's key (security.md); a log line would keep it
        # in the clear, past a forget. The parked command holds it.
        log.warning(
            "reaction %s parked command %s (%s for %s): %s (its message is in the parked command: chronicle"
            " reaction %s --parked)",
            self.reaction.name,
            command_id,
            send.command.DESCRIPTOR.full_name,
            send.aggregate_id,
            error.reason,
            self.reaction.name,
        )
        await parked.add(self.reaction.name, refusal, envelope, _metadata(send, envelope, hops))

    def _ignored(self, send: Send, command_id: str, error: ChronicleError) -> None:
        """``on_refused`` said the refusal is expected (IGNORE): neither
        compensated nor parked, only counted (and said at DEBUG), so that
        an operator still sees how many refusals went that way."""
        self.status.ignored += 1
        self._count("ignored")
        log.debug(
            "reaction %s ignored the refusal of command %s (%s for %s), as its on_refused said: %s",
            self.reaction.name,
            command_id,
            send.command.DESCRIPTOR.full_name,
            send.aggregate_id,
            error.reason,
        )

    def _slow_function(
        self, where: _Where, function: Callable[..., Compensation], refusal: Refusal | None
    ) -> Described:
        """A slow call of one of its functions, as ``handler_alarm`` says it."""
        return self._slow_call(where.subject, where.position, _named(function, refusal))

    def _request(self, command_id: str, send: Send, envelope: ProjectedEvent, hops: int, now_us: int) -> CommandRequest:
        name = str(send.command.DESCRIPTOR.full_name)
        spec = self._registry.command(name)
        if spec is None:
            raise _NotSendable(f"no handler is registered for command type {name!r}", reason="UNKNOWN_COMMAND_TYPE")
        aggregate_id = send.aggregate_id
        if not aggregate_id or len(aggregate_id) > _MAX_AGGREGATE_ID or not aggregate_id.isprintable():
            raise _NotSendable(
                f"aggregate id {aggregate_id!r} must be 1 to {_MAX_AGGREGATE_ID} printable characters",
                reason="INVALID_AGGREGATE_ID",
            )
        return CommandRequest(
            command_id=command_id,
            aggregate_id=aggregate_id,
            spec=spec,
            message=send.command,
            user_id=envelope.user_id,
            origin=self._origin,
            correlation_id=envelope.correlation_id,
            causation_id=envelope.event_id,
            metadata=_metadata(send, envelope, hops),
            principal=self._origin,
            timestamp_us=now_us,  # the event's commit time, or the deadline's due time
            # It acts for the event's user, and so in the event's tenant.
            tenant=tenant_of_id(envelope.aggregate_id),
        )

    def _count(self, outcome: str) -> None:
        if self._outcomes is not None:
            self._outcomes(self.reaction.name, outcome)


class _Where:
    """What one of the reaction's functions was called on, as its errors
    and the slow-call alarm say it: an event (``_at_event``), or a
    process's deadline (``_at_deadline``). Said only when needed: one is
    made per event."""

    __slots__ = ("_envelope",)

    def __init__(self, envelope: ProjectedEvent) -> None:
        self._envelope = envelope

    @property
    def subject(self) -> str:  # the event type, or "deadline <name>"
        return self._envelope.event_type

    @property
    def position(self) -> int:  # the event's position, or the scheduling event's
        return self._envelope.position

    @property
    def metadata(self) -> Mapping[str, str]:
        return {"position": str(self._envelope.position)}

    @property
    def detailed(self) -> Mapping[str, str]:
        return {"event_type": self._envelope.event_type, "position": str(self._envelope.position)}

    def __str__(self) -> str:
        return f"{self._envelope.event_type} at position {self._envelope.position}"


_at_event = _Where


class _AtDeadline(_Where):
    __slots__ = ("_name", "_state_key")

    def __init__(self, state_key: str, name: str, envelope: ProjectedEvent) -> None:
        super().__init__(envelope)
        self._state_key = state_key
        self._name = name

    @property
    def subject(self) -> str:
        return f"deadline {self._name}"

    @property
    def metadata(self) -> Mapping[str, str]:
        return {"deadline": self._name, "state_key": self._state_key}

    @property
    def detailed(self) -> Mapping[str, str]:
        return self.metadata

    def __str__(self) -> str:
        return f"deadline {self._name!r} of process {self._state_key!r}"


_at_deadline = _AtDeadline


def _metadata(send: Send, envelope: ProjectedEvent, hops: int) -> Mapping[str, str]:
    """A command's metadata: the event's, with what the reaction added, and
    the chain's reaction hops (which the reaction cannot set); never the
    import's mark, which would hide its events from every reaction."""
    metadata = {**envelope.metadata, **send.metadata, HOPS_KEY: str(hops)}
    metadata.pop(IMPORTED_KEY, None)
    return metadata


def _named(function: Callable[..., Compensation], refusal: Refusal | None) -> str:
    """A reaction's function as its messages name it."""
    name = str(getattr(function, "__qualname__", None) or repr(function))
    if refusal is not None:
        name += f" on the refusal of {refusal.command.DESCRIPTOR.full_name}"
    return name


# The keys a refusal of DropProcessState names in its message, at most.
_MISSING_SHOWN = 10


def _no_states(reaction: str, missing: Sequence[str], *, asked: int) -> ResourceNotFound:
    """The refusal of a drop naming keys under which ``reaction`` keeps no
    state: the first few in the message, the first and the count in the
    metadata (a retry of a drop whose answer was lost meets it)."""
    shown = ", ".join(repr(key) for key in missing[:_MISSING_SHOWN])
    more = f" and {len(missing) - _MISSING_SHOWN} more" if len(missing) > _MISSING_SHOWN else ""
    return ResourceNotFound(
        f"reaction {reaction} keeps no state under {shown}{more}"
        + (f": none of the {asked} states named was dropped" if asked > 1 else ""),
        reason="PROCESS_STATE_NOT_FOUND",
        metadata={"reaction": reaction, "state_key": missing[0], "missing": str(len(missing))},
    )


class _FunctionFailed(Exception):
    """A deadline's ``@on_deadline`` function failed (``error``): missing,
    raised, or returned what it must not; ``subjects``, its process's
    (those a parked deadline names)."""

    def __init__(self, error: ReactionFailed, subjects: tuple[str, ...]) -> None:
        super().__init__(str(error))
        self.error = error
        self.subjects = subjects


class _NotSendable(ChronicleError):
    """A command no aggregate can take (unknown type, bad aggregate id): a
    refusal for good, handed back to the reaction like any other."""

    recorded = True


class Reactions(Runners[ReactionRunner]):
    """Every loaded plugin's reactions."""
