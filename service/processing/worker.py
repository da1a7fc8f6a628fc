"""One aggregate's worker: its waiting commands, a cached state, and a task
that runs while there is work.

Commands for one aggregate run one at a time in arrival order; the worker
keeps the aggregate it last saw, so a command on a warm aggregate reads
nothing from the store. It survives handler errors (dropping the cache, which
a failing handler may have left half-changed).

A worker has a task only while it has commands: the first command starts it,
it drains the queue and ends. An idle worker is just its cached state (no
task, no timer), which the router drops once it has been idle for the idle
timeout, so memory follows the live set and the event loop carries nothing
per idle aggregate.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass

from service.errors import ChronicleError, Overloaded
from service.observability.logs import logging_command
from service.processing.commands import BatchResult, CommandBatch
from service.processing.executor import CommandExecutor
from service.processing.state import Aggregate

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Job:
    batch: CommandBatch
    reply: asyncio.Future[BatchResult]


# Independent commands that queued up for one aggregate run as one series
# (decided in order, appended together): up to this many at a time.
MAX_SERIES = 64


class AggregateWorker:
    __slots__ = ("_cached", "_executor", "_jobs", "_queue_depth", "aggregate_id", "idle_since", "task")

    def __init__(self, aggregate_id: str, executor: CommandExecutor, *, queue_depth: int) -> None:
        self.aggregate_id = aggregate_id
        self._executor = executor
        self._jobs: deque[Job] = deque()
        self._queue_depth = queue_depth
        self._cached: Aggregate | None = None
        self.task: asyncio.Task[None] | None = None
        self.idle_since = 0.0

    @property
    def depth(self) -> int:
        """Commands waiting (not counting the one running)."""
        return len(self._jobs)

    @property
    def busy(self) -> bool:
        return self.task is not None

    def enqueue(self, job: Job) -> None:
        if len(self._jobs) >= self._queue_depth:
            raise Overloaded(
                f"aggregate {self.aggregate_id!r} has {self._queue_depth} commands waiting",
                reason="AGGREGATE_QUEUE_FULL",
                metadata={"aggregate_id": self.aggregate_id, "queue_depth": str(self._queue_depth)},
            )
        self._jobs.append(job)
        if self.task is None:
            self.task = asyncio.create_task(self._drain(), name=f"aggregate:{self.aggregate_id}")

    async def _drain(self) -> None:
        try:
            while self._jobs:
                job = self._jobs.popleft()
                if _alone(job) or not self._jobs or _alone(self._jobs[0]):
                    await self._process(job)
                    continue
                series = [job]
                while self._jobs and len(series) < MAX_SERIES and not _alone(self._jobs[0]):
                    series.append(self._jobs.popleft())
                await self._process_series([j for j in series if not j.reply.done()])
        finally:
            self.task = None
            self.idle_since = asyncio.get_running_loop().time()

    async def _process(self, job: Job) -> None:
        if job.reply.done():  # the caller gave up before we started: do nothing
            return
        before = self._cached.version if self._cached is not None else 0
        try:
            first = job.batch.commands[0]
            with logging_command(
                command_id=first.command_id, correlation_id=first.correlation_id, aggregate_id=self.aggregate_id
            ):
                result, self._cached = await self._executor.execute_batch(job.batch, self._cached)
        except Exception as error:
            if not (isinstance(error, ChronicleError) and error.keeps_cache):
                # A failing handler may have changed the state it was given; a
                # lost connection leaves us unsure what was committed.
                self._cached = None
            if not isinstance(error, ChronicleError):
                log.exception("command %s on %s failed", job.batch.commands[0].command_id, self.aggregate_id)
            if not job.reply.done():
                job.reply.set_exception(error)
            return
        if not job.reply.done():
            job.reply.set_result(result)
        if result.appended and self._cached is not None:
            await self._executor.after_commit(before, self._cached)

    async def _process_series(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        before = self._cached.version if self._cached is not None else 0
        requests = [job.batch.commands[0] for job in jobs]
        try:
            with logging_command(
                command_id=requests[0].command_id,
                correlation_id=requests[0].correlation_id,
                aggregate_id=self.aggregate_id,
            ):
                outcomes, self._cached = await self._executor.execute_series(requests, self._cached)
        except Exception as error:  # only a bug gets here: the series handles command errors itself
            self._cached = None
            log.exception("a series of %d commands on %s failed", len(jobs), self.aggregate_id)
            for job in jobs:
                if not job.reply.done():
                    job.reply.set_exception(error)
            return
        appended = False
        for job, outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, ChronicleError):
                    log.error(
                        "command %s on %s failed: %r", job.batch.commands[0].command_id, self.aggregate_id, outcome
                    )
                if not job.reply.done():
                    job.reply.set_exception(outcome)
                continue
            appended = appended or bool(outcome.events)
            if not job.reply.done():
                job.reply.set_result(BatchResult((outcome,), outcome.version, replayed=outcome.replayed))
        if appended and self._cached is not None:
            await self._executor.after_commit(before, self._cached)


def _alone(job: Job) -> bool:
    """Jobs that run on their own: batches (all or none) and dry runs."""
    return len(job.batch.commands) > 1 or job.batch.dry_run or job.reply.done()
