-- Chronicle's SQLite schema, version 2 -> 3: the audit log and encryption keys.

-- Who sent each recorded command, for whom, from where and when: with the
-- events in one transaction, so an accepted command is always audited.
ALTER TABLE commands ADD COLUMN principal TEXT NOT NULL DEFAULT '';
ALTER TABLE commands ADD COLUMN user_id TEXT NOT NULL DEFAULT '';
ALTER TABLE commands ADD COLUMN origin TEXT NOT NULL DEFAULT '';
ALTER TABLE commands ADD COLUMN recorded_at_us INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS commands_by_time ON commands (recorded_at_us);

-- Commands refused before a handler saw them (authentication, policy,
-- malformed input, overload). Append-only; a command id may appear often.
CREATE TABLE IF NOT EXISTS refusals (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    recorded_at_us  INTEGER NOT NULL,
    command_id      TEXT    NOT NULL,
    command_type    TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    principal       TEXT    NOT NULL,
    user_id         TEXT    NOT NULL,
    origin          TEXT    NOT NULL,
    reason          TEXT    NOT NULL,
    message         TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS refusals_by_time ON refusals (recorded_at_us);

-- One data key per aggregate, wrapped by a master key. Forgetting an
-- aggregate erases the key and keeps the row as a tombstone, so no new key
-- can be made for it.
CREATE TABLE IF NOT EXISTS data_keys (
    aggregate_id    TEXT    PRIMARY KEY,
    master_key_id   TEXT,
    wrapped_key     BLOB,
    created_at_us   INTEGER NOT NULL,
    forgotten_at_us INTEGER,
    CHECK ((wrapped_key IS NULL) = (forgotten_at_us IS NOT NULL))
);
