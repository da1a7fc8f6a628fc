"""Whether a stored event can be sent to a client at all.

A command's event is at most --max-event-bytes, a quarter of
--max-message-bytes, and a page of events ends with the one that brings
it to a quarter too: every page fits a message. A stored event can still
be larger (imported before imports held events to --max-event-bytes, or
written by a server with a larger limit): sent, it made gRPC end the call
with "Sent message larger than max", a RESOURCE_EXHAUSTED that clients
retry for ever, and a group consumer's stream broke at it again and again.
Such an event is refused by name instead (``EventTooLargeToSend``): an
event up to half the message limit is sent (with up to a quarter of other
events before it in its page, the message still fits), a larger one not.
"""

from __future__ import annotations

from service.errors import EventTooLargeToSend
from service.store.records import RecordedEvent


def sendable_event_bytes(max_message_bytes: int) -> int:
    """The largest stored event (``RecordedEvent.stored_size``) a server
    whose messages are at most ``max_message_bytes`` sends."""
    return max_message_bytes // 2


def check_sendable(event: RecordedEvent, max_event_bytes: int) -> None:
    """Raise ``EventTooLargeToSend`` if ``event`` is larger than
    ``max_event_bytes`` (``sendable_event_bytes``)."""
    size = event.stored_size()
    if size <= max_event_bytes:
        return
    raise EventTooLargeToSend(
        f"event {event.event_id} (aggregate {event.aggregate_id!r}, version {event.version}, position"
        f" {event.position}) is {size} bytes, more than this server sends in a message ({max_event_bytes} bytes:"
        " half its --max-message-bytes): it was stored under a larger limit, or imported before imports held"
        " events to --max-event-bytes. Read it from a server (and a client) with a larger --max-message-bytes,"
        " or delete the aggregate",
        metadata={
            "event_id": event.event_id,
            "aggregate_id": event.aggregate_id,
            "version": str(event.version),
            "position": str(event.position),
            "size": str(size),
            "max_sent_event_bytes": str(max_event_bytes),
        },
    )
