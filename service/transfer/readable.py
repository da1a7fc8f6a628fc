"""Whether the loaded plugins can read an imported event, checked as it comes.

An event that no plugin can apply breaks its aggregate for good: every
command and GetAggregate of it fails INTERNAL, and every subscriber that
passes it stops there. So an import refuses, naming the record, an event
whose aggregate type no loaded plugin declares (UNKNOWN_AGGREGATE_TYPE), an
event type that neither a plugin declares nor an upcaster reads
(UNKNOWN_EVENT_TYPE), one that belongs to another aggregate type
(AGGREGATE_TYPE_MISMATCH: a plugin applies an event only to its own
aggregates), and a schema version the plugin cannot read
(SCHEMA_VERSION_TOO_NEW; UNSUPPORTED_SCHEMA_VERSION: older, and no upcaster
reads it), the reasons a reader would fail it with (processing/upcasting.py);
and a payload in the clear at the plugin's schema that does not parse as
its type (BAD_RECORD, as a snapshot's state that does not parse).
A retired stored type, one a plugin still upcasts, is read as what it
becomes, so it counts as its aggregate type's. A deleted aggregate's
tombstone belongs to every aggregate type.

Which plugins decide: the server's own, for ``ImportLog``; for ``chronicle
import --database-url``, the ones the CLI loads as a server would (``chronicle
plugins`` lists them).
"""

from __future__ import annotations

from google.protobuf.message import DecodeError, Message

from service.errors import FieldViolation, InvalidInput
from service.plugins.registry import Registry
from service.store.encryption import is_sealed
from service.store.records import RecordedEvent, is_tombstone
from service.transfer.records import BAD_RECORD


def check_readable(registry: Registry, event: RecordedEvent, *, index: int) -> None:
    """Raise ``InvalidInput`` naming record ``index`` if ``registry``'s
    plugins cannot read ``event``."""
    where = f"record[{index}].event.event"
    aggregate = registry.aggregate(event.aggregate_type)
    if aggregate is None:
        raise _refusal(
            event,
            index,
            f"{where}.aggregate_type",
            f"no loaded plugin declares aggregate type {event.aggregate_type!r} (load the plugin that does, or leave"
            " the aggregate out of the import: --leave-out AGGREGATE)",
            "UNKNOWN_AGGREGATE_TYPE",
        )
    if is_tombstone(event):
        return
    spec = registry.event(event.event_type)
    upcaster = registry.upcaster(event.event_type, event.schema_version)
    owner = spec.aggregate if spec is not None else upcaster.aggregate if upcaster is not None else None
    if owner is None:
        if event.event_type in registry.upcast_types:
            raise _refusal(
                event,
                index,
                f"{where}.schema_version",
                f"no upcaster reads {event.event_type} v{event.schema_version}",
                "UNSUPPORTED_SCHEMA_VERSION",
            )
        raise _refusal(
            event,
            index,
            f"{where}.event_type",
            f"no loaded plugin declares or upcasts event type {event.event_type}",
            "UNKNOWN_EVENT_TYPE",
        )
    if owner.name != event.aggregate_type:
        raise _refusal(
            event,
            index,
            f"{where}.aggregate_type",
            f"{event.event_type} is an event of aggregate type {owner.name!r}, not of {event.aggregate_type!r}: the"
            f" plugin of {event.aggregate_type!r} cannot apply it (aggregate ids are one namespace across aggregate"
            " types: give each aggregate its own id)",
            "AGGREGATE_TYPE_MISMATCH",
        )
    if spec is not None and event.schema_version == spec.schema_version:
        _check_parses(event, spec.message_type, index, f"{where}.payload")
        return
    if spec is None or upcaster is not None:
        return
    if event.schema_version > spec.schema_version:
        raise _refusal(
            event,
            index,
            f"{where}.schema_version",
            f"{event.event_type} v{event.schema_version} is newer than the plugin's v{spec.schema_version}",
            "SCHEMA_VERSION_TOO_NEW",
        )
    raise _refusal(
        event,
        index,
        f"{where}.schema_version",
        f"no upcaster reads {event.event_type} v{event.schema_version} (the plugin's is v{spec.schema_version})",
        "UNSUPPORTED_SCHEMA_VERSION",
    )


def _check_parses(event: RecordedEvent, message_type: type[Message], index: int, field: str) -> None:
    """A payload in the clear at the plugin's schema must parse as its
    type (what an upcaster reads is the upcaster's to judge; a sealed one
    is opened only above the store)."""
    if is_sealed(event.payload):
        return
    try:
        message_type.FromString(event.payload)
    except DecodeError:
        raise _refusal(event, index, field, f"the payload does not parse as {event.event_type}", BAD_RECORD) from None


def _refusal(event: RecordedEvent, index: int, field: str, why: str, reason: str) -> InvalidInput:
    message = (
        f"record[{index}]: event {event.event_id} (aggregate {event.aggregate_id!r}, version {event.version}) cannot be"
        f" imported: {why}. The import stopped here, before writing this record's batch"
    )
    return InvalidInput(
        message,
        reason=reason,
        violations=(FieldViolation(field, why),),
        metadata={
            "record": str(index),
            "event_id": event.event_id,
            "aggregate_id": event.aggregate_id,
            "aggregate_type": event.aggregate_type,
            "event_type": event.event_type,
        },
    )
