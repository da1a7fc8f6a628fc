"""Executing a batch of commands (often a batch of one) against one
aggregate: decide, append, retry.

The executor is stateless between calls; the worker that calls it owns the
cached aggregate and passes it in. Optimistic throughout: the handlers run on
the cached state, the store's version check decides whether that state was
the latest, and a conflict means reload and run again, within a budget.

Idempotency costs no read on the happy path: the command records are
inserted in the append's transaction (one per command of a batch), and only
when the store reports an id as already recorded is the original result read
back. Uniqueness claims ride in the same transaction; a lost claim is a
refusal like any other, recorded so that a retry gets the same answer.

A dry run decides exactly as a real run would and writes nothing: it reads
the last event to be sure the state is current (and not forgotten), checks the claims against their
holders (a read: a real run may still lose a race) and answers a recorded
command id with its original result.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence

from google.protobuf.message import Message

from service.errors import (
    AggregateForgotten,
    AggregateTypeMismatch,
    ChronicleError,
    CommandAlreadyRecorded,
    ConcurrencyConflict,
    EventNotReadable,
    NotUnique,
    StoreUnavailable,
    record_kind,
)
from service.plugins.api import EventSpec
from service.plugins.context import Clock, LookupNeeded
from service.plugins.registry import Registry
from service.processing.commands import BatchResult, CommandBatch, CommandRequest, CommandResult
from service.processing.deciding import Decided, Decider, Decision
from service.processing.ids import new_event_id
from service.processing.replay import Replayer
from service.processing.snapshots import SnapshotPolicy
from service.processing.state import Aggregate, AggregateLoader
from service.processing.watchdog import command_handler_alarm
from service.store.base import AggregateQuery, Store
from service.store.records import DEFAULT_MAX_EVENT_BYTES, CommandRecord, NewEvent, RecordedEvent, Rejection, Snapshot
from service.values import value

log = logging.getLogger(__name__)


@value(frozen=True, slots=True)
class InlineSeries:
    """Commands decided in their caller's task, their append in flight.
    ``outcomes``: what each decided (or its recorded refusal); ``end``: the
    aggregate after them all, to cache once ``appended`` succeeded."""

    requests: tuple[CommandRequest, ...]
    outcomes: tuple[Decided | ChronicleError, ...]
    start: Aggregate
    end: Aggregate
    appended: asyncio.Future[list[RecordedEvent]]


@value(frozen=True, slots=True)
class Failed:
    """A lone command that failed in a way no retry in the async path changes."""

    error: ChronicleError


Started = InlineSeries | Failed | None


def conflict_backoff(attempt: int) -> float:
    """Seconds to wait before attempt ``attempt`` after a conflict: a few
    milliseconds, doubling, jittered. A replica whose cache is warm wins every
    race against one that must reload first; a pause lets a burst on the
    winning side pass instead of losing the same race again at once."""
    return random.uniform(0, min(0.05, 0.002 * 2 ** (attempt - 1)))


def _record(
    request: CommandRequest, version: int, events: int, now_us: int, rejection: Rejection | None = None
) -> CommandRecord:
    """What ``request``'s command id produced: ``events`` events after ``version``
    (none: a command that changed nothing, or was refused with ``rejection``)."""
    return CommandRecord(
        request.command_id,
        request.aggregate_id,
        request.spec.name,
        request.fingerprint,
        version + 1,
        version + events,
        rejection,
        request.principal,
        request.user_id,
        request.origin,
        now_us,
        request.timestamp_us,
    )


def _new_events(
    aggregate_type: str, request: CommandRequest, events: Sequence[tuple[EventSpec, Message]], now_us: int
) -> list[NewEvent]:
    correlation_id = request.correlation_id or request.command_id
    causation_id = request.causation_id or request.command_id
    return [
        NewEvent(
            new_event_id(),
            aggregate_type,
            spec.name,
            spec.schema_version,
            message.SerializeToString(),
            now_us,
            request.command_id,
            request.user_id,
            request.origin,
            correlation_id,
            causation_id,
            request.metadata,
        )
        for spec, message in events
    ]


def _rejection(error: ChronicleError) -> Rejection:
    violations = getattr(error, "violations", ())
    return Rejection(
        record_kind(error),
        error.reason,
        error.message,
        error.metadata,
        tuple((v.field, v.description) for v in violations),
    )


def _name_the_claimant(error: NotUnique, decision: Decision) -> None:
    """Say which command of a batch took the value the store refused."""
    for index, decided in reversed(list(enumerate(decision.commands))):
        if any(c.scope == error.scope and c.value == error.value and not c.release for c in decided.claims):
            error.metadata.update(batch_index=str(index), command_id=decided.request.command_id)
            return


class CommandExecutor:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        *,
        max_attempts: int = 5,
        snapshots: SnapshotPolicy | None = None,
        slow_handler_seconds: float = 0.1,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        max_result_bytes: int = 2 * DEFAULT_MAX_EVENT_BYTES,
        clock: Clock = time.time,
    ) -> None:
        self._events = store.events
        self._snapshot_store = store.snapshots
        self._claims = store.claims
        self._registry = registry
        self._loader = AggregateLoader(store, registry)
        self._max_attempts = max_attempts
        self._snapshots = snapshots or SnapshotPolicy()
        self._decider = Decider(
            store.events,
            registry,
            slow=command_handler_alarm(slow_handler_seconds),
            max_event_bytes=max_event_bytes,
            max_result_bytes=max_result_bytes,
            clock=clock,
        )
        self._replayer = Replayer(store.events, self._loader.reader)

    @property
    def replayer(self) -> Replayer:
        return self._replayer

    @property
    def loader(self) -> AggregateLoader:
        return self._loader

    async def execute(
        self, request: CommandRequest, cached: Aggregate | None
    ) -> tuple[CommandResult, Aggregate | None]:
        """Run one command: a batch of one."""
        result, aggregate = await self.execute_batch(CommandBatch((request,)), cached)
        return result.results[0], aggregate

    async def execute_batch(
        self, batch: CommandBatch, cached: Aggregate | None
    ) -> tuple[BatchResult, Aggregate | None]:
        """Run ``batch``; return its result and the aggregate to cache next
        (None: nothing trustworthy to cache)."""
        aggregate_type = batch.commands[0].spec.aggregate
        aggregate = cached if cached is not None and cached.type is aggregate_type else None
        if batch.dry_run:
            return await self._dry_run(batch, aggregate)
        conflict: ConcurrencyConflict | None = None
        for attempt in range(1, self._max_attempts + 1):
            if conflict is not None:
                await asyncio.sleep(conflict_backoff(attempt))
            if aggregate is None:
                try:
                    aggregate = await self._loader.load(batch.aggregate_id, aggregate_type)
                except EventNotReadable as unreadable:
                    # A newer plugin version wrote events this one cannot
                    # read: a retry of a command it ran is still answered.
                    return await self._replayed_or_raise(batch, unreadable), None
            decision: Decision | None = None
            try:
                decision = await self._decider.decide(batch.commands, aggregate, numbered=batch.numbered)
                return await self._append(batch, aggregate, decision)
            except ConcurrencyConflict as stale:
                log.debug("conflict on %s (attempt %d)", batch.aggregate_id, attempt)
                conflict, aggregate = stale, None
            except CommandAlreadyRecorded:
                # The batch ran before (maybe on another replica, maybe
                # before a restart); our cached state may be behind.
                return await self._replayer.replay(batch.commands), None
            except ChronicleError as error:
                if not error.recorded:
                    if decision is not None:
                        raise  # the append failed: what it committed is unknown, the client retries
                    # The decision failed. A retry of a committed command meets
                    # the state after it, where its handler may fail (a plugin's
                    # bug, say): the caller gets the committed result instead.
                    replayed = await self.replay_recorded(batch)
                    if replayed is None:
                        raise
                    return replayed, aggregate
                if isinstance(error, NotUnique) and decision is not None and len(batch.commands) > 1:
                    _name_the_claimant(error, decision)
                try:
                    await self._record_rejection(batch, aggregate, error)
                except ConcurrencyConflict as stale:
                    conflict, aggregate = stale, None
                    continue
                except CommandAlreadyRecorded:
                    return await self._replayer.replay(batch.commands), aggregate
                raise
        head = await self._events.head(batch.aggregate_id)
        raise ConcurrencyConflict(
            batch.aggregate_id,
            conflict.expected if conflict else 0,
            attempts=self._max_attempts,
            current=head.version if head else 0,
        )

    async def _replayed_or_raise(self, batch: CommandBatch, unreadable: EventNotReadable) -> BatchResult:
        """The recorded outcome of ``batch`` if any of its ids is recorded,
        else ``unreadable`` (why the aggregate could not be loaded; only on
        that path: the common path pays nothing for the lookup)."""
        records = await self._replayer.records(batch.commands)
        if any(record is not None for record in records):
            return await self._replayer.replay_records(batch.commands, records)
        raise unreadable

    def start_series(self, requests: Sequence[CommandRequest], cached: Aggregate) -> Started:
        """Decide ``requests`` (independent commands queued for one aggregate,
        often just one) on ``cached`` now, in the caller's task, and hand
        their append to the store: each is decided on the state the one before
        left (as if they had run one after another), and all go to the store in
        ONE append, every command with its own outcome (a refused one is
        recorded refused, the others go on). A hot aggregate then costs one
        commit per queue-full, not one per command; a warm one costs no await
        before the store.

        Returns the append in flight (``InlineSeries``), the failure of a lone
        command (``Failed``), or None: something out of the ordinary (a lookup
        to make, claims, another aggregate type, one command id twice, an
        error that is not a recordable refusal) that the async path handles
        exactly.
        """
        aggregate_type = cached.type
        if any(r.spec.aggregate is not aggregate_type for r in requests):
            return None
        if len(requests) > 1 and len({r.command_id for r in requests}) < len(requests):
            return None  # a command id sent again while it queued: one at a time, the second replayed
        outcomes: list[Decided | ChronicleError] = []
        records: list[CommandRecord] = []
        new_events: list[NewEvent] = []
        current = cached
        now_us = time.time_ns() // 1000
        for request in requests:
            version = current.version
            try:
                events, claims, state = self._decider.decide_one(request, current)
            except LookupNeeded:
                return None
            except ChronicleError as error:
                if not error.recorded:
                    return Failed(error) if len(requests) == 1 else None
                outcomes.append(error)
                records.append(_record(request, version, 0, now_us, _rejection(error)))
                continue
            if claims:
                return None
            outcomes.append(Decided(request, version, events, claims))
            records.append(_record(request, version, len(events), now_us))
            if events:
                new_events.extend(_new_events(aggregate_type.name, request, events, now_us))
                current = Aggregate(
                    current.aggregate_id,
                    aggregate_type,
                    version + len(events),
                    state,
                    new_events[-1].event_id,
                    current.snapshot_version,
                )
        appended = asyncio.ensure_future(
            self._events.append(cached.aggregate_id, new_events, cached.version, commands=records)
        )
        return InlineSeries(tuple(requests), tuple(outcomes), cached, current, appended)

    @staticmethod
    def finish_series(series: InlineSeries) -> list[CommandResult | ChronicleError]:
        """Each command's outcome, once ``series.appended`` succeeded."""
        appended = series.appended.result()
        results: list[CommandResult | ChronicleError] = []
        offset = 0
        for outcome in series.outcomes:
            if isinstance(outcome, ChronicleError):
                results.append(outcome)
                continue
            count = len(outcome.events)
            results.append(CommandResult(tuple(appended[offset : offset + count]), outcome.version + count))
            offset += count
        return results

    async def execute_series(
        self, requests: Sequence[CommandRequest], cached: Aggregate | None
    ) -> tuple[list[CommandResult | BaseException], Aggregate | None]:
        """``start_series`` from the async path: loads the aggregate first if
        needed, and falls back to running each command alone (which handles
        anything out of the ordinary exactly) when the series cannot run or
        its append meets a conflict or a command id seen before."""
        aggregate_type = requests[0].spec.aggregate
        aggregate = cached if cached is not None and cached.type is aggregate_type else None
        if aggregate is None:
            try:
                aggregate = await self._loader.load(requests[0].aggregate_id, aggregate_type)
            except ChronicleError:
                return await self._one_by_one(requests, cached)
        started = self.start_series(requests, aggregate)
        if not isinstance(started, InlineSeries):
            return await self._one_by_one(requests, aggregate)
        try:
            await started.appended
        except (ConcurrencyConflict, CommandAlreadyRecorded):
            return await self._one_by_one(requests, None)
        results: list[CommandResult | BaseException] = list(self.finish_series(started))
        return results, started.end

    async def _one_by_one(
        self, requests: Sequence[CommandRequest], cached: Aggregate | None
    ) -> tuple[list[CommandResult | BaseException], Aggregate | None]:
        results: list[CommandResult | BaseException] = []
        for request in requests:
            try:
                result, cached = await self.execute_batch(CommandBatch((request,)), cached)
            except ChronicleError as error:
                results.append(error)
                if not error.keeps_cache:
                    cached = None
                continue
            except Exception as error:  # a store bug or a lost connection: what we knew is suspect
                results.append(error)
                cached = None
                continue
            results.append(result.results[0])
        return results, cached

    async def _dry_run(self, batch: CommandBatch, cached: Aggregate | None) -> tuple[BatchResult, Aggregate | None]:
        records = await self._replayer.records(batch.commands)
        if any(record is not None for record in records):
            return await self._replayer.replay_records(batch.commands, records), cached
        # The last event, read as any reader would: redacted once the
        # aggregate was forgotten. The cached state outlives the forget (on
        # this server until evicted, on another replica until its worker
        # goes), and a dry run writes nothing that would refuse it, so
        # without this it would answer from the forgotten state ("the
        # balance is 1234") to the caller and into the audit log.
        last = await self._events.read_aggregate(batch.aggregate_id, AggregateQuery(backwards=True, limit=1))
        if last and last[0].redacted:
            # As a submission would answer: it loads the aggregate, whose
            # type is checked before its (redacted) events are applied. A
            # forgotten aggregate of another type is AGGREGATE_TYPE_MISMATCH,
            # which a caller that may not read that type hears withheld
            # (service.api.disclosure), not "this id is a forgotten one".
            expected = batch.commands[0].spec.aggregate.name
            if last[0].aggregate_type != expected:
                raise AggregateTypeMismatch(batch.aggregate_id, last[0].aggregate_type, expected)
            raise AggregateForgotten(batch.aggregate_id)
        aggregate = cached
        if aggregate is None or aggregate.version != (last[0].version if last else 0):
            aggregate = await self._loader.load(batch.aggregate_id, batch.commands[0].spec.aggregate)
        decision = await self._decider.decide(batch.commands, aggregate, numbered=batch.numbered)
        for claim in decision.claims:
            holder = None if claim.release else await self._claims.claim_owner(claim.scope, claim.value)
            if holder is not None and holder != batch.aggregate_id:
                raise NotUnique(claim.scope)
        new_events = self._new_events(aggregate, decision)
        previews = [
            RecordedEvent.committed(new, aggregate_id=batch.aggregate_id, version=aggregate.version + i, position=0)
            for i, new in enumerate(new_events, start=1)
        ]
        return self._result(decision, previews, dry_run=True), aggregate

    @staticmethod
    def _new_events(aggregate: Aggregate, decision: Decision) -> list[NewEvent]:
        now_us = time.time_ns() // 1000
        return [
            new
            for decided in decision.commands
            for new in _new_events(aggregate.type.name, decided.request, decided.events, now_us)
        ]

    @staticmethod
    def _result(decision: Decision, events: Sequence[RecordedEvent], *, dry_run: bool = False) -> BatchResult:
        results, offset = [], 0
        for decided in decision.commands:
            count = len(decided.events)
            results.append(CommandResult(tuple(events[offset : offset + count]), decided.version + count))
            offset += count
        return BatchResult(tuple(results), results[-1].version, dry_run=dry_run)

    async def _record_rejection(self, batch: CommandBatch, aggregate: Aggregate, error: ChronicleError) -> None:
        """Record the refusal under every command id of the batch, so that a
        retry of the batch (or of any of its commands) is refused alike."""
        rejection = _rejection(error)
        now_us = time.time_ns() // 1000
        records = [_record(request, aggregate.version, 0, now_us, rejection) for request in batch.commands]
        # Checked against the version the decision was made on: a refusal
        # decided on a stale cache must be decided again, not recorded.
        await self._events.append(batch.aggregate_id, (), aggregate.version, commands=records)

    async def _append(
        self, batch: CommandBatch, aggregate: Aggregate, decision: Decision
    ) -> tuple[BatchResult, Aggregate]:
        new_events = self._new_events(aggregate, decision)
        recorded = await self._events.append(
            batch.aggregate_id,
            new_events,
            aggregate.version,
            commands=[
                _record(decided.request, decided.version, len(decided.events), time.time_ns() // 1000)
                for decided in decision.commands
            ],
            claims=decision.claims,
        )
        result = self._result(decision, recorded)
        last_event_id = new_events[-1].event_id if new_events else aggregate.last_event_id
        return result, Aggregate(
            batch.aggregate_id,
            aggregate.type,
            result.version,
            decision.state,
            last_event_id,
            aggregate.snapshot_version,
        )

    async def replay_recorded(self, batch: CommandBatch) -> BatchResult | None:
        """The recorded outcome of ``batch`` (raised again if a refusal), or
        None if none of its command ids is recorded. A store read: asked on
        a retry the worker remembers, or after a failure, never on the
        healthy path."""
        records = await self._replayer.records(batch.commands)
        if all(record is None for record in records):
            return None
        return await self._replayer.replay_records(batch.commands, records)

    async def replay(self, request: CommandRequest) -> CommandResult:
        """The recorded outcome of ``request``'s command id (raised again if
        it was a refusal)."""
        return (await self._replayer.replay([request])).results[0]

    def snapshot_due(self, before: int, aggregate: Aggregate) -> bool:
        """Whether the snapshot policy asks for one now that ``aggregate``
        went from version ``before`` to its own."""
        return self._snapshots.due(aggregate.type, before, aggregate.version)

    async def after_commit(self, before: int, aggregate: Aggregate) -> None:
        """Save a snapshot if the policy asks for one."""
        if self.snapshot_due(before, aggregate):
            await self.save_snapshot(aggregate)

    async def save_snapshot(self, aggregate: Aggregate) -> None:
        """Keep ``aggregate``'s state as a snapshot. Failure costs only speed."""
        snapshot = Snapshot(
            aggregate_id=aggregate.aggregate_id,
            aggregate_type=aggregate.type.name,
            version=aggregate.version,
            state_type=aggregate.type.snapshot_state_type,
            schema_version=aggregate.type.state_schema_version,
            state=aggregate.state.SerializeToString(),
            through_event_id=aggregate.last_event_id,
        )
        try:
            await self._snapshot_store.save_snapshot(snapshot)
        except StoreUnavailable as error:
            # An outage: one line per aggregate, not two chained tracebacks
            # each (a snapshot is a cache; the next command saves it again).
            log.warning("snapshot of %s at %d not saved: %s", aggregate.aggregate_id, aggregate.version, error)
        except Exception:
            log.warning("snapshot of %s at %d failed", aggregate.aggregate_id, aggregate.version, exc_info=True)
