-- Chronicle's SQLite schema, version 7 -> 8: events a projection parked
-- (its handler kept failing on them and its plugin declared
-- on_failure="park"), recorded in the commit that moves its checkpoint
-- past them. Documents are listed by key range on their primary key
-- (BINARY collation: code point order), which needs no new index.

CREATE TABLE IF NOT EXISTS projection_parked_events (
    projection      TEXT    NOT NULL,
    position        INTEGER NOT NULL,
    event_id        TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    error           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    parked_at_us    INTEGER NOT NULL,
    PRIMARY KEY (projection, position, event_id)
);
