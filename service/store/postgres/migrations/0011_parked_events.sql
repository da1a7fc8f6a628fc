-- Migration 11: read models you can query.
--
-- Documents are listed by key prefix as a range of keys on the primary key
-- (key >= prefix AND key < the prefix's end): that range is the prefix's
-- only in code point order, so keys compare in the "C" collation (UTF-8
-- bytes), as SQLite's BINARY does, whatever the database's default. The
-- primary key's index is rebuilt with it.
ALTER TABLE chronicle.projection_documents ALTER COLUMN key TYPE text COLLATE "C";

-- Events a projection parked (its handler kept failing on them and its
-- plugin declared on_failure="park"), recorded in the commit that moves its
-- checkpoint past them.
CREATE TABLE chronicle.projection_parked_events (
    projection      text        NOT NULL,
    position        bigint      NOT NULL,
    event_id        text        NOT NULL,
    event_type      text        NOT NULL,
    aggregate_id    text        NOT NULL,
    error           text        NOT NULL,
    attempts        integer     NOT NULL,
    parked_at_us    bigint      NOT NULL,
    PRIMARY KEY (projection, position, event_id)
);
