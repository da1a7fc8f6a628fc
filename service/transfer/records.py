"""Store records as export records and back.

Everything is carried as the store holds it: a payload sealed by
encryption at rest travels sealed (``ExportedEvent.sealed_payload``), one in
the clear as the bytes of its ``Any``, never decoded and encoded again, so
an import writes the very bytes the export read. Reading a record back
checks what the store relies on (ids, versions, times) and refuses a record
that lacks it (INVALID_ARGUMENT, BAD_RECORD, naming the record and field).
"""

from __future__ import annotations

import uuid

from google.protobuf import timestamp_pb2

from chronicle.v1 import event_pb2, export_pb2
from service.errors import InvalidInput
from service.store.encryption import is_sealed
from service.store.records import CommandRecord, DataKey, HeldClaim, RecordedEvent, Rejection, Snapshot

TYPE_URL_PREFIX = "type.googleapis.com/"
BAD_RECORD = "BAD_RECORD"
# Times an export may carry: 0001-01-01 to 9999-12-31, as Timestamp allows.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


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


def _bad(where: str, description: str) -> InvalidInput:
    return InvalidInput.for_field(where, description, reason=BAD_RECORD)


def _text(where: str, value: str) -> str:
    if not value:
        raise _bad(where, "must not be empty")
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
    try:
        uuid.UUID(event.event_id)
    except ValueError:
        raise _bad(f"{where}.event.event_id", "must be a UUID") from None
    if not event.HasField("timestamp"):
        raise _bad(f"{where}.event.timestamp", "must be set")
    event_type = _text(f"{where}.event.event_type", event.event_type)
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
        aggregate_id=_text(f"{where}.event.aggregate_id", event.aggregate_id),
        aggregate_type=_text(f"{where}.event.aggregate_type", event.aggregate_type),
        version=_version(f"{where}.event.version", event.version),
        position=event.position,
        event_type=event_type,
        schema_version=event.schema_version,
        payload=payload,
        timestamp_us=_micros(f"{where}.event.timestamp", event.timestamp),
        command_id=event.command_id,
        user_id=event.user_id,
        origin=event.origin,
        correlation_id=event.correlation_id,
        causation_id=event.causation_id,
        metadata=dict(event.metadata),
    )


def stored_snapshot(exported: export_pb2.ExportedSnapshot, where: str) -> Snapshot:
    return Snapshot(
        aggregate_id=_text(f"{where}.aggregate_id", exported.aggregate_id),
        aggregate_type=_text(f"{where}.aggregate_type", exported.aggregate_type),
        version=_version(f"{where}.version", exported.version),
        state_type=_text(f"{where}.state_type", exported.state_type),
        schema_version=exported.schema_version,
        state=exported.state,
    )


def stored_claim(exported: export_pb2.ExportedClaim, where: str) -> HeldClaim:
    return HeldClaim(
        scope=_text(f"{where}.scope", exported.scope),
        value=_text(f"{where}.value", exported.value),
        aggregate_id=_text(f"{where}.aggregate_id", exported.aggregate_id),
    )


def stored_command(exported: export_pb2.ExportedCommand, where: str) -> CommandRecord:
    rejection = None
    if exported.HasField("rejection"):
        r = exported.rejection
        rejection = Rejection(
            kind=_text(f"{where}.rejection.kind", r.kind),
            reason=r.reason,
            message=r.message,
            metadata=dict(r.metadata),
            violations=tuple((v.field, v.description) for v in r.violations),
        )
    if exported.first_version > exported.last_version + 1 or exported.last_version >= 2**63:
        raise _bad(f"{where}.first_version", "must be at most last_version + 1")
    return CommandRecord(
        command_id=_text(f"{where}.command_id", exported.command_id),
        aggregate_id=_text(f"{where}.aggregate_id", exported.aggregate_id),
        command_type=exported.command_type,
        fingerprint=exported.fingerprint,
        first_version=exported.first_version,
        last_version=exported.last_version,
        rejection=rejection,
        principal=exported.principal,
        user_id=exported.user_id,
        origin=exported.origin,
        recorded_at_us=_micros(f"{where}.recorded_at", exported.recorded_at),
        issued_at_us=_micros(f"{where}.issued_at", exported.issued_at) if exported.HasField("issued_at") else 0,
    )


def stored_data_key(exported: export_pb2.ExportedDataKey, where: str) -> DataKey:
    aggregate_id = _text(f"{where}.aggregate_id", exported.aggregate_id)
    if exported.forgotten:
        if exported.wrapped_key or exported.master_key_id:
            raise _bad(f"{where}.wrapped_key", "must be empty for a forgotten aggregate")
        return DataKey(aggregate_id, None, None)
    if not exported.wrapped_key:
        raise _bad(f"{where}.wrapped_key", "must not be empty for a live key")
    return DataKey(aggregate_id, _text(f"{where}.master_key_id", exported.master_key_id), exported.wrapped_key)
