"""The Event message a stored event becomes (service/api/codec.py): every
field as stored, whichever are empty, at any timestamp. ``encode_event_into``
leaves empty strings and zero nanoseconds unset (proto3's defaults, not on
the wire either way); the messages must still equal one built whole."""

from __future__ import annotations

import itertools

import pytest
from google.protobuf import any_pb2, timestamp_pb2

from chronicle.v1 import event_pb2
from service.api.codec import TYPE_URL_PREFIX, encode_event
from service.store.records import TOMBSTONE_EVENT_TYPE, RecordedEvent


def reference(event: RecordedEvent) -> event_pb2.Event:
    seconds, micros = divmod(event.timestamp_us, 1_000_000)
    return event_pb2.Event(
        event_id=event.event_id,
        aggregate_id=event.aggregate_id,
        aggregate_type=event.aggregate_type,
        version=event.version,
        position=event.position,
        timestamp=timestamp_pb2.Timestamp(seconds=seconds, nanos=micros * 1000),
        origin=event.origin,
        user_id=event.user_id,
        command_id=event.command_id,
        correlation_id=event.correlation_id,
        causation_id=event.causation_id,
        schema_version=event.schema_version,
        event_type=event.event_type,
        metadata=dict(event.metadata),
        redacted=event.redacted,
        deleted=event.event_type == TOMBSTONE_EVENT_TYPE and not event.redacted,
        payload=None
        if event.redacted
        else any_pb2.Any(type_url=TYPE_URL_PREFIX + event.event_type, value=event.payload),
    )


def stored(texts: str, timestamp_us: int, **rest: object) -> RecordedEvent:
    fields: dict[str, object] = {
        "event_id": "e-1",
        "aggregate_id": "acc-1",
        "aggregate_type": "Account",
        "version": 3,
        "position": 2**40 + 7,
        "event_type": "bank.v1.MoneyDeposited",
        "schema_version": 1,
        "payload": b"\x08\x05",
        "timestamp_us": timestamp_us,
        "command_id": texts,
        "user_id": texts,
        "origin": texts,
        "correlation_id": texts,
        "causation_id": texts,
        "metadata": {},
    }
    fields.update(rest)
    return RecordedEvent(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("texts", "timestamp_us"),
    list(itertools.product(["", "c-1", "ü-√"], [0, 1_700_000_000_000_000, 1_700_000_000_123_456, 999_999])),
)
def test_an_event_is_encoded_with_every_field_as_stored(texts: str, timestamp_us: int) -> None:
    event = stored(texts, timestamp_us)
    encoded = encode_event(event)
    assert encoded == reference(event)
    assert encoded.SerializeToString(deterministic=True) == reference(event).SerializeToString(deterministic=True)


@pytest.mark.parametrize(
    "rest",
    [
        {"metadata": {"tenant": "t-1", "": "empty key"}},
        {"redacted": True, "payload": b""},
        {"event_type": TOMBSTONE_EVENT_TYPE, "payload": b"\x0a\x01x"},
        {"payload": b""},
        {"schema_version": 0, "version": 1},
    ],
    ids=["metadata", "redacted", "tombstone", "empty payload", "zero schema"],
)
def test_metadata_redaction_and_tombstones_are_encoded(rest: dict[str, object]) -> None:
    event = stored("x", 1_700_000_000_000_001, **rest)
    assert encode_event(event) == reference(event)
