"""Event ids are UUIDv7: valid UUIDs of version 7, time-ordered, unique."""

from __future__ import annotations

import time
import uuid

from service.processing.ids import EventIds


def test_an_event_id_is_a_version_7_uuid_of_the_current_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    made = uuid.UUID(EventIds().next())
    after = time.time_ns() // 1_000_000
    assert made.version == 7
    assert made.variant == uuid.RFC_4122
    assert before <= made.int >> 80 <= after


def test_ids_of_one_process_increase_even_within_a_millisecond() -> None:
    ids = EventIds()
    made = [ids.next() for _ in range(20_000)]  # thousands share a millisecond
    assert made == sorted(made)
    assert len(set(made)) == len(made)


def test_a_full_counter_borrows_the_next_millisecond() -> None:
    ids = EventIds()
    first = uuid.UUID(ids.next())
    # As if 4,095 more ids had been made in a millisecond still to come (the
    # clock cannot have reached it by the next call).
    ids._last_ms = (first.int >> 80) + 60_000
    ids._counter = 0xFFF
    borrowed = uuid.UUID(ids.next())
    assert borrowed.int >> 80 == (first.int >> 80) + 60_001
    assert (borrowed.int >> 64) & 0xFFF == 0
    assert str(borrowed) > str(first)
