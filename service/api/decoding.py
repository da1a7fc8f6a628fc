"""Requests whose bytes do not parse: a clear INVALID_ARGUMENT, not UNKNOWN.

gRPC parses a request with the handler's deserializer before any of our
code runs, and when that raises (truncated or corrupt Protobuf, a string
field holding invalid UTF-8) it answers UNKNOWN with the exception's text,
which a client cannot tell from a server bug. ``RequestDecoding`` gives every
handler a deserializer that never raises: bytes that do not parse become an
``Undecodable`` value, refused as INVALID_ARGUMENT (reason
MALFORMED_REQUEST) with the parser's explanation before the servicer runs.

``service.api.gate`` refuses them after the limits and authentication: a
caller without credentials learns nothing from sending garbage.

Streamed requests are parsed as the servicer reads them, and gRPC hands a
deserializer's exception to that read: there ``raising`` raises the same
refusal (an ``UnparsableMessage``) at the message that does not parse
(nothing wraps each message of the stream to look for an ``Undecodable``),
and the gate refuses the call with it as it refuses an ``Undecodable``
request: reported to its ``on_refused`` (audited, counted), then the
call's status.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from service.errors import InvalidInput

MALFORMED_REQUEST = "MALFORMED_REQUEST"


class UnparsableMessage(InvalidInput):
    """A message of a request stream did not parse (MALFORMED_REQUEST)."""


@dataclass(frozen=True, slots=True)
class Undecodable:
    """What arrived instead of a request: the bytes did not parse."""

    message_type: str
    problem: str

    def error(self) -> UnparsableMessage:
        return UnparsableMessage(
            f"the request does not parse as {self.message_type}: {self.problem}",
            reason=MALFORMED_REQUEST,
            metadata={"message_type": self.message_type},
        )


def tolerant(deserializer: Callable[[bytes], Any], method: str) -> Callable[[bytes], Any]:
    """``deserializer`` returning ``Undecodable`` where it would raise (for a
    request that arrives alone, parsed before the handler runs)."""
    message_type = _message_type(deserializer, method)

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, ValueError, TypeError) as error:
            return Undecodable(message_type, _problem(error))

    return deserialize


def raising(deserializer: Callable[[bytes], Any], method: str) -> Callable[[bytes], Any]:
    """``deserializer`` raising ``UnparsableMessage`` (MALFORMED_REQUEST)
    where it would raise anything else (for the messages of a request
    stream)."""
    message_type = _message_type(deserializer, method)

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, ValueError, TypeError) as error:
            raise Undecodable(message_type, _problem(error)).error() from None

    return deserialize


def _message_type(deserializer: Callable[[bytes], Any], method: str) -> str:
    owner = getattr(deserializer, "__self__", None)  # Message.FromString is a classmethod
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return str(descriptor.full_name) if descriptor is not None else f"request of {method}"


def _problem(error: Exception) -> str:
    # Protobuf's text repeats the message type: keep only its cause.
    return str(error).rpartition(": ")[2] or type(error).__name__
