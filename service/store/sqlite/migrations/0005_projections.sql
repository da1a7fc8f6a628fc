-- Chronicle's SQLite schema, version 4 -> 5: projections (read models kept
-- by plugins), their checkpoints and documents, committed together.

CREATE TABLE IF NOT EXISTS projection_checkpoints (
    name            TEXT    PRIMARY KEY,
    position        INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS projection_documents (
    projection      TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    type_name       TEXT    NOT NULL,
    data            BLOB    NOT NULL,
    PRIMARY KEY (projection, key)
);
