-- Chronicle's SQLite schema, version 3 -> 4: reading the global log by
-- aggregate type or event type without scanning every event.

CREATE INDEX IF NOT EXISTS events_by_aggregate_type ON events (aggregate_type, position);
CREATE INDEX IF NOT EXISTS events_by_event_type ON events (event_type, position);
