-- Chronicle's PostgreSQL schema, migration 3: the audit log and the data keys
-- of encryption at rest.

-- Who sent each recorded command, for whom and from where (recorded_at is
-- when it was decided): written with the events, in one transaction.
ALTER TABLE chronicle.commands
    ADD COLUMN principal text NOT NULL DEFAULT '',
    ADD COLUMN user_id   text NOT NULL DEFAULT '',
    ADD COLUMN origin    text NOT NULL DEFAULT '';
CREATE INDEX commands_by_time ON chronicle.commands (recorded_at);

-- Commands refused before a handler saw them (authentication, policy,
-- malformed input, overload). Append-only; a command id may appear often.
CREATE TABLE chronicle.refusals (
    id              bigserial   PRIMARY KEY,
    recorded_at     timestamptz NOT NULL,
    command_id      text        NOT NULL,
    command_type    text        NOT NULL,
    aggregate_id    text        NOT NULL,
    principal       text        NOT NULL,
    user_id         text        NOT NULL,
    origin          text        NOT NULL,
    reason          text        NOT NULL,
    message         text        NOT NULL
);
CREATE INDEX refusals_by_time ON chronicle.refusals (recorded_at);

-- One data key per aggregate, wrapped by a master key. Forgetting erases the
-- key and keeps the row as a tombstone, so no new key is made for it.
CREATE TABLE chronicle.data_keys (
    aggregate_id    text        PRIMARY KEY,
    master_key_id   text,
    wrapped_key     bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    forgotten_at    timestamptz,
    CHECK ((wrapped_key IS NULL) = (forgotten_at IS NOT NULL))
);
