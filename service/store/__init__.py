"""Event stores: the protocol and its adapters (memory, SQLite, PostgreSQL)."""

from service.store.base import AggregateQuery, AuditQuery, Store, StoreAdapter
from service.store.factory import open_store
from service.store.records import (
    AggregateHead,
    AuditEntry,
    ClaimChange,
    CommandRecord,
    DataKey,
    NewEvent,
    RecordedEvent,
    Rejection,
    Snapshot,
)

__all__ = [
    "AggregateHead",
    "AggregateQuery",
    "AuditEntry",
    "AuditQuery",
    "ClaimChange",
    "CommandRecord",
    "DataKey",
    "NewEvent",
    "RecordedEvent",
    "Rejection",
    "Snapshot",
    "Store",
    "StoreAdapter",
    "open_store",
]
