-- Migration 5: projections (read models kept by plugins). A batch's
-- document changes and the checkpoint move commit in one transaction.

CREATE TABLE chronicle.projection_checkpoints (
    name            text        PRIMARY KEY,
    position        bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE chronicle.projection_documents (
    projection      text        NOT NULL,
    key             text        NOT NULL,
    type_name       text        NOT NULL,
    data            bytea       NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, key)
);
