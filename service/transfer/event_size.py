"""An imported event must be one a command could have produced: no larger
than the server's largest event (``--max-event-bytes``, measured as a
command's events are: ``RecordedEvent.stored_size``, the payload in the
clear). A larger one would be written, and then every page that holds it
(a read, a subscription's catch-up, a group's delivery) would be larger
than a gRPC message may be, for ever. So it is a bad record, refused
before its batch is written, naming the record, its size and the limit.
"""

from __future__ import annotations

from service.errors import FieldViolation, InvalidInput
from service.store.encryption import MAGIC, NONCE_BYTES, TAG_BYTES, is_sealed
from service.store.records import RecordedEvent
from service.transfer.records import BAD_RECORD

# What sealing at rest adds to a payload: a command's event was measured before it.
_SEALING_BYTES = len(MAGIC) + NONCE_BYTES + TAG_BYTES


def event_size(event: RecordedEvent) -> int:
    """``event``'s size as a command's event is measured (before sealing)."""
    size = event.stored_size()
    return size - _SEALING_BYTES if is_sealed(event.payload) else size


def check_event_size(event: RecordedEvent, index: int, max_event_bytes: int) -> None:
    """Raise BAD_RECORD if ``event`` (record ``index``, as it came: not yet
    marked as imported) is larger than ``max_event_bytes``."""
    size = event_size(event)
    if size <= max_event_bytes:
        return
    why = (
        f"event {event.event_id} (aggregate {event.aggregate_id!r}, version {event.version}) is {size} bytes"
        f" (payload and metadata); events are limited to {max_event_bytes} bytes (--max-event-bytes), and a"
        " larger one could never be sent to a reader"
    )
    raise InvalidInput(
        f"record[{index}]: {why}. Split it into smaller events in the conversion, or import into a server with a"
        " larger --max-event-bytes (and --max-message-bytes). The import stopped here, before writing this"
        " record's batch",
        reason=BAD_RECORD,
        violations=(FieldViolation(f"record[{index}].event.event.payload", why),),
        metadata={
            "record": str(index),
            "event_id": event.event_id,
            "size": str(size),
            "max_event_bytes": str(max_event_bytes),
        },
    )
