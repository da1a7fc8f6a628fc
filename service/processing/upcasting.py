"""Reading stored events as the loaded plugins read them today.

The one place every read path goes through (aggregate loading, ReadAggregate,
command replays, subscriptions): a stored event at an older schema version is
passed through the plugins' upcasters, one version at a time, until each
resulting event is at its type's current version. Stored events are never
rewritten; upcasting happens on every read.

Two kinds of event cannot be read, and they are handled apart:

* an event of a type the server does not know (no loaded plugin declares
  it, no upcaster reads it: a retired plugin's, or an imported one) has no
  current schema here, so its stored bytes are the only truth there is:
  readers that pass events on (``records``: subscriptions, groups,
  ReadAggregate) hand it over as stored, as KurrentDB's ``$all`` hands over
  any event's bytes; only rebuilding state (``decode``, ``messages``) fails;
* an event of a type the server knows that the chain cannot bring to a
  current version (a missing step, a version newer than the plugin, an
  upcaster that fails or returns something unregistered, a payload that
  does not parse) is an ``EventNotReadable`` error on every path, logged
  with the event's place: the plugin promises that type at its current
  schema, and the old bytes would be misread by code written for it.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from google.protobuf.message import DecodeError, Message

from service.errors import AggregateDeleted, AggregateForgotten, EventNotReadable
from service.plugins.api import EventSpec, OldEvent, UpcasterSpec
from service.plugins.registry import Registry
from service.store.records import RecordedEvent, is_tombstone
from service.values import value

log = logging.getLogger(__name__)

# No real chain is this long; a longer one is an upcaster that loops.
MAX_STEPS = 64


@value(frozen=True, slots=True)
class CurrentEvent:
    """One event as read today: ``record`` is the stored envelope with the
    current type, schema version and payload; ``spec`` and ``message`` are
    how the plugin decodes it."""

    record: RecordedEvent
    spec: EventSpec
    message: Message


@dataclass(frozen=True, slots=True)
class _Step:
    event_type: str
    schema_version: int
    payload: bytes | None
    message: Message | None

    def bytes(self) -> bytes:
        if self.payload is not None:
            return self.payload
        assert self.message is not None
        return self.message.SerializeToString()


class EventReader:
    """Brings stored events to their current schema, through the registry's
    upcasters."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    @property
    def upcast_types(self) -> frozenset[str]:
        """Stored types that upcasters read (and may turn into other types)."""
        return self._registry.upcast_types

    def decode(self, event: RecordedEvent) -> list[CurrentEvent]:
        """``event`` as today's plugin reads it: zero, one or several events.
        A redacted event (its aggregate was forgotten) cannot be read, nor
        rebuilt from a deleted aggregate's tombstone."""
        if event.redacted:
            raise AggregateForgotten(event.aggregate_id)
        if is_tombstone(event):
            raise AggregateDeleted(event.aggregate_id)
        spec = self._registry.event(event.event_type)
        if spec is not None and spec.schema_version == event.schema_version:
            # Already current (nearly every event): no upcasting to walk.
            return [CurrentEvent(event, spec, self._parse(event, spec))]
        start = _Step(event.event_type, event.schema_version, event.payload, None)
        pieces = self._current(event, start, steps=0)
        if len(pieces) == 1 and pieces[0][1] is None:
            spec = pieces[0][0]  # already current: the stored envelope as is
            return [CurrentEvent(event, spec, self._parse(event, spec))]
        result = []
        for index, (spec, message) in enumerate(pieces):
            assert message is not None  # only the stored event itself comes without one
            result.append(CurrentEvent(self._rebuilt(event, index, spec, message), spec, message))
        return result

    def messages(self, events: Iterable[RecordedEvent]) -> Iterator[tuple[EventSpec, Message]]:
        """``decode`` for rebuilding state, which needs only each event's
        spec and message: an event already at its current schema (nearly
        all of them) is parsed directly, without building its envelope again.
        Loading a 10,000-event aggregate is mostly this loop."""
        event_spec = self._registry.event
        for event in events:
            spec = event_spec(event.event_type)
            if spec is not None and spec.schema_version == event.schema_version and not event.redacted:
                yield spec, self._parse(event, spec)
            else:
                for current in self.decode(event):
                    yield current.spec, current.message

    def records(self, event: RecordedEvent) -> list[RecordedEvent]:
        """Like ``decode``, for readers that pass events on: an event that is
        already current, redacted, a deleted aggregate's tombstone, or of a
        type the server does not know (module docstring) is returned as
        stored, without parsing its payload."""
        if event.redacted or is_tombstone(event):
            return [event]
        spec = self._registry.event(event.event_type)
        if spec is not None and spec.schema_version == event.schema_version:
            return [event]
        if spec is None and event.event_type not in self._registry.upcast_types:
            return [event]
        return [current.record for current in self.decode(event)]

    def _current(self, event: RecordedEvent, step: _Step, *, steps: int) -> list[tuple[EventSpec, Message | None]]:
        """(spec, message) for each event ``step`` becomes, in order; message
        None means "the stored payload, untouched"."""
        if steps > MAX_STEPS:
            raise _unreadable(event, f"upcasting {event.event_type} did not end", "UPCAST_LOOP")
        spec = self._registry.event(step.event_type)
        if spec is not None and step.schema_version == spec.schema_version:
            return [(spec, step.message)]
        if spec is not None and step.schema_version > spec.schema_version:
            raise _unreadable(
                event,
                f"{step.event_type} v{step.schema_version} is newer than the plugin's v{spec.schema_version}",
                "SCHEMA_VERSION_TOO_NEW",
            )
        upcaster = self._registry.upcaster(step.event_type, step.schema_version)
        if upcaster is None:
            if spec is None and step.event_type not in self._registry.upcast_types:
                raise _unreadable(
                    event,
                    f"no loaded plugin reads event type {step.event_type}, so aggregate {event.aggregate_id!r}"
                    f" cannot be rebuilt past version {event.version - 1}: load the plugin that declares it, or"
                    " declare an upcaster for it (one that returns None drops it from the aggregate)",
                    "UNKNOWN_EVENT_TYPE",
                )
            raise _unreadable(
                event, f"no upcaster reads {step.event_type} v{step.schema_version}", "UNSUPPORTED_SCHEMA_VERSION"
            )
        result: list[tuple[EventSpec, Message | None]] = []
        for message in self._run(event, upcaster, step):
            name = str(message.DESCRIPTOR.full_name)
            target = self._registry.event(name)
            if name == step.event_type:
                following = _Step(name, step.schema_version + 1, None, message)
            elif target is not None and target.aggregate is upcaster.aggregate:
                following = _Step(name, target.schema_version, None, message)
            else:
                raise _unreadable(
                    event,
                    f"the upcaster of {upcaster.name} returned {name}, not an event of {upcaster.aggregate.name}",
                    "UPCAST_FAILED",
                )
            result.extend(self._current(event, following, steps=steps + 1))
        return result

    def _run(self, event: RecordedEvent, upcaster: UpcasterSpec, step: _Step) -> list[Message]:
        old = OldEvent(step.event_type, step.schema_version, step.bytes())
        try:
            produced = upcaster.upcast(old)
        except Exception as error:
            log.exception("the upcaster of %s failed on %s v%s", upcaster.name, event.aggregate_id, event.version)
            raise _unreadable(
                event, f"the upcaster of {upcaster.name} failed: {type(error).__name__}", "UPCAST_FAILED"
            ) from error
        items: Iterable[object] = () if produced is None else [produced] if isinstance(produced, Message) else produced
        messages = []
        for item in items:
            if not isinstance(item, Message):
                raise _unreadable(
                    event, f"the upcaster of {upcaster.name} returned a {type(item).__name__}", "UPCAST_FAILED"
                )
            messages.append(item)
        return messages

    def _parse(self, event: RecordedEvent, spec: EventSpec) -> Message:
        try:
            return spec.message_type.FromString(event.payload)
        except DecodeError as error:
            raise _unreadable(event, f"stored {event.event_type} does not parse", "CORRUPT_EVENT") from error

    @staticmethod
    def _rebuilt(event: RecordedEvent, index: int, spec: EventSpec, message: Message) -> RecordedEvent:
        return dataclasses.replace(
            event,
            event_id=_part_id(event.event_id, index),
            event_type=spec.name,
            schema_version=spec.schema_version,
            payload=message.SerializeToString(),
        )


def _part_id(event_id: str, index: int) -> str:
    """The id of the ``index``th event an upcast stored event became: the
    stored id for the first, an id derived from it (the same on every read)
    for the others."""
    if index == 0:
        return event_id
    try:
        namespace = uuid.UUID(event_id)
    except ValueError:
        namespace = uuid.uuid5(uuid.NAMESPACE_URL, event_id)
    return str(uuid.uuid5(namespace, str(index)))


def _unreadable(event: RecordedEvent, message: str, reason: str) -> EventNotReadable:
    log.error(
        "event %s of aggregate %s (version %s, %s v%s) is not readable: %s",
        event.event_id,
        event.aggregate_id,
        event.version,
        event.event_type,
        event.schema_version,
        message,
    )
    return EventNotReadable(
        message,
        reason=reason,
        metadata={
            "aggregate_id": event.aggregate_id,
            "version": str(event.version),
            "event_id": event.event_id,
            "position": str(event.position),
            "event_type": event.event_type,
            "schema_version": str(event.schema_version),
        },
    )
