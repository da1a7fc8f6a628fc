"""Building store records in contract tests (and Chronicle's own tests)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping

from service.store.records import CommandRecord, NewEvent, RecordedEvent, Rejection


def new_event(
    event_type: str = "test.v1.Happened",
    *,
    aggregate_type: str = "Thing",
    payload: bytes = b"\x08\x01",
    origin: str = "tests",
    metadata: Mapping[str, str] | None = None,
    command_id: str = "",
    timestamp_us: int | None = None,
    schema_version: int = 1,
) -> NewEvent:
    return NewEvent(
        event_id=str(uuid.uuid4()),
        aggregate_type=aggregate_type,
        event_type=event_type,
        schema_version=schema_version,
        payload=payload,
        timestamp_us=time.time_ns() // 1000 if timestamp_us is None else timestamp_us,
        command_id=command_id,
        user_id="tester",
        origin=origin,
        correlation_id="corr",
        causation_id="cause",
        metadata=dict(metadata or {}),
    )


def command_record(
    aggregate_id: str,
    first: int,
    last: int,
    *,
    command_id: str | None = None,
    rejection: Rejection | None = None,
) -> CommandRecord:
    return CommandRecord(
        command_id=command_id or str(uuid.uuid4()),
        aggregate_id=aggregate_id,
        command_type="test.v1.Do",
        fingerprint=b"\x01" * 32,
        first_version=first,
        last_version=last,
        rejection=rejection,
    )


def recorded_event(
    aggregate_id: str,
    version: int,
    *,
    event_type: str = "test.v1.Happened",
    event_id: str | None = None,
    position: int = 0,
    timestamp_us: int = 1_700_000_000_000_000,
    payload: bytes = b"\x08\x01",
    metadata: Mapping[str, str] | None = None,
) -> RecordedEvent:
    """An event as another store recorded it (for imports)."""
    return RecordedEvent(
        event_id=event_id or str(uuid.uuid4()),
        aggregate_id=aggregate_id,
        aggregate_type="Thing",
        version=version,
        position=position,
        event_type=event_type,
        schema_version=1,
        payload=payload,
        timestamp_us=timestamp_us + version,
        command_id="cmd-" + aggregate_id,
        user_id="importer",
        origin="elsewhere",
        correlation_id="corr",
        causation_id="cause",
        metadata=dict(metadata or {}),
    )
