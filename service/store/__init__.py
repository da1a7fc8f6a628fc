"""Event stores: the protocol and its adapters (memory, SQLite, PostgreSQL)."""

from service.store.base import AggregateQuery, EventStore
from service.store.factory import open_store
from service.store.records import (
    AggregateHead,
    ClaimChange,
    CommandAlreadyRecorded,
    CommandRecord,
    NewEvent,
    RecordedEvent,
    Rejection,
    Snapshot,
)

__all__ = [
    "AggregateHead",
    "AggregateQuery",
    "ClaimChange",
    "CommandAlreadyRecorded",
    "CommandRecord",
    "EventStore",
    "NewEvent",
    "RecordedEvent",
    "Rejection",
    "Snapshot",
    "open_store",
]
