-- Chronicle's SQLite schema, version 9 -> 10: subscription groups
-- (service/store/grouping.py): each group's settings, one checkpoint per
-- segment (the contiguous acknowledged prefix and how many events it
-- acknowledged), and the events it parked. The leases by which consumers
-- hold segments are the process's own (one process serves every consumer).

CREATE TABLE IF NOT EXISTS subscription_groups (
    name                    TEXT    PRIMARY KEY,
    filter                  TEXT    NOT NULL,
    start_position          INTEGER NOT NULL,
    segments                INTEGER NOT NULL,
    max_attempts            INTEGER NOT NULL,
    retry_backoff_ms        INTEGER NOT NULL,
    max_retry_backoff_ms    INTEGER NOT NULL,
    ack_timeout_ms          INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS group_segments (
    group_name      TEXT    NOT NULL,
    segment         INTEGER NOT NULL,
    position        INTEGER NOT NULL,
    acknowledged    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (group_name, segment)
);

CREATE TABLE IF NOT EXISTS group_parked (
    group_name      TEXT    NOT NULL,
    event_id        TEXT    NOT NULL,
    position        INTEGER NOT NULL,
    segment         INTEGER NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    reason          TEXT    NOT NULL,
    replaying       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (group_name, event_id)
);

CREATE INDEX IF NOT EXISTS group_parked_by_position ON group_parked (group_name, position);
