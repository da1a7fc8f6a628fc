-- Chronicle's PostgreSQL schema, migration 1.

CREATE TABLE chronicle.events (
    -- Global position, assigned under the lock on chronicle.log_head (see
    -- store.py): positions become visible in the order they were assigned.
    position        bigint      PRIMARY KEY,
    event_id        uuid        NOT NULL UNIQUE,
    aggregate_id    text        NOT NULL,
    aggregate_type  text        NOT NULL,
    version         bigint      NOT NULL CHECK (version > 0),
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL,
    payload         bytea       NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}',
    command_id      text        NOT NULL,
    user_id         text        NOT NULL,
    origin          text        NOT NULL,
    correlation_id  text        NOT NULL,
    causation_id    text        NOT NULL,
    recorded_at     timestamptz NOT NULL,
    -- The optimistic concurrency check, enforced by the database: one event
    -- per version of an aggregate, whichever replica writes it.
    CONSTRAINT events_aggregate_version_key UNIQUE (aggregate_id, version)
);

-- One row: the last position handed out. Appends lock it for the rest of
-- their transaction, which makes commit order equal position order.
CREATE TABLE chronicle.log_head (
    id              boolean     PRIMARY KEY DEFAULT true CHECK (id),
    last_position   bigint      NOT NULL
);
INSERT INTO chronicle.log_head (last_position) VALUES (0);

CREATE TABLE chronicle.commands (
    command_id      text        PRIMARY KEY,
    aggregate_id    text        NOT NULL,
    command_type    text        NOT NULL,
    fingerprint     bytea       NOT NULL,
    first_version   bigint      NOT NULL,
    last_version    bigint      NOT NULL,
    rejection       jsonb,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE chronicle.snapshots (
    aggregate_id    text        PRIMARY KEY,
    aggregate_type  text        NOT NULL,
    version         bigint      NOT NULL,
    state_type      text        NOT NULL,
    schema_version  integer     NOT NULL,
    state           bytea       NOT NULL,
    taken_at        timestamptz NOT NULL DEFAULT now()
);
