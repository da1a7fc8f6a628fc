"""One aggregate's worker: its waiting commands, a cached state, and the
work in progress.

Commands for one aggregate run one at a time in arrival order; the worker
keeps the aggregate it last saw, so a command on a warm aggregate reads
nothing from the store. It survives handler errors (dropping the cache,
which a failing handler may have left half-changed).

Two ways to run, one outcome. On a warm aggregate the commands are decided
at once, in the task of whoever submitted the first of them (handlers are
plain functions), and their append is a future whose callback completes
them and starts what queued meanwhile: no task, no await, a few callbacks
per command. Everything else (an aggregate to load, a lookup, claims, a
conflict to retry, a batch or a dry run) runs in a task of the worker's own,
through the executor's async path, which handles every case exactly; the
inline path is only its first attempt, made early.

A retry of a command this worker committed (or recorded refused) is
answered from the store's record of it without running its handler: the
worker keeps the last few command ids it settled (``RECENT_COMMANDS``), and
a series never holds one command id twice, so a retry queued behind its
original waits for it and then finds it there. A retry the worker does not
remember (evicted, another replica, a restart) takes the ordinary path: its
handler runs and the append finds the id recorded (executor.py).

An idle worker is just its cached state (no task, no timer, no queue), which the
router drops once it has been idle for the idle timeout, so memory follows
the live set and the event loop carries nothing per idle aggregate.
"""

from __future__ import annotations

import asyncio
import logging
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from service.errors import (
    ChronicleError,
    CommandAlreadyRecorded,
    ConcurrencyConflict,
    Overloaded,
    recorded_with_command,
)
from service.processing.commands import BatchResult, CommandBatch, CommandResult
from service.processing.executor import CommandExecutor, Failed, InlineSeries
from service.processing.log_context import command_log_context
from service.processing.state import Aggregate

log = logging.getLogger(__name__)


# Called with a job's reply and its outcome, instead of the worker completing
# the reply itself: the pipeline runs its hooks there, with no extra future
# and no extra turn of the event loop per command.
Finish = Callable[["asyncio.Future[BatchResult]", "BatchResult | BaseException"], None]


@dataclass(slots=True)
class Job:
    batch: CommandBatch
    reply: asyncio.Future[BatchResult]
    finish: Finish | None = None


# How many command ids a worker remembers having settled (committed, or
# recorded refused), newest last. A retry comes a timeout after its
# original, and a hot aggregate settles up to MAX_SERIES commands at once,
# so older ones fall out; the ids cost memory per cached aggregate (see
# ``_recent``; docs/deployment.md), so few are kept.
RECENT_COMMANDS = 8

# Independent commands that queued up for one aggregate run as one series
# (decided in order, appended together): up to this many at a time.
MAX_SERIES = 64


class AggregateWorker:
    __slots__ = (
        "_cached",
        "_executor",
        "_jobs",
        "_loop",
        "_on_idle",
        "_queue_depth",
        "_recent",
        "_room",
        "_saving",
        "_snapshots",
        "aggregate_id",
        "busy",
        "idle_since",
        "task",
    )

    def __init__(
        self,
        aggregate_id: str,
        executor: CommandExecutor,
        *,
        queue_depth: int,
        loop: asyncio.AbstractEventLoop,
        snapshots: set[asyncio.Task[None]],
        on_idle: Callable[[], None] = lambda: None,
    ) -> None:
        self.aggregate_id = aggregate_id
        self._executor = executor
        # Made when a command arrives and dropped when the worker goes idle:
        # an empty deque is 760 bytes, more than a third of what a cached
        # aggregate costs, and most cached aggregates are idle.
        self._jobs: deque[Job] | None = None
        self._queue_depth = queue_depth
        # Command streams waiting for room in a full queue (``room``).
        self._room: list[asyncio.Future[None]] | None = None
        self._loop = loop
        self._cached: Aggregate | None = None
        self._snapshots = snapshots  # the router's: snapshot saves in flight, kept from the collector
        self._saving: asyncio.Task[None] | None = None  # this aggregate's latest snapshot save
        self._on_idle = on_idle
        # Hashes of the command ids this worker settled last (``RECENT_COMMANDS``),
        # oldest first; None until the first. Most cached aggregates are idle
        # and pay for this: an array of 64-bit hashes is 88 bytes for one id and
        # 152 for eight, where a tuple of the hashes is 84 and 408 and a set of
        # the id strings 300 and 1,400; it is mutated in place (no allocation
        # per command) and searched in C. A false match costs only a store read:
        # the replay finds no record and the command runs.
        self._recent: array[int] | None = None
        # True from taking a command until its outcome is known (inline or in ``task``).
        self.busy = False
        self.task: asyncio.Task[None] | None = None
        self.idle_since = 0.0

    @property
    def depth(self) -> int:
        """Commands waiting (not counting those running)."""
        jobs = self._jobs  # read once: the metrics thread asks while the loop changes it
        return len(jobs) if jobs is not None else 0

    @property
    def evictable(self) -> bool:
        """Idle, and no snapshot save of its own still running: a worker made
        for the aggregate after this one left would save without waiting for
        that save, and two saves at once can keep one snapshot too many."""
        return not self.busy and self._saving is None

    def drop_cache(self) -> None:
        """Forget the cached state: its stored events were replaced (an import)."""
        self._cached = None
        self._recent = None

    def _remember_settled(self, batch: CommandBatch) -> None:
        """Remember that ``batch``'s command ids are recorded in the store."""
        recent = self._recent
        if recent is None:
            # Made at its size: grown by appends, an array of one is 32 bytes more.
            self._recent = array("q", [hash(request.command_id) for request in batch.commands][-RECENT_COMMANDS:])
            return
        for request in batch.commands:
            recent.append(hash(request.command_id))
        if len(recent) > RECENT_COMMANDS:
            del recent[: len(recent) - RECENT_COMMANDS]

    def room(self) -> asyncio.Future[None] | None:
        """None while the queue has room for one more command; else a future
        done once it has (a command stream waits on it instead of being
        refused AGGREGATE_QUEUE_FULL, which would let its later commands
        for this aggregate run before the refused one)."""
        jobs = self._jobs
        if jobs is None or len(jobs) < self._queue_depth:
            return None
        waiter = self._loop.create_future()
        if self._room is None:
            self._room = []
        self._room.append(waiter)
        return waiter

    def _roomy(self) -> None:
        """Wake the streams waiting for room, now that there is some."""
        waiting, self._room = self._room, None
        for waiter in waiting or ():
            if not waiter.done():
                waiter.set_result(None)

    def enqueue(self, job: Job) -> None:
        jobs = self._jobs
        if jobs is None:
            jobs = self._jobs = deque()
        if len(jobs) >= self._queue_depth:
            raise Overloaded(
                f"aggregate {self.aggregate_id!r} has {self._queue_depth} commands waiting",
                reason="AGGREGATE_QUEUE_FULL",
                metadata={"aggregate_id": self.aggregate_id, "queue_depth": str(self._queue_depth)},
            )
        jobs.append(job)
        if not self.busy:
            self._next()

    # -- choosing and starting work ----------------------------------------------

    def _take(self) -> tuple[list[Job], bool]:
        """The next job alone (a batch, a dry run, a retry of a command this
        worker settled: True), or a series of the single commands queued
        next; none whose caller already gave up."""
        queued = self._jobs
        if queued is None:
            return [], False
        while queued and queued[0].reply.done():
            queued.popleft()
        if not queued:
            self._jobs = None  # idle: see __init__
            if self._room is not None:
                self._roomy()
            return [], False
        first = queued.popleft()
        series = [first]
        # Whether it retries a command this worker settled (inline: paid per command).
        recent = self._recent
        retry = recent is not None and hash(first.batch.commands[0].command_id) in recent and not first.batch.dry_run
        if not retry and not _alone(first):
            ids: set[str] | None = None  # the series' command ids, made only for a second command
            while queued and len(series) < MAX_SERIES and not _alone(queued[0]):
                job = queued[0]
                if job.reply.done():
                    queued.popleft()
                    continue
                command_id = job.batch.commands[0].command_id
                if ids is None:
                    ids = {first.batch.commands[0].command_id}
                if command_id in ids or (recent is not None and hash(command_id) in recent):
                    # A retry of a command in the series (or settled before it)
                    # waits for it, to be answered from its record.
                    break
                ids.add(command_id)
                series.append(queued.popleft())
        if self._room is not None:
            self._roomy()
        return series, retry

    def _next(self) -> None:
        """Start the next work: inline when the aggregate is warm, else in a task."""
        while True:
            jobs, retry = self._take()
            if not jobs:
                self.busy = False
                self.idle_since = self._loop.time()
                self._on_idle()
                return
            self.busy = True
            if retry:
                self.task = self._loop.create_task(self._replay(jobs[0]), name=f"aggregate:{self.aggregate_id}")
                return
            if self._cached is not None and not _alone(jobs[0]) and self._start_inline(jobs):
                return
            if self.busy:  # not completed inline (a lone command that failed is)
                self.task = self._loop.create_task(self._run(jobs), name=f"aggregate:{self.aggregate_id}")
                return

    def _start_inline(self, jobs: list[Job]) -> bool:
        """Decide ``jobs`` now and send their append; True if the work is under
        way or done (a lone command that failed), False for the task path."""
        assert self._cached is not None
        requests = [job.batch.commands[0] for job in jobs]
        first = requests[0]
        token = command_log_context.set(
            {
                "command_id": first.command_id,
                "correlation_id": first.correlation_id or first.command_id,
                "aggregate_id": self.aggregate_id,
            }
        )
        try:
            started = self._executor.start_series(requests, self._cached)
        except Exception:
            log.exception("deciding %d commands on %s failed", len(jobs), self.aggregate_id)
            started = None
        finally:
            command_log_context.reset(token)
        if started is None:
            return False
        if isinstance(started, Failed):
            if not started.error.keeps_cache:
                self._cached = None
            # The command may have been committed where this worker did not
            # see it (another replica): its record answers, not this error.
            self.task = self._loop.create_task(
                self._fail_unless_recorded(jobs[0], started.error), name=f"aggregate:{self.aggregate_id}"
            )
            return True
        started.appended.add_done_callback(partial(self._appended, jobs, started))
        return True

    def _appended(self, jobs: list[Job], series: InlineSeries, appended: asyncio.Future[object]) -> None:
        error = appended.exception() if not appended.cancelled() else asyncio.CancelledError()
        if isinstance(error, ConcurrencyConflict | CommandAlreadyRecorded):
            # Another writer moved the aggregate, or a command id was seen
            # before: the async path sorts each command out exactly.
            self._cached = None
            self.task = self._loop.create_task(self._run(jobs), name=f"aggregate:{self.aggregate_id}")
            return
        if error is not None:
            # The store failed (unreachable, say): what was committed is unknown.
            self._cached = None
            if not isinstance(error, ChronicleError):
                log.error("appending %d commands on %s failed: %r", len(jobs), self.aggregate_id, error)
            for job in jobs:
                _fail(job, error)
        else:
            self._cached = series.end
            for job, outcome in zip(jobs, self._executor.finish_series(series), strict=True):
                self._remember_settled(job.batch)  # each committed, or recorded refused, in the append
                _complete(job, outcome)
            if series.end.version > series.start.version:
                self._snapshot_if_due(series.start.version, series.end)
        self._next()

    def _snapshot_if_due(self, before: int, aggregate: Aggregate) -> None:
        if self._executor.snapshot_due(before, aggregate):
            saving = self._loop.create_task(self._save_after(self._saving, aggregate))
            self._saving = saving
            self._snapshots.add(saving)
            saving.add_done_callback(self._snapshots.discard)
            saving.add_done_callback(self._saved)

    def _saved(self, saving: asyncio.Task[None]) -> None:
        """A finished save is not kept: an idle worker holds its state only."""
        if self._saving is saving:
            self._saving = None

    async def _save_after(self, previous: asyncio.Task[None] | None, aggregate: Aggregate) -> None:
        """Save after the aggregate's previous snapshot, so that saves run one
        at a time in version order: two at once would each prune the older
        snapshots without seeing the other's, and leave one too many."""
        if previous is not None and not previous.done():
            await asyncio.wait((previous,))  # its failure is its own (save_snapshot logs it)
        await self._executor.save_snapshot(aggregate)

    # -- the async path -------------------------------------------------------------

    async def _run(self, jobs: list[Job]) -> None:
        try:
            if len(jobs) == 1:
                await self._process(jobs[0])
            else:
                await self._process_series(jobs)
        finally:
            self.task = None
            self._next()

    async def _replay(self, job: Job) -> None:
        """Answer a retry of a command this worker settled from its record,
        without running its handler; if the record is gone (pruned, the
        aggregate's events replaced), run it as any command."""
        try:
            result = await self._executor.replay_recorded(job.batch)
        except Exception as error:
            if not isinstance(error, ChronicleError):
                log.exception("replaying command %s on %s failed", job.batch.commands[0].command_id, self.aggregate_id)
            _fail(job, error)
        else:
            if result is not None:
                _settle(job, result)
            else:
                await self._process(job)
        finally:
            self.task = None
            self._next()

    async def _fail_unless_recorded(self, job: Job, error: ChronicleError) -> None:
        """Answer ``error`` (a failure that is not recorded, met inline), or
        the command's record if it has one: a retry of a command committed
        where this worker did not see it may fail on the state after it. A
        read, paid only by such failures. If the read fails, its error is
        the answer: what was committed is unknown, and the client retries."""
        try:
            result = await self._executor.replay_recorded(job.batch)
        except Exception as replay_error:
            _fail(job, replay_error if isinstance(replay_error, ChronicleError) else error)
        else:
            if result is not None:
                self._remember_settled(job.batch)
            _settle(job, error if result is None else result)
        finally:
            self.task = None
            self._next()

    async def _process(self, job: Job) -> None:
        # Not cached: counted from the snapshot the load started from (0 if
        # none), so that the first append after a load saves a snapshot
        # unless a recent one exists (see service/processing/snapshots.py).
        before = self._cached.version if self._cached is not None else None
        first = job.batch.commands[0]
        token = command_log_context.set(
            {
                "command_id": first.command_id,
                "correlation_id": first.correlation_id or first.command_id,
                "aggregate_id": self.aggregate_id,
            }
        )
        try:
            result, self._cached = await self._executor.execute_batch(job.batch, self._cached)
        except Exception as error:
            if not (isinstance(error, ChronicleError) and error.keeps_cache):
                # A failing handler may have changed the state it was given; a
                # lost connection leaves us unsure what was committed.
                self._cached = None
            if not isinstance(error, ChronicleError):
                log.exception("command %s on %s failed", first.command_id, self.aggregate_id)
            elif recorded_with_command(error) and not job.batch.dry_run:
                self._remember_settled(job.batch)
            _fail(job, error)
            return
        finally:
            command_log_context.reset(token)
        if not result.dry_run:
            self._remember_settled(job.batch)
        _settle(job, result)
        if result.appended and self._cached is not None:
            self._snapshot_if_due(self._cached.snapshot_version if before is None else before, self._cached)

    async def _process_series(self, jobs: list[Job]) -> None:
        before = self._cached.version if self._cached is not None else None
        requests = [job.batch.commands[0] for job in jobs]
        try:
            outcomes, self._cached = await self._executor.execute_series(requests, self._cached)
        except Exception as error:
            # The series answers its commands' own refusals itself; what gets
            # here failed them all: the store (unavailable, a lock timeout),
            # which the callers hear as any command's, or a bug.
            self._cached = None
            if not isinstance(error, ChronicleError):
                log.exception("a series of %d commands on %s failed", len(jobs), self.aggregate_id)
            for job in jobs:
                _fail(job, error)
            return
        for job, outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, ChronicleError):
                log.error("command %s on %s failed: %r", job.batch.commands[0].command_id, self.aggregate_id, outcome)
            if not isinstance(outcome, BaseException) or recorded_with_command(outcome):
                self._remember_settled(job.batch)
            _complete(job, outcome)
        if self._cached is not None:
            start = self._cached.snapshot_version if before is None else before
            if self._cached.version > start:
                self._snapshot_if_due(start, self._cached)


def _alone(job: Job) -> bool:
    """Jobs that run on their own: batches (all or none; a SubmitBatch of
    one too, whose refusal names its command) and dry runs."""
    batch = job.batch
    return len(batch.commands) > 1 or batch.dry_run or batch.numbered


def _complete(job: Job, outcome: CommandResult | BaseException) -> None:
    if isinstance(outcome, BaseException):
        _settle(job, outcome)
    else:
        _settle(job, BatchResult((outcome,), outcome.version, replayed=outcome.replayed))


def _fail(job: Job, error: BaseException) -> None:
    _settle(job, error)


def _settle(job: Job, outcome: BatchResult | BaseException) -> None:
    """The job's outcome to its reply, through its ``finish`` if it has one."""
    if job.reply.done():
        return  # the caller gave up; the outcome stands all the same
    if job.finish is not None:
        try:
            job.finish(job.reply, outcome)
        except Exception as error:  # a bug in the finisher: the caller must still hear
            log.exception("finishing command %s failed", job.batch.commands[0].command_id)
            if not job.reply.done():
                job.reply.set_exception(error)
    elif isinstance(outcome, BaseException):
        job.reply.set_exception(outcome)
    else:
        job.reply.set_result(outcome)
