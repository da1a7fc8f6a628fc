"""Executing one command against one aggregate: decide, append, retry.

The executor is stateless between calls; the worker that calls it owns the
cached aggregate and passes it in. Optimistic throughout: the handler runs on
the cached state, the store's version check decides whether that state was
the latest, and a conflict means reload and run again, within a budget.

Idempotency costs no read on the happy path: the command record is inserted
in the append's transaction, and only when the store reports the id as
already recorded is the original result read back.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Sequence

from google.protobuf.message import Message

from service.errors import (
    REPLAYABLE,
    ChronicleError,
    CommandIdReused,
    ConcurrencyConflict,
    HandlerFailed,
    WrongExpectedVersion,
    rebuild_rejection,
)
from service.plugins.api import CommandContext, EventSpec
from service.plugins.registry import Registry
from service.processing.commands import CommandRequest, CommandResult
from service.processing.snapshots import SnapshotPolicy
from service.processing.state import Aggregate, AggregateLoader, apply_messages
from service.processing.watchdog import SlowHandlerAlarm
from service.store.base import AggregateQuery, EventStore
from service.store.records import CommandAlreadyRecorded, CommandRecord, NewEvent, Rejection, Snapshot

log = logging.getLogger(__name__)

Decision = tuple[list[tuple[EventSpec, Message]], Message]


class CommandExecutor:
    def __init__(
        self,
        store: EventStore,
        registry: Registry,
        *,
        max_attempts: int = 5,
        snapshots: SnapshotPolicy | None = None,
        slow_handler_seconds: float = 0.1,
    ) -> None:
        self._store = store
        self._registry = registry
        self._loader = AggregateLoader(store, registry)
        self._max_attempts = max_attempts
        self._snapshots = snapshots or SnapshotPolicy()
        self._slow = SlowHandlerAlarm(threshold=slow_handler_seconds)

    @property
    def loader(self) -> AggregateLoader:
        return self._loader

    async def execute(
        self, request: CommandRequest, cached: Aggregate | None
    ) -> tuple[CommandResult, Aggregate | None]:
        """Run ``request``; return its result and the aggregate to cache next
        (None: nothing trustworthy to cache)."""
        aggregate = cached if cached is not None and cached.type is request.spec.aggregate else None
        conflict: ConcurrencyConflict | None = None
        for attempt in range(1, self._max_attempts + 1):
            if aggregate is None:
                aggregate = await self._loader.load(request.aggregate_id, request.spec.aggregate)
            try:
                decision = self._decide(request, aggregate)
            except ChronicleError as error:
                if type(error).__name__ not in REPLAYABLE:
                    raise
                try:
                    await self._record_rejection(request, aggregate, error)
                except ConcurrencyConflict as stale:
                    conflict, aggregate = stale, None
                    continue
                except CommandAlreadyRecorded as recorded:
                    return await self.replay(request, recorded.record), aggregate
                raise error
            try:
                return await self._append(request, aggregate, decision)
            except ConcurrencyConflict as stale:
                log.debug("conflict on %s (attempt %d)", request.aggregate_id, attempt)
                conflict, aggregate = stale, None
            except CommandAlreadyRecorded as recorded:
                # The command ran before (maybe on another replica, maybe
                # before a restart); our cached state may be behind.
                return await self.replay(request, recorded.record), None
        head = await self._store.head(request.aggregate_id)
        raise ConcurrencyConflict(
            request.aggregate_id,
            conflict.expected if conflict else 0,
            attempts=self._max_attempts,
            current=head.version if head else 0,
        )

    def _decide(self, request: CommandRequest, aggregate: Aggregate) -> Decision:
        if request.expected_version is not None and request.expected_version != aggregate.version:
            raise WrongExpectedVersion(request.aggregate_id, request.expected_version, aggregate.version)
        context = CommandContext(
            aggregate_id=request.aggregate_id,
            aggregate_type=aggregate.type.name,
            version=aggregate.version,
            command_id=request.command_id,
            user_id=request.user_id,
            origin=request.origin,
            correlation_id=request.correlation_id or request.command_id,
            metadata=request.metadata,
        )
        spec = request.spec
        started = time.perf_counter()
        try:
            produced = spec.handler(request.message, aggregate.state, context)
        except ChronicleError:
            raise
        except Exception as error:
            log.exception("handler for %s failed on %s", spec.name, request.aggregate_id)
            raise HandlerFailed(
                f"the handler for {spec.name} failed: {type(error).__name__}",
                metadata={"command_type": spec.name},
            ) from error
        finally:
            self._slow.check(spec.name, request.aggregate_id, started)
        messages = self._events_of(spec.name, aggregate, produced)
        if not messages:
            return [], aggregate.state
        try:
            state = apply_messages(aggregate.type, aggregate.state, messages)
        except Exception as error:
            log.exception("applying events of %s to %s failed", spec.name, request.aggregate_id)
            raise HandlerFailed(
                f"applying the events of {spec.name} failed: {type(error).__name__}",
                metadata={"command_type": spec.name},
            ) from error
        return messages, state

    def _events_of(
        self, command_type: str, aggregate: Aggregate, produced: Message | Iterable[Message] | None
    ) -> list[tuple[EventSpec, Message]]:
        if produced is None:
            return []
        items: Sequence[object] = [produced] if isinstance(produced, Message) else list(produced)
        result = []
        for item in items:
            name = item.DESCRIPTOR.full_name if isinstance(item, Message) else type(item).__name__
            spec = self._registry.event(name) if isinstance(item, Message) else None
            if spec is None or spec.aggregate is not aggregate.type or not isinstance(item, Message):
                raise HandlerFailed(
                    f"the handler for {command_type} returned {name}, which is not an event of {aggregate.type.name}",
                    reason="UNREGISTERED_EVENT",
                    metadata={"command_type": command_type, "event_type": name},
                )
            result.append((spec, item))
        return result

    def _record(
        self, request: CommandRequest, first: int, last: int, rejection: Rejection | None = None
    ) -> CommandRecord:
        return CommandRecord(
            command_id=request.command_id,
            aggregate_id=request.aggregate_id,
            command_type=request.spec.name,
            fingerprint=request.fingerprint,
            first_version=first,
            last_version=last,
            rejection=rejection,
            principal=request.principal,
            user_id=request.user_id,
            origin=request.origin,
            recorded_at_us=time.time_ns() // 1000,
        )

    async def _record_rejection(self, request: CommandRequest, aggregate: Aggregate, error: ChronicleError) -> None:
        rejection = Rejection(type(error).__name__, error.reason, error.message, error.metadata)
        record = self._record(request, aggregate.version + 1, aggregate.version, rejection)
        # Checked against the version the decision was made on: a refusal
        # decided on a stale cache must be decided again, not recorded.
        await self._store.append(request.aggregate_id, (), aggregate.version, commands=[record])

    async def _append(
        self, request: CommandRequest, aggregate: Aggregate, decision: Decision
    ) -> tuple[CommandResult, Aggregate]:
        messages, state = decision
        now_us = time.time_ns() // 1000
        correlation = request.correlation_id or request.command_id
        causation = request.causation_id or request.command_id
        new_events = [
            NewEvent(
                event_id=str(uuid.uuid4()),
                aggregate_type=aggregate.type.name,
                event_type=spec.name,
                schema_version=spec.schema_version,
                payload=message.SerializeToString(),
                timestamp_us=now_us,
                command_id=request.command_id,
                user_id=request.user_id,
                origin=request.origin,
                correlation_id=correlation,
                causation_id=causation,
                metadata=request.metadata,
            )
            for spec, message in messages
        ]
        version = aggregate.version + len(new_events)
        record = self._record(request, aggregate.version + 1, version)
        recorded = await self._store.append(request.aggregate_id, new_events, aggregate.version, commands=[record])
        after = Aggregate(request.aggregate_id, aggregate.type, version, state)
        return CommandResult(tuple(recorded), version), after

    async def replay(self, request: CommandRequest, record: CommandRecord) -> CommandResult:
        """The recorded outcome of ``request``'s command id, returned again
        (or raised again), if ``request`` is the same command."""
        if record.aggregate_id != request.aggregate_id:
            raise CommandIdReused(request.command_id, f"a command on aggregate {record.aggregate_id!r}")
        if record.fingerprint != request.fingerprint:
            raise CommandIdReused(request.command_id, f"a different {record.command_type} command")
        if record.rejection is not None:
            r = record.rejection
            raise rebuild_rejection(r.kind, r.message, r.reason, r.metadata)
        events = []
        if record.event_count > 0:
            stored = await self._store.read_aggregate(
                request.aggregate_id,
                AggregateQuery(from_version=record.first_version, to_version=record.last_version),
            )
            events = [current for event in stored for current in self._loader.reader.records(event)]
        return CommandResult(tuple(events), record.last_version, replayed=True)

    async def after_commit(self, before: int, aggregate: Aggregate) -> None:
        """Save a snapshot if the policy asks for one. Failure costs only speed."""
        if not self._snapshots.due(aggregate.type, before, aggregate.version):
            return
        snapshot = Snapshot(
            aggregate_id=aggregate.aggregate_id,
            aggregate_type=aggregate.type.name,
            version=aggregate.version,
            state_type=aggregate.type.state_type_name,
            schema_version=aggregate.type.state_schema_version,
            state=aggregate.state.SerializeToString(),
        )
        try:
            await self._store.save_snapshot(snapshot)
        except Exception:
            log.warning("snapshot of %s at %d failed", aggregate.aggregate_id, aggregate.version, exc_info=True)
