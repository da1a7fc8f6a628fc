"""Typed views of what the server returns: events with their payloads
decoded, a command's outcome, an aggregate's state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf import any_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from chronicle.v1 import event_pb2

M = TypeVar("M", bound=Message)


def unpack(packed: any_pb2.Any) -> Message:
    """The message inside ``packed`` if its type is known in this process
    (its ``_pb2`` module was imported), else ``packed`` itself."""
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(packed.TypeName())
    except KeyError:
        return packed
    message: Message = message_factory.GetMessageClass(descriptor)()
    packed.Unpack(message)
    return message


def unpack_as(packed: any_pb2.Any, message_type: type[M]) -> M:
    message = message_type()
    if not packed.Unpack(message):
        raise TypeError(f"expected a {message_type.DESCRIPTOR.full_name}, got {packed.TypeName()}")
    return message


@dataclass(frozen=True, slots=True)
class Event:
    """One committed event: the envelope as sent (``envelope``, every field
    of ``chronicle.v1.Event``) and its payload, decoded when its type is known
    here (else the packed ``Any``)."""

    envelope: event_pb2.Event
    payload: Message

    @classmethod
    def of(cls, envelope: event_pb2.Event) -> Event:
        return cls(envelope, unpack(envelope.payload))

    def payload_as(self, message_type: type[M]) -> M:
        """The payload as ``message_type``; TypeError if it is another type."""
        return unpack_as(self.envelope.payload, message_type)

    @property
    def event_type(self) -> str:
        return str(self.envelope.event_type)

    @property
    def redacted(self) -> bool:
        """The aggregate was forgotten: the payload is gone for good (empty)."""
        return bool(self.envelope.redacted)

    @property
    def aggregate_id(self) -> str:
        return str(self.envelope.aggregate_id)

    @property
    def version(self) -> int:
        return int(self.envelope.version)

    @property
    def position(self) -> int:
        return int(self.envelope.position)


@dataclass(frozen=True, slots=True)
class Submitted:
    """What a command did: the events it appended (maybe none), the
    aggregate's version after it, and whether this is the recorded result of
    an earlier attempt (``replayed``)."""

    command_id: str
    version: int
    replayed: bool
    events: tuple[Event, ...]


@dataclass(frozen=True, slots=True)
class AggregateState(Generic[M]):
    """An aggregate's current state and the version it reflects."""

    aggregate_id: str
    aggregate_type: str
    version: int
    state: M
