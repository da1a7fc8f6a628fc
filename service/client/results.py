"""Typed views of what the server returns: events with their payloads
decoded, a command's (or a batch's) outcome, an aggregate's state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf import any_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from chronicle.v1 import command_service_pb2, event_pb2
from service.client.commands import Command
from service.client.errors import RemoteError

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


class Event:
    """One committed event: the envelope as sent (``envelope``, every field
    of ``chronicle.v1.Event``) and its payload, decoded when its type is known
    here (else the packed ``Any``). The payload is decoded when first asked
    for: a consumer that looks only at envelopes (positions, types) of a long
    catch-up pays nothing for payloads."""

    __slots__ = ("_payload", "envelope")

    def __init__(self, envelope: event_pb2.Event, payload: Message | None = None) -> None:
        self.envelope = envelope
        self._payload = payload

    @classmethod
    def of(cls, envelope: event_pb2.Event) -> Event:
        return cls(envelope)

    @property
    def payload(self) -> Message:
        if self._payload is None:
            self._payload = unpack(self.envelope.payload)
        return self._payload

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and self.envelope == other.envelope

    def __hash__(self) -> int:
        return hash((self.envelope.event_id, self.envelope.position))

    def __repr__(self) -> str:
        return (
            f"Event({self.envelope.event_type} {self.envelope.aggregate_id!r} v{self.envelope.version}"
            f" @{self.envelope.position})"
        )

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
    def deleted(self) -> bool:
        """A deleted aggregate's tombstone: its payload is a
        ``chronicle.v1.AggregateDeleted``, its events are gone."""
        return bool(self.envelope.deleted)

    @property
    def event_id(self) -> str:
        return str(self.envelope.event_id)

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
    an earlier attempt (``replayed``). With ``dry_run``, what it would have
    done: the events were not stored (their position is 0, their ids are
    never used) and the version is the one they would have led to."""

    command_id: str
    version: int
    replayed: bool
    events: tuple[Event, ...]
    dry_run: bool = False

    @classmethod
    def of(cls, command_id: str, response: command_service_pb2.SubmitResponse, *, dry_run: bool) -> Submitted:
        return cls(
            command_id=command_id,
            version=response.version,
            replayed=response.replayed,
            events=tuple(Event.of(e) for e in response.events),
            dry_run=dry_run,
        )

    @property
    def position(self) -> int:
        """The log position of the last event the command appended: pass it
        as ``min_position`` to read your own write from a read model
        (``projections.document``) or a standby. 0 when it appended nothing
        (nothing to wait for) and for a dry run (nothing was stored)."""
        return max((event.position for event in self.events), default=0)


@dataclass(frozen=True, slots=True)
class SubmittedBatch:
    """What a batch did: one ``Submitted`` per command, in the order sent,
    and the aggregate's version after the last. ``replayed``: every command
    id had been processed before and these are the original results."""

    version: int
    replayed: bool
    results: tuple[Submitted, ...]
    dry_run: bool = False

    @property
    def position(self) -> int:
        """The log position of the batch's last event (as ``Submitted.position``)."""
        return max((result.position for result in self.results), default=0)


@dataclass(frozen=True, slots=True)
class StreamResult:
    """The outcome of one command of ``submit_stream``: exactly one of
    ``submitted`` (it ran, or had run: ``submitted.replayed``) and ``error``
    (it was refused and nothing was written for it)."""

    command: Command
    submitted: Submitted | None
    error: RemoteError | None

    @property
    def command_id(self) -> str:
        return self.command.command_id

    def result(self) -> Submitted:
        """``submitted``, or raise ``error``."""
        if self.error is not None:
            raise self.error
        assert self.submitted is not None
        return self.submitted


@dataclass(frozen=True, slots=True)
class AggregateState(Generic[M]):
    """An aggregate's state (current, or as asked for) and the version it
    reflects."""

    aggregate_id: str
    aggregate_type: str
    version: int
    state: M
