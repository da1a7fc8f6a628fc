"""A command as the processor sees it, and what it produced."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from google.protobuf.message import Message

from service.plugins.api import CommandSpec
from service.store.records import RecordedEvent


def fingerprint(aggregate_id: str, command: Message) -> bytes:
    """What a command id stands for: its aggregate, type and content.

    The payload is re-serialized deterministically, so two encodings of the
    same message (field order, say) count as the same command.
    """
    digest = hashlib.sha256()
    digest.update(aggregate_id.encode())
    digest.update(b"\0")
    digest.update(command.DESCRIPTOR.full_name.encode())
    digest.update(b"\0")
    digest.update(command.SerializeToString(deterministic=True))
    return digest.digest()


@dataclass(frozen=True, slots=True)
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

    @property
    def fingerprint(self) -> bytes:
        return fingerprint(self.aggregate_id, self.message)


@dataclass(frozen=True, slots=True)
class CommandResult:
    """The events a command appended and the aggregate's version after it.
    ``replayed`` is true when this is a recorded result returned again."""

    events: tuple[RecordedEvent, ...]
    version: int
    replayed: bool = False
