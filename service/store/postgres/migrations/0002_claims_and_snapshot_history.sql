-- Chronicle's PostgreSQL schema, migration 2: uniqueness claims, and a
-- snapshot history (one per version) so that past versions load from a
-- snapshot too.

-- One holder per (scope, value): the primary key is what makes a claim
-- exclusive across replicas, whatever a handler checked before.
CREATE TABLE chronicle.claims (
    scope           text        NOT NULL,
    value           text        NOT NULL,
    aggregate_id    text        NOT NULL,
    claimed_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT claims_pkey PRIMARY KEY (scope, value)
);

ALTER TABLE chronicle.snapshots DROP CONSTRAINT snapshots_pkey;
ALTER TABLE chronicle.snapshots ADD CONSTRAINT snapshots_pkey PRIMARY KEY (aggregate_id, version);
