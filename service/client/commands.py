"""Commands as the client describes them, and their wire form."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field

from google.protobuf import any_pb2
from google.protobuf.message import Message

from chronicle.v1 import command_pb2


def new_command_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class Command:
    """One command for ``submit_batch`` and ``submit_stream``: the message
    to run on ``aggregate_id`` and the options of ``submit``.

    ``command_id`` is a fresh UUID 4 unless given, made when the command is
    made, so it is known before the command is sent (a stream's results name
    it) and stays the same on every retry. ``expected_version``: 0 means the
    aggregate must not exist yet, N that it must be at version N (in a batch,
    the version the commands before it leave).
    """

    aggregate_id: str
    message: Message
    _: KW_ONLY
    expected_version: int | None = None
    command_id: str = field(default_factory=new_command_id)
    metadata: Mapping[str, str] = field(default_factory=dict)
    correlation_id: str = ""
    causation_id: str = ""

    def encode(self, *, user_id: str, origin: str) -> command_pb2.Command:
        """The ``chronicle.v1.Command``, stamped with the current time."""
        payload = any_pb2.Any()
        payload.Pack(self.message)
        encoded = command_pb2.Command(
            command_id=self.command_id,
            aggregate_id=self.aggregate_id,
            payload=payload,
            user_id=user_id,
            origin=origin,
            metadata=dict(self.metadata),
            correlation_id=self.correlation_id,
            causation_id=self.causation_id,
        )
        encoded.timestamp.GetCurrentTime()
        if self.expected_version is not None:
            encoded.expected_version = self.expected_version
        return encoded

    def describe(self) -> str:
        """For logs: what and where, with the command id."""
        return f"{self.message.DESCRIPTOR.full_name} to {self.aggregate_id!r} (command {self.command_id})"
