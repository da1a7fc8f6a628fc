"""Deciding: running the handlers of a batch on an aggregate's state.

Each command runs on the state the one before it left (the batch is
atomic, so later commands see earlier ones). Deciding is synchronous
(``decide_now``): handlers are plain functions, so a command on a cached
aggregate is decided in its caller's task, with no await. A handler that
asks its context about another aggregate raises ``LookupNeeded`` the first
time; ``decide`` looks the aggregate up and decides again with the answer
(see ``service.plugins.context``). Claims a handler takes are collected per
command and written by the executor with the events. Nothing here writes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

from google.protobuf.message import Message

from service.claim_scopes import stored_claims
from service.errors import ChronicleError, EventTooLarge, HandlerFailed, WrongExpectedVersion
from service.plugins.api import EventSpec
from service.plugins.context import Clock, CommandContext, Effects, LookupNeeded
from service.plugins.registry import Registry
from service.processing.commands import CommandRequest
from service.processing.state import Aggregate, ApplyFailed, apply_messages
from service.processing.watchdog import SlowCallAlarm, a_command_handler
from service.store.base import EventRecorder
from service.store.records import DEFAULT_MAX_EVENT_BYTES, EVENT_ENVELOPE_BYTES, ClaimChange
from service.values import value

log = logging.getLogger(__name__)

# Aggregates one command may ask about; each costs a read and a re-run.
MAX_LOOKUPS = 32
_NO_ANSWERS: Mapping[tuple[str, str], bool] = MappingProxyType({})


@value(frozen=True, slots=True)
class Decided:
    """What one command of a batch decided, on the aggregate at ``version``."""

    request: CommandRequest
    version: int
    events: tuple[tuple[EventSpec, Message], ...]
    claims: tuple[ClaimChange, ...]


@value(frozen=True, slots=True)
class Decision:
    """What a whole batch decided, and the state after it."""

    commands: tuple[Decided, ...]
    state: Message

    @property
    def claims(self) -> list[ClaimChange]:
        """The batch's claims, one per (scope, value): the last word wins, so
        a value claimed and released again within the batch is released."""
        last: dict[tuple[str, str], ClaimChange] = {}
        for decided in self.commands:
            for claim in decided.claims:
                last.pop((claim.scope, claim.value), None)
                last[(claim.scope, claim.value)] = claim
        return list(last.values())


class Decider:
    """``max_event_bytes``: the largest event (``RecordedEvent.stored_size``)
    a command may produce; ``max_result_bytes``: the most a command's, or a
    batch's, events may add up to. Both keep every result and every stored
    event small enough to be sent back (below the gRPC message limit): a
    command that would break them is refused before anything is written."""

    def __init__(
        self,
        store: EventRecorder,
        registry: Registry,
        *,
        slow: SlowCallAlarm,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        max_result_bytes: int = 2 * DEFAULT_MAX_EVENT_BYTES,
        clock: Clock = time.time,
    ) -> None:
        self._store = store
        self._registry = registry
        self._slow = slow
        self._clock = clock
        self._max_event_bytes = max_event_bytes
        self._max_result_bytes = max_result_bytes

    async def decide(
        self, commands: Sequence[CommandRequest], aggregate: Aggregate, *, numbered: bool = False
    ) -> Decision:
        """``decide_now``, answering the handlers' lookups (a read each) until
        they need none."""
        answers: dict[tuple[str, str], bool] = {}
        asked: dict[str, int] = {}
        while True:
            try:
                return self.decide_now(commands, aggregate, answers, numbered=numbered)
            except LookupNeeded as needed:
                asked[needed.command_type] = asked.get(needed.command_type, 0) + 1
                if asked[needed.command_type] > MAX_LOOKUPS:
                    raise HandlerFailed(
                        f"the handler for {needed.command_type} asked about more than {MAX_LOOKUPS} aggregates",
                        reason="TOO_MANY_LOOKUPS",
                        metadata={"command_type": needed.command_type},
                    ) from None
                answers[needed.key] = await self._exists(*needed.key)

    def decide_now(
        self,
        commands: Sequence[CommandRequest],
        aggregate: Aggregate,
        answers: Mapping[tuple[str, str], bool] = _NO_ANSWERS,
        *,
        numbered: bool = False,
    ) -> Decision:
        """Run each command's handler in turn; raise the first refusal (with
        its place in the batch when there are several, or when ``numbered``),
        or ``LookupNeeded``
        when a handler asks about an aggregate ``answers`` says nothing of."""
        state, version = aggregate.state, aggregate.version
        decided = []
        size = 0
        for index, request in enumerate(commands):
            try:
                events, claims = self._run(request, aggregate, state, version, answers)
                if events:
                    size += self._sized(request, events, size)
                    state = self._apply(request, aggregate, state, events)
            except ChronicleError as error:
                if numbered or len(commands) > 1:
                    error.metadata.update(batch_index=str(index), command_id=request.command_id)
                raise
            except LookupNeeded as needed:
                needed.command_type = request.spec.name
                raise
            decided.append(Decided(request, version, tuple(events), claims))
            version += len(events)
        return Decision(tuple(decided), state)

    def decide_one(
        self,
        request: CommandRequest,
        aggregate: Aggregate,
        answers: Mapping[tuple[str, str], bool] = _NO_ANSWERS,
    ) -> tuple[tuple[tuple[EventSpec, Message], ...], tuple[ClaimChange, ...], Message]:
        """``decide_now`` for a command alone: its events, its claims and the
        state after them (the aggregate's own state when there are none)."""
        try:
            events, claims = self._run(request, aggregate, aggregate.state, aggregate.version, answers)
        except LookupNeeded as needed:
            needed.command_type = request.spec.name
            raise
        if not events:
            return (), claims, aggregate.state
        self._sized(request, events, 0)
        state = self._apply(request, aggregate, aggregate.state, events)
        return tuple(events), claims, state

    def _run(
        self,
        request: CommandRequest,
        aggregate: Aggregate,
        state: Message,
        version: int,
        answers: Mapping[tuple[str, str], bool],
    ) -> tuple[list[tuple[EventSpec, Message]], tuple[ClaimChange, ...]]:
        if request.expected_version is not None and request.expected_version != version:
            raise WrongExpectedVersion(request.aggregate_id, request.expected_version, version)
        effects = Effects(answers, clock=self._clock)
        context = CommandContext(
            aggregate_id=request.aggregate_id,
            aggregate_type=aggregate.type.name,
            version=version,
            command_id=request.command_id,
            user_id=request.user_id,
            origin=request.origin,
            correlation_id=request.correlation_id or request.command_id,
            metadata=request.metadata,
            timestamp_us=request.timestamp_us,
            effects=effects,
        )
        spec = request.spec
        if spec.creates or spec.requires_existing:
            spec.check_existence(context)
        produced = self._call(request, state, context)
        if effects.unanswered is not None:
            raise effects.unanswered  # the handler caught its lookup: it decided without the answer
        claims = (
            stored_claims(
                [ClaimChange(c.scope, c.value, c.release) for c in effects.claims],
                request.aggregate_id,
                self._registry.per_tenant_claim_scopes,
            )
            if effects.claims
            else ()
        )
        return self._events_of(request.spec.name, aggregate, produced), claims

    def _call(
        self, request: CommandRequest, state: Message, context: CommandContext
    ) -> Message | Iterable[Message] | None:
        spec = request.spec
        # The state is the cached aggregate's own (a copy per command would
        # cost more than this check): a handler that changes it would change
        # what later commands decide on, and the next snapshot.
        given = state.SerializeToString()
        started = time.perf_counter()
        try:
            return spec.handler(request.message, state, context)
        except (ChronicleError, LookupNeeded):
            raise
        except Exception as error:
            log.exception("handler for %s failed on %s", spec.name, request.aggregate_id)
            raise HandlerFailed(
                f"the handler for {spec.name} failed: {type(error).__name__}",
                metadata={"command_type": spec.name},
            ) from error
        finally:
            self._slow.check(started, a_command_handler, spec.name, request.aggregate_id)
            if state.SerializeToString() != given:
                state.Clear()
                state.MergeFromString(given)  # as it was: the command is refused, the cache kept
                log.error("the handler for %s changed the state of %s it was given", spec.name, request.aggregate_id)
                # Raised over whatever the handler raised or returned: its outcome came from a state it broke.
                raise HandlerFailed(
                    f"the handler for {spec.name} changed the state it was given: a handler returns events"
                    " and leaves the state to the apply functions",
                    reason="STATE_CHANGED_BY_HANDLER",
                    metadata={"command_type": spec.name},
                )

    def _sized(self, request: CommandRequest, events: list[tuple[EventSpec, Message]], before: int) -> int:
        """The events' size, or EventTooLarge if one of them, or all of them
        with the ``before`` bytes of the batch's earlier commands, would be
        too large to send back."""
        envelope = EVENT_ENVELOPE_BYTES + (_metadata_size(request.metadata) if request.metadata else 0)
        total = 0
        for spec, message in events:
            size = envelope + message.ByteSize()
            if size > self._max_event_bytes:
                raise EventTooLarge(
                    f"the handler for {request.spec.name} produced a {spec.name} of {size} bytes (payload and"
                    f" metadata); events are limited to {self._max_event_bytes} bytes",
                    reason="EVENT_TOO_LARGE",
                    metadata={
                        "event_type": spec.name,
                        "size": str(size),
                        "max_event_bytes": str(self._max_event_bytes),
                    },
                )
            total += size
        if before + total > self._max_result_bytes:
            raise EventTooLarge(
                f"the events of {request.spec.name} add up to {before + total} bytes; a command's (or a batch's)"
                f" events are limited to {self._max_result_bytes} bytes together",
                reason="RESULT_TOO_LARGE",
                metadata={"size": str(before + total), "max_result_bytes": str(self._max_result_bytes)},
            )
        return total

    async def _exists(self, aggregate_type: str, aggregate_id: str) -> bool:
        head = await self._store.head(aggregate_id)
        return head is not None and head.aggregate_type == aggregate_type and not head.deleted

    def _apply(
        self, request: CommandRequest, aggregate: Aggregate, state: Message, events: list[tuple[EventSpec, Message]]
    ) -> Message:
        try:
            return apply_messages(aggregate.type, state, events)
        except ApplyFailed as failed:
            log.error(
                "applying the events of %s to %s failed: %s",
                request.spec.name,
                request.aggregate_id,
                failed,
                exc_info=failed.__cause__,
            )
            raise HandlerFailed(
                f"the events of {request.spec.name} cannot be applied: {failed}",
                metadata={"command_type": request.spec.name, "event_type": failed.event_type},
            ) from failed

    def _events_of(
        self, command_type: str, aggregate: Aggregate, produced: Message | Iterable[Message] | None
    ) -> list[tuple[EventSpec, Message]]:
        if produced is None:
            return []
        if isinstance(produced, Message):
            items: Sequence[object] = [produced]
        elif isinstance(produced, Iterable) and not isinstance(produced, (str, bytes, Mapping)):
            items = list(produced)
        else:
            raise HandlerFailed(
                f"the handler for {command_type} returned {type(produced).__name__}: a handler returns an event"
                f" of {aggregate.type.name}, a list of them, or None",
                reason="UNREGISTERED_EVENT",
                metadata={"command_type": command_type, "event_type": type(produced).__name__},
            )
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


def _metadata_size(metadata: Mapping[str, str]) -> int:
    """What a command's metadata adds to each of its events (as
    ``RecordedEvent.stored_size`` counts it)."""
    return sum(len(key) + len(text) + 6 for key, text in metadata.items())
