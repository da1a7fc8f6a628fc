-- Chronicle's SQLite schema, version 1. Applied once; PRAGMA user_version
-- records it. Timestamps are microseconds since the Unix epoch (UTC).

CREATE TABLE IF NOT EXISTS events (
    position        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT    NOT NULL UNIQUE,
    aggregate_id    TEXT    NOT NULL,
    aggregate_type  TEXT    NOT NULL,
    version         INTEGER NOT NULL CHECK (version > 0),
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    payload         BLOB    NOT NULL,
    metadata        TEXT    NOT NULL,
    command_id      TEXT    NOT NULL,
    user_id         TEXT    NOT NULL,
    origin          TEXT    NOT NULL,
    correlation_id  TEXT    NOT NULL,
    causation_id    TEXT    NOT NULL,
    recorded_at_us  INTEGER NOT NULL,
    -- The concurrency check the database enforces: one event per version.
    UNIQUE (aggregate_id, version)
);

CREATE TABLE IF NOT EXISTS commands (
    command_id      TEXT    PRIMARY KEY,
    aggregate_id    TEXT    NOT NULL,
    command_type    TEXT    NOT NULL,
    fingerprint     BLOB    NOT NULL,
    first_version   INTEGER NOT NULL,
    last_version    INTEGER NOT NULL,
    rejection       TEXT
);

CREATE TABLE IF NOT EXISTS snapshots (
    aggregate_id    TEXT    PRIMARY KEY,
    aggregate_type  TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    state_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    state           BLOB    NOT NULL
);
