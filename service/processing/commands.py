"""A command as the processor sees it, and what it produced."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import field

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from service.plugins.api import CommandSpec
from service.store.records import RecordedEvent
from service.values import value


def fingerprint(aggregate_id: str, command: Message) -> bytes:
    """What a command id stands for: its aggregate, type and content.

    The payload is re-serialized deterministically, so two encodings of the
    same message (field order, say) count as the same command.
    """
    return _digest(aggregate_id, command.DESCRIPTOR.full_name, command.SerializeToString(deterministic=True))


def fingerprint_of_unregistered(aggregate_id: str, type_name: str, payload: bytes) -> bytes:
    """``fingerprint`` of a command whose type no loaded plugin registers
    (renamed since it ran): its message class may still be importable (the
    new version kept the old message), and then it is re-serialized as
    ``fingerprint`` does; otherwise the bytes as sent stand for it (a
    retry sends the same bytes again)."""
    try:
        message_class = message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(type_name))
        message = message_class.FromString(payload)
    except (KeyError, DecodeError):
        return _digest(aggregate_id, type_name, payload)
    return fingerprint(aggregate_id, message)


def _digest(aggregate_id: str, type_name: str, content: bytes) -> bytes:
    digest = hashlib.sha256()
    digest.update(aggregate_id.encode())
    digest.update(b"\0")
    digest.update(type_name.encode())
    digest.update(b"\0")
    digest.update(content)
    return digest.digest()


@value(frozen=True, slots=True)
class CommandRequest:
    """A decoded, well-formed command, bound to its registered handler."""

    command_id: str
    aggregate_id: str
    spec: CommandSpec
    message: Message
    user_id: str = ""
    origin: str = ""
    correlation_id: str = ""
    causation_id: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    expected_version: int | None = None
    # Who sent it (the authenticated principal's name; empty with auth off).
    principal: str = ""
    # When it was made: the client's Command.timestamp, else when the server
    # received it (microseconds since the epoch; 0: unknown).
    timestamp_us: int = 0
    # A reaction's command: the tenant of the aggregate whose event caused
    # it ("" none). A client's: "" here, its caller's is the pipeline's.
    tenant: str = ""

    @property
    def fingerprint(self) -> bytes:
        return fingerprint(self.aggregate_id, self.message)


@value(frozen=True, slots=True)
class CommandResult:
    """The events a command appended and the aggregate's version after it.
    ``replayed`` is true when this is a recorded result returned again."""

    events: tuple[RecordedEvent, ...]
    version: int
    replayed: bool = False


@value(frozen=True, slots=True)
class CommandBatch:
    """Commands for one aggregate, run in order, each on the state the one
    before left, and appended together: all or none. A single command is a
    batch of one. ``dry_run``: decide, return what would be appended, write
    nothing."""

    commands: tuple[CommandRequest, ...]
    dry_run: bool = False
    # Sent as a batch (SubmitBatch): a refusal names its command
    # (batch_index, command_id) even in a batch of one, as the API says.
    numbered: bool = False

    def __post_init__(self) -> None:
        # The codec refuses such input with a clear status; here it is a bug.
        if not self.commands:
            raise ValueError("a batch has at least one command")
        first = self.commands[0]
        if any(
            c.aggregate_id != first.aggregate_id or c.spec.aggregate is not first.spec.aggregate for c in self.commands
        ):
            raise ValueError("the commands of a batch are for one aggregate")

    @property
    def aggregate_id(self) -> str:
        return self.commands[0].aggregate_id


@value(frozen=True, slots=True)
class BatchResult:
    """One result per command of a batch, in order, and the aggregate's
    version after the last. ``replayed``: every command id had been
    processed and these are the original results. ``dry_run``: nothing was
    written; events have position 0 and ids that were never stored."""

    results: tuple[CommandResult, ...]
    version: int
    replayed: bool = False
    dry_run: bool = False

    @property
    def appended(self) -> bool:
        return not self.dry_run and not self.replayed and any(r.events for r in self.results)
