-- Chronicle's SQLite schema, version 1 -> 2: uniqueness claims, and a
-- snapshot history (one per version) so that past versions load from a
-- snapshot too.

-- One holder per (scope, value): the unique key is what makes a claim
-- exclusive, whatever the application checked before.
CREATE TABLE IF NOT EXISTS claims (
    scope           TEXT    NOT NULL,
    value           TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    PRIMARY KEY (scope, value)
);

CREATE TABLE snapshots_v2 (
    aggregate_id    TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    aggregate_type  TEXT    NOT NULL,
    state_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    state           BLOB    NOT NULL,
    PRIMARY KEY (aggregate_id, version)
);

INSERT INTO snapshots_v2 (aggregate_id, version, aggregate_type, state_type, schema_version, state)
    SELECT aggregate_id, version, aggregate_type, state_type, schema_version, state FROM snapshots;
DROP TABLE snapshots;
ALTER TABLE snapshots_v2 RENAME TO snapshots;
