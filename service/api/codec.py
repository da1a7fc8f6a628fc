"""Between the wire and the processor: validate and decode incoming
commands, encode committed events. Every rule on the shape of a request
lives here, and every refusal names the field at fault."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from google.protobuf import any_pb2, duration_pb2, timestamp_pb2
from google.protobuf.message import DecodeError

from chronicle.v1 import command_pb2, event_pb2
from service.errors import FieldViolation, InvalidInput, quoted
from service.plugins.reactions import HOPS_KEY
from service.plugins.registry import Registry
from service.principal import REACTION_PREFIX
from service.processing.commands import CommandBatch, CommandRequest
from service.store.imported import IMPORTED_KEY
from service.store.records import TOMBSTONE_EVENT_TYPE, RecordedEvent
from service.values import MAX_ID_LENGTH, canonical_uuid, id_problem

TYPE_URL_PREFIX = "type.googleapis.com/"
MAX_TEXT_LENGTH = 200
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY = 128
MAX_METADATA_VALUE = 4096
MAX_BATCH_COMMANDS = 100
MAX_FILTER_ENTRIES = 100
# Versions and positions are uint64 on the wire but signed 64-bit in every
# store: no aggregate or log can ever get beyond this.
MAX_VERSION = 2**63 - 1


def _printable(value: str) -> bool:
    return value.isprintable()


def check_id(field: str, value: str, *, reason: str) -> str:
    """An identifier: non-empty, not only spaces, bounded, printable (no
    control characters): ``values.id_problem``, the rule imports apply too."""
    problem = id_problem(value)
    if problem:
        raise InvalidInput.for_field(field, problem, reason=reason)
    return value


def check_stored_id(field: str, value: str, *, reason: str) -> str:
    """An identifier to read by: as ``check_id``, but control characters
    are let through. No write takes them now, but a store may hold an
    aggregate under such an id (imported before imports held ids to the
    API's rule), and reading it must find it, not refuse its id."""
    problem = id_problem(value, printable=False)
    if problem:
        raise InvalidInput.for_field(field, problem, reason=reason)
    return value


def check_version(field: str, value: int, *, reason: str = "INVALID_VERSION") -> int:
    """A version or position asked for: at most ``MAX_VERSION``."""
    if value > MAX_VERSION:
        raise InvalidInput.for_field(field, f"must be at most {MAX_VERSION}", reason=reason)
    return value


def check_names(field: str, values: Sequence[str], *, reason: str) -> list[str]:
    """A list filter: at most ``MAX_FILTER_ENTRIES`` identifiers."""
    if len(values) > MAX_FILTER_ENTRIES:
        raise InvalidInput.for_field(field, f"at most {MAX_FILTER_ENTRIES} entries", reason=reason)
    return [check_id(f"{field}[{index}]", value, reason=reason) for index, value in enumerate(values)]


def _check_text(field: str, name: str, value: str) -> str:
    """An optional text field of a command (``field``.``name``): empty, or
    bounded and printable. The field's path is only spelled out when refused:
    every command passes here four times."""
    if value and (len(value) > MAX_TEXT_LENGTH or not value.isprintable()):
        raise InvalidInput.for_field(
            f"{field}.{name}", f"must be at most {MAX_TEXT_LENGTH} printable characters", reason="INVALID_FIELD"
        )
    return value


def check_origin(field: str, origin: str) -> str:
    """A command's origin: free text, but not a reaction's. The server sets
    ``reaction:<name>`` on the commands a reaction sends, and a reaction may
    tell by it that an event came of its own command (the bank's transfers
    do, docs/plugins.md): a client's command claiming it, in any letter
    case, could route its events into a reaction's processes."""
    _check_text(field, "origin", origin)
    if origin != origin.strip():
        # " reaction:shop.fulfil" shows as the reaction's own origin in the
        # audit and the console: no client's origin may look padded so.
        raise InvalidInput.for_field(f"{field}.origin", "must not begin or end with a space", reason="INVALID_FIELD")
    if origin[: len(REACTION_PREFIX)].lower() == REACTION_PREFIX:
        raise InvalidInput.for_field(
            f"{field}.origin",
            f"is reserved: origins beginning with {REACTION_PREFIX!r} are the server's, set on a reaction's commands",
            reason="RESERVED_ORIGIN",
        )
    return origin


def _command_id(field: str, value: str) -> str:
    """A command id: any form of UUID, returned in the canonical one."""
    canonical = canonical_uuid(value)
    if canonical is None:
        raise InvalidInput.for_field(
            f"{field}.command_id", "must be a UUID chosen by the client", reason="INVALID_COMMAND_ID"
        )
    return canonical


def canonical_command_id(value: str) -> str:
    """A command id as the service keeps it: a UUID in its canonical form
    (as ``decode_command`` makes it), anything else unchanged."""
    return canonical_uuid(value) or value


def _aggregate_id(field: str, value: str) -> str:
    if value and len(value) <= MAX_ID_LENGTH and value.isprintable() and not value.isspace():
        return value
    return check_id(f"{field}.aggregate_id", value, reason="INVALID_AGGREGATE_ID")


_NO_METADATA: Mapping[str, str] = MappingProxyType({})

# Metadata keys the server writes itself, and what a client's would forge.
# The whole prefix is reserved (in any letter case), not only today's keys:
# a key the server starts writing later must not already sit in events that
# clients wrote, meaning something else.
RESERVED_METADATA_PREFIX = "chronicle."
# Keyed in lower case: looked up by the client's key lowered, as the prefix
# is checked.
_SERVERS_KEYS = {
    # The count of reaction hops that stops a reaction loop: a client's could
    # start a chain at (or past) its reactions' limit, and have their commands
    # parked.
    HOPS_KEY: "the server sets it on the commands reactions send",
    # The mark of an imported event: reactions pass such events by, so a
    # command's could make its events unseen by every reaction.
    IMPORTED_KEY: "an import sets it on the events it writes",
}


def check_metadata(metadata: Mapping[str, str], field: str = "command") -> dict[str, str]:
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise InvalidInput.for_field(
            f"{field}.metadata", f"at most {MAX_METADATA_ENTRIES} entries", reason="INVALID_METADATA"
        )
    reserved = next((key for key in metadata if key.lower().startswith(RESERVED_METADATA_PREFIX)), None)
    if reserved is not None:
        raise InvalidInput.for_field(
            f"{field}.metadata[{reserved[:MAX_METADATA_KEY]!r}]",
            f"is reserved: keys beginning with {RESERVED_METADATA_PREFIX!r} are the server's own"
            f" ({_SERVERS_KEYS.get(reserved.lower(), 'kept for keys it may write later')})",
            reason="INVALID_METADATA",
        )
    for key, value in metadata.items():
        if key != key.strip():
            # " chronicle.x" reads as the server's key: refused as one would be.
            raise InvalidInput.for_field(
                f"{field}.metadata[{key[:MAX_METADATA_KEY]!r}]",
                "keys must not begin or end with a space",
                reason="INVALID_METADATA",
            )
        # Values may hold any text PostgreSQL's can: not NUL (which the other
        # stores took, so the event could not be imported there later).
        if (
            not key
            or len(key) > MAX_METADATA_KEY
            or not _printable(key)
            or len(value) > MAX_METADATA_VALUE
            or "\x00" in value
        ):
            raise InvalidInput.for_field(
                f"{field}.metadata[{key[:MAX_METADATA_KEY]!r}]",
                f"keys 1 to {MAX_METADATA_KEY} printable characters, values up to {MAX_METADATA_VALUE}, without NUL",
                reason="INVALID_METADATA",
            )
    return dict(metadata)


def type_name(packed: any_pb2.Any) -> str:
    return packed.type_url.rpartition("/")[2]


def decode_command(
    command: command_pb2.Command, registry: Registry, *, field: str = "command", principal: str = ""
) -> CommandRequest:
    """A well-formed command bound to its handler; ``field`` names it in
    refusals ("command", or "commands[3]" in a batch). The caller acts as
    ``principal`` (its authenticated name), and as that user unless the
    command names another (which only an impersonation grant allows)."""
    command_id = _command_id(field, command.command_id)
    aggregate_id = _aggregate_id(field, command.aggregate_id)
    payload = command.payload
    if not payload.type_url:  # an unset message field reads as an empty one
        raise InvalidInput.for_field(f"{field}.payload", "must hold the command message", reason="MISSING_PAYLOAD")
    name = type_name(payload)
    spec = registry.command(name)
    if spec is None:
        raise InvalidInput(
            f"no handler is registered for command type {quoted(name)}",
            reason="UNKNOWN_COMMAND_TYPE",
            violations=(FieldViolation(f"{field}.payload.type_url", f"no handler is registered for {quoted(name)}"),),
            metadata={"command_type": name[:MAX_ID_LENGTH]},
        )
    message = spec.message_type()
    try:
        message.ParseFromString(payload.value)
    except DecodeError as error:
        raise InvalidInput.for_field(
            f"{field}.payload.value", f"does not parse as {name}: {error}", reason="MALFORMED_PAYLOAD"
        ) from None
    return CommandRequest(
        command_id=command_id,
        aggregate_id=aggregate_id,
        spec=spec,
        message=message,
        user_id=_check_text(field, "user_id", command.user_id) or principal,
        principal=principal,
        origin=check_origin(field, command.origin),
        correlation_id=_check_text(field, "correlation_id", command.correlation_id),
        causation_id=_check_text(field, "causation_id", command.causation_id),
        metadata=check_metadata(command.metadata, field) if command.metadata else _NO_METADATA,
        expected_version=command.expected_version if command.HasField("expected_version") else None,
        timestamp_us=_timestamp_us(command, field),
    )


def _timestamp_us(command: command_pb2.Command, field: str) -> int:
    """When the command was made: the client's timestamp, else now (its
    receipt). The client's is checked: it is stored (a signed 64-bit
    column), and one out of Timestamp's range overflowed it (INTERNAL)."""
    if command.HasField("timestamp"):
        return micros_of(command.timestamp, f"{field}.timestamp")
    return time.time_ns() // 1000


def decode_batch(
    commands: Sequence[command_pb2.Command], registry: Registry, *, dry_run: bool, principal: str = ""
) -> CommandBatch:
    """A well-formed batch: 1 to MAX_BATCH_COMMANDS commands for one
    aggregate, each command id once, each sent as ``principal`` (as
    ``decode_command``)."""
    if not commands:
        raise InvalidInput.for_field("commands", "must hold at least one command", reason="EMPTY_BATCH")
    if len(commands) > MAX_BATCH_COMMANDS:
        raise InvalidInput.for_field(
            "commands", f"holds {len(commands)} commands; at most {MAX_BATCH_COMMANDS}", reason="BATCH_TOO_LARGE"
        )
    decoded = [decode_command(c, registry, field=f"commands[{i}]", principal=principal) for i, c in enumerate(commands)]
    first, seen = decoded[0], dict[str, int]()
    for i, request in enumerate(decoded):
        if request.aggregate_id != first.aggregate_id:
            raise InvalidInput.for_field(
                f"commands[{i}].aggregate_id",
                f"must be {first.aggregate_id!r} as in commands[0]: a batch is for one aggregate",
                reason="MIXED_AGGREGATES",
            )
        if request.spec.aggregate is not first.spec.aggregate:
            raise InvalidInput.for_field(
                f"commands[{i}].payload",
                f"is a command for a {request.spec.aggregate.name}; commands[0] is for a {first.spec.aggregate.name}",
                reason="MIXED_AGGREGATE_TYPES",
            )
        if request.command_id in seen:
            raise InvalidInput.for_field(
                f"commands[{i}].command_id",
                f"repeats commands[{seen[request.command_id]}].command_id",
                reason="DUPLICATE_COMMAND_ID",
            )
        seen[request.command_id] = i
    return CommandBatch(tuple(decoded), dry_run=dry_run, numbered=True)


# What google.protobuf.Timestamp allows: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


def micros_of(moment: timestamp_pb2.Timestamp, field: str) -> int:
    """Microseconds since the epoch, or INVALID_ARGUMENT naming ``field``."""
    if not _MIN_SECONDS <= moment.seconds <= _MAX_SECONDS or not 0 <= moment.nanos < 1_000_000_000:
        raise InvalidInput.for_field(
            field, "must be a valid time between 0001-01-01 and 9999-12-31", reason="INVALID_TIMESTAMP"
        )
    return moment.seconds * 1_000_000 + moment.nanos // 1000


def duration(seconds: float) -> duration_pb2.Duration:
    """``seconds`` as a ``google.protobuf.Duration``, to the nanosecond."""
    answer = duration_pb2.Duration()
    answer.FromNanoseconds(round(seconds * 1e9))
    return answer


def timestamp(micros: int) -> timestamp_pb2.Timestamp:
    seconds, rest = divmod(micros, 1_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=rest * 1000)


def encode_event(event: RecordedEvent) -> event_pb2.Event:
    encoded = event_pb2.Event()
    encode_event_into(encoded, event)
    return encoded


def encode_event_into(encoded: event_pb2.Event, event: RecordedEvent) -> None:
    """Fill ``encoded``, a fresh message (often a new element of a
    response's repeated field: building an Event apart and adding it would
    copy it), with ``event``."""
    encoded.event_id = event.event_id
    encoded.aggregate_id = event.aggregate_id
    encoded.aggregate_type = event.aggregate_type
    encoded.version = event.version
    encoded.position = event.position
    # Each attribute of a upb message is a lookup by name and a call: the
    # sub-messages are taken once, and an empty string (proto3's default,
    # not on the wire either way) is not set at all. A catch-up spends a
    # third of its time in this function.
    seconds, micros = divmod(event.timestamp_us, 1_000_000)
    timestamp = encoded.timestamp
    timestamp.seconds = seconds
    if micros:
        timestamp.nanos = micros * 1000
    if event.origin:
        encoded.origin = event.origin
    if event.user_id:
        encoded.user_id = event.user_id
    if event.command_id:
        encoded.command_id = event.command_id
    if event.correlation_id:
        encoded.correlation_id = event.correlation_id
    if event.causation_id:
        encoded.causation_id = event.causation_id
    encoded.schema_version = event.schema_version
    encoded.event_type = event.event_type
    if event.metadata:
        encoded.metadata.update(event.metadata)
    if event.event_type == TOMBSTONE_EVENT_TYPE:
        encoded.deleted = True  # a tombstone's type is in the clear: forgotten since, it is still one
    if event.redacted:
        encoded.redacted = True
    else:
        payload = encoded.payload
        payload.type_url = TYPE_URL_PREFIX + event.event_type
        payload.value = event.payload
