"""Applying an ``AggregateQuery`` to events already in memory."""

from __future__ import annotations

from collections.abc import Sequence

from service.store.base import AggregateQuery
from service.store.records import RecordedEvent


def select_events(stream: Sequence[RecordedEvent], query: AggregateQuery) -> list[RecordedEvent]:
    """The events of one stream (in version order) that ``query`` asks for."""
    low = max(query.from_version, 1)
    high = query.to_version
    chosen = (
        e
        for e in (reversed(stream) if query.backwards else stream)
        if e.version >= low
        and (high is None or e.version <= high)
        and (query.origin is None or e.origin == query.origin)
        and (not query.event_types or e.event_type in query.event_types)
    )
    if query.limit is None:
        return list(chosen)
    result: list[RecordedEvent] = []
    for event in chosen:
        if len(result) >= query.limit:
            break
        result.append(event)
    return result
