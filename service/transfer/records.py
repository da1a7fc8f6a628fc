"""Store records as export records and back.

Everything is carried as the store holds it: a payload sealed by
encryption at rest travels sealed (``ExportedEvent.sealed_payload``), one in
the clear as the bytes of its ``Any``, never decoded and encoded again, so
an import writes the very bytes the export read. Reading a record back
checks what the store relies on (ids, versions, times) and refuses a record
that lacks it (INVALID_ARGUMENT, BAD_RECORD, naming the record and field).

Identifiers are held to the rule the API holds commands to
(``service.values.id_problem``: printable, at most 200 characters), short
texts (user, origin, correlation) must be printable, and free texts
(refusal messages, metadata values, claimed values) must not hold NUL: what
a command could not have written, an import must not write either (a store
would take it, and the aggregate could then be neither addressed nor moved
to PostgreSQL, which stores no NUL).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from google.protobuf import timestamp_pb2

from chronicle.v1 import event_pb2, export_pb2
from service.errors import InvalidInput
from service.plugins.reactions import HOPS_KEY
from service.principal import tenant_problem
from service.store.encryption import CLAIMS_KEY_PREFIX, PROJECTION_KEY_PREFIX, is_sealed
from service.store.imported import IMPORTED, IMPORTED_KEY
from service.store.master_keys import TENANT_OWNED_MARK
from service.store.records import CommandRecord, DataKey, HeldClaim, RecordedEvent, Rejection, Snapshot
from service.values import id_problem

TYPE_URL_PREFIX = "type.googleapis.com/"
BAD_RECORD = "BAD_RECORD"
# Times an export may carry: 0001-01-01 to 9999-12-31, as Timestamp allows.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799
# Schema versions are stored in 32-bit signed columns.
_MAX_SCHEMA_VERSION = 2**31 - 1
# A metadata key, as the API bounds a command's (codec.MAX_METADATA_KEY).
_MAX_METADATA_KEY = 128


def timestamp(micros: int) -> timestamp_pb2.Timestamp:
    seconds, rest = divmod(micros, 1_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=rest * 1000)


def exported_event(event: RecordedEvent) -> export_pb2.ExportRecord:
    envelope = event_pb2.Event(
        event_id=event.event_id,
        aggregate_id=event.aggregate_id,
        aggregate_type=event.aggregate_type,
        version=event.version,
        position=event.position,
        timestamp=timestamp(event.timestamp_us),
        origin=event.origin,
        user_id=event.user_id,
        command_id=event.command_id,
        correlation_id=event.correlation_id,
        causation_id=event.causation_id,
        schema_version=event.schema_version,
        metadata=dict(event.metadata),
        event_type=event.event_type,
    )
    record = export_pb2.ExportRecord()
    if is_sealed(event.payload):
        record.event.sealed_payload = event.payload
    else:
        envelope.payload.type_url = TYPE_URL_PREFIX + event.event_type
        envelope.payload.value = event.payload
    record.event.event.CopyFrom(envelope)
    return record


def exported_snapshot(snapshot: Snapshot) -> export_pb2.ExportRecord:
    return export_pb2.ExportRecord(
        snapshot=export_pb2.ExportedSnapshot(
            aggregate_id=snapshot.aggregate_id,
            aggregate_type=snapshot.aggregate_type,
            version=snapshot.version,
            state_type=snapshot.state_type,
            schema_version=snapshot.schema_version,
            state=snapshot.state,
        )
    )


def exported_claim(claim: HeldClaim) -> export_pb2.ExportRecord:
    return export_pb2.ExportRecord(
        claim=export_pb2.ExportedClaim(scope=claim.scope, value=claim.value, aggregate_id=claim.aggregate_id)
    )


def exported_command(command: CommandRecord) -> export_pb2.ExportRecord:
    exported = export_pb2.ExportedCommand(
        command_id=command.command_id,
        aggregate_id=command.aggregate_id,
        command_type=command.command_type,
        fingerprint=command.fingerprint,
        first_version=command.first_version,
        last_version=command.last_version,
        principal=command.principal,
        user_id=command.user_id,
        origin=command.origin,
        recorded_at=timestamp(command.recorded_at_us),
    )
    if command.issued_at_us:
        exported.issued_at.CopyFrom(timestamp(command.issued_at_us))
    if command.rejection is not None:
        rejection = command.rejection
        exported.rejection.CopyFrom(
            export_pb2.ExportedRejection(
                kind=rejection.kind,
                reason=rejection.reason,
                message=rejection.message,
                metadata=rejection.metadata,
                violations=[export_pb2.ExportedViolation(field=f, description=d) for f, d in rejection.violations],
            )
        )
    return export_pb2.ExportRecord(command=exported)


def exported_data_key(key: DataKey) -> export_pb2.ExportRecord:
    return export_pb2.ExportRecord(
        data_key=export_pb2.ExportedDataKey(
            aggregate_id=key.aggregate_id,
            master_key_id=key.master_key_id or "",
            wrapped_key=key.wrapped or b"",
            forgotten=key.forgotten,
        )
    )


# -- back to store records, checked ------------------------------------------------


def end_record(counts: Mapping[str, int]) -> export_pb2.ExportRecord:
    """A stream's end, counting its records by kind (``WhichOneof``'s
    names; kinds it has none of may be missing)."""
    return export_pb2.ExportRecord(
        end=export_pb2.ExportEnd(
            events=counts.get("event", 0),
            snapshots=counts.get("snapshot", 0),
            claims=counts.get("claim", 0),
            commands=counts.get("command", 0),
            data_keys=counts.get("data_key", 0),
        )
    )


def _bad(where: str, description: str) -> InvalidInput:
    return InvalidInput.for_field(where, description, reason=BAD_RECORD)


def _text(where: str, value: str) -> str:
    if not value:
        raise _bad(where, "must not be empty")
    return value


def _id(where: str, value: str) -> str:
    problem = id_problem(value)
    if problem:
        raise _bad(where, problem)
    return value


def _short(where: str, value: str) -> str:
    """An optional short text (user, origin, correlation): printable."""
    if value and not value.isprintable():
        raise _bad(where, "must not contain control characters")
    return value


def _free(where: str, value: str) -> str:
    """A free text (a message, a metadata value): anything but NUL."""
    if "\x00" in value:
        raise _bad(where, "must not contain NUL")
    return value


def _metadata(where: str, metadata: Mapping[str, str]) -> dict[str, str]:
    for key, text in metadata.items():
        if id_problem(key, max_length=_MAX_METADATA_KEY):
            raise _bad(
                f"{where}[{key[:_MAX_METADATA_KEY]!r}]", f"keys must be 1 to {_MAX_METADATA_KEY} printable characters"
            )
        _free(f"{where}[{key!r}]", text)
    return dict(metadata)


# Metadata keys the server writes itself (as the API reserves them for
# commands: service.api.codec): a stream's event may carry only those it
# could have got from a Chronicle, with the values it writes.
_RESERVED_METADATA_PREFIX = "chronicle."


def _event_metadata(where: str, metadata: Mapping[str, str]) -> dict[str, str]:
    """An event's metadata: as ``_metadata``, and no key under the reserved
    ``chronicle.`` prefix (in any letter case) but the server's own, as a
    Chronicle export carries them: the import mark (``"true"``, the import
    adds it anyway) and a reaction's command's hop count (a whole number).
    A forged one would mean what the server's means (an event hidden from
    reactions, a chain of reactions cut short)."""
    checked = _metadata(where, metadata)
    for key, text in checked.items():
        if not key.lower().startswith(_RESERVED_METADATA_PREFIX):
            continue
        if key == IMPORTED_KEY and text == IMPORTED:
            continue
        if key == HOPS_KEY and text.isascii() and text.isdigit():
            continue
        raise InvalidInput.for_field(
            f"{where}[{key[:_MAX_METADATA_KEY]!r}]",
            f"is reserved: keys beginning with {_RESERVED_METADATA_PREFIX!r} are the server's own (only"
            f" {IMPORTED_KEY!r}: {IMPORTED!r} and {HOPS_KEY!r}: a whole number come from a Chronicle export); carry"
            " the old store's metadata under other keys",
            reason="INVALID_METADATA",
        )
    return checked


def _uuid(where: str, value: str) -> str:
    try:
        uuid.UUID(value)
    except ValueError:
        raise _bad(where, "must be a UUID") from None
    return value


def _micros(where: str, moment: timestamp_pb2.Timestamp) -> int:
    if not _MIN_SECONDS <= moment.seconds <= _MAX_SECONDS or not 0 <= moment.nanos < 1_000_000_000:
        raise _bad(where, "must be a time between 0001-01-01 and 9999-12-31")
    return moment.seconds * 1_000_000 + moment.nanos // 1000


def _version(where: str, value: int) -> int:
    if value < 1 or value >= 2**63:
        raise _bad(where, "must be between 1 and 2^63 - 1")
    return value


def stored_event(exported: export_pb2.ExportedEvent, where: str) -> RecordedEvent:
    event = exported.event
    _uuid(f"{where}.event.event_id", event.event_id)
    if not event.HasField("timestamp"):
        raise _bad(f"{where}.event.timestamp", "must be set")
    event_type = _id(f"{where}.event.event_type", event.event_type)
    # Version 1 is the first of every event type: an event of version 0 is
    # one no upcaster reads (its projections would fail it for ever).
    if not 1 <= event.schema_version <= _MAX_SCHEMA_VERSION:
        raise _bad(f"{where}.event.schema_version", f"must be between 1 and {_MAX_SCHEMA_VERSION}")
    if exported.sealed_payload:
        if event.HasField("payload"):
            raise _bad(f"{where}.sealed_payload", "must not be set beside event.payload")
        payload = exported.sealed_payload
    else:
        if event.payload.type_url.rpartition("/")[2] != event_type:
            raise _bad(f"{where}.event.payload", f"must be packed as {event_type}, the event's type")
        payload = event.payload.value
    return RecordedEvent(
        event_id=event.event_id,
        aggregate_id=_id(f"{where}.event.aggregate_id", event.aggregate_id),
        aggregate_type=_id(f"{where}.event.aggregate_type", event.aggregate_type),
        version=_version(f"{where}.event.version", event.version),
        position=event.position,
        event_type=event_type,
        schema_version=event.schema_version,
        payload=payload,
        timestamp_us=_micros(f"{where}.event.timestamp", event.timestamp),
        command_id=_short(f"{where}.event.command_id", event.command_id),
        user_id=_short(f"{where}.event.user_id", event.user_id),
        origin=_short(f"{where}.event.origin", event.origin),
        correlation_id=_short(f"{where}.event.correlation_id", event.correlation_id),
        causation_id=_short(f"{where}.event.causation_id", event.causation_id),
        metadata=_event_metadata(f"{where}.event.metadata", event.metadata),
    )


def stored_snapshot(exported: export_pb2.ExportedSnapshot, where: str) -> Snapshot:
    return Snapshot(
        aggregate_id=_id(f"{where}.aggregate_id", exported.aggregate_id),
        aggregate_type=_id(f"{where}.aggregate_type", exported.aggregate_type),
        version=_version(f"{where}.version", exported.version),
        state_type=_id(f"{where}.state_type", exported.state_type),
        schema_version=_schema_version(f"{where}.schema_version", exported.schema_version),
        state=exported.state,
    )


def _schema_version(where: str, value: int) -> int:
    if value > _MAX_SCHEMA_VERSION:
        raise _bad(where, f"must be at most {_MAX_SCHEMA_VERSION}")
    return value


def stored_claim(exported: export_pb2.ExportedClaim, where: str) -> HeldClaim:
    return HeldClaim(
        scope=_claim_scope(f"{where}.scope", exported.scope),
        value=_free(f"{where}.value", _text(f"{where}.value", exported.value)),
        aggregate_id=_id(f"{where}.aggregate_id", exported.aggregate_id),
    )


def _claim_scope(where: str, scope: str) -> str:
    """A scope as stored: a plugin's, or a tenant's of a scope unique per
    tenant (the scope, the mark, the tenant: service.claim_scopes)."""
    declared, mark, tenant = scope.partition(TENANT_OWNED_MARK)
    _id(where, declared)
    if mark and (problem := tenant_problem(tenant)):
        raise _bad(where, f"names a tenant that {problem}")
    return scope


def stored_command(exported: export_pb2.ExportedCommand, where: str) -> CommandRecord:
    rejection = None
    if exported.HasField("rejection"):
        r = exported.rejection
        rejection = Rejection(
            kind=_id(f"{where}.rejection.kind", r.kind),
            reason=_short(f"{where}.rejection.reason", r.reason),
            message=_free(f"{where}.rejection.message", r.message),
            metadata=_metadata(f"{where}.rejection.metadata", r.metadata),
            violations=tuple(
                (
                    _free(f"{where}.rejection.violations[{i}].field", v.field),
                    _free(f"{where}.rejection.violations[{i}].description", v.description),
                )
                for i, v in enumerate(r.violations)
            ),
        )
    # Versions first_version to last_version were appended; a command that
    # appended nothing has first_version = last_version + 1 (its aggregate's
    # next version then), never 0.
    if not 1 <= exported.first_version <= exported.last_version + 1 or exported.last_version >= 2**63:
        raise _bad(f"{where}.first_version", "must be between 1 and last_version + 1")
    return CommandRecord(
        command_id=_uuid(f"{where}.command_id", exported.command_id),
        aggregate_id=_id(f"{where}.aggregate_id", exported.aggregate_id),
        command_type=_id(f"{where}.command_type", exported.command_type),
        fingerprint=exported.fingerprint,
        first_version=exported.first_version,
        last_version=exported.last_version,
        rejection=rejection,
        principal=_short(f"{where}.principal", exported.principal),
        user_id=_short(f"{where}.user_id", exported.user_id),
        origin=_short(f"{where}.origin", exported.origin),
        recorded_at_us=_micros(f"{where}.recorded_at", exported.recorded_at),
        issued_at_us=_micros(f"{where}.issued_at", exported.issued_at) if exported.HasField("issued_at") else 0,
    )


def stored_data_key(exported: export_pb2.ExportedDataKey, where: str) -> DataKey:
    aggregate_id = exported.aggregate_id
    # The keys of claims and projections are held under names no aggregate
    # id can take: a control character, then what they are for.
    internal = aggregate_id.startswith((CLAIMS_KEY_PREFIX, PROJECTION_KEY_PREFIX))
    named = aggregate_id.partition(":")[2] if internal else aggregate_id
    if internal and TENANT_OWNED_MARK in named:
        # A tenant's key of a read model or of a claims scope unique per
        # tenant: the read model or scope, the mark, the tenant.
        named, _, tenant = named.partition(TENANT_OWNED_MARK)
        if problem := tenant_problem(tenant):
            raise _bad(f"{where}.aggregate_id", f"names a tenant that {problem}")
    _id(f"{where}.aggregate_id", named)
    if exported.forgotten:
        if exported.wrapped_key or exported.master_key_id:
            raise _bad(f"{where}.wrapped_key", "must be empty for a forgotten aggregate")
        return DataKey(aggregate_id, None, None)
    if not exported.wrapped_key:
        raise _bad(f"{where}.wrapped_key", "must not be empty for a live key")
    return DataKey(aggregate_id, _id(f"{where}.master_key_id", exported.master_key_id), exported.wrapped_key)
