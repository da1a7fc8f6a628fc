-- Chronicle's SQLite schema, version 13 -> 14: leases, by which the server
-- processes that share one file share out their work, as replicas on
-- PostgreSQL do (its migration 10; service/cluster/leases.py): the
-- partitions, the projections and reactions (one process runs each), and
-- each subscription group's segments (one consumer holds each, whichever
-- process it is connected to). A member is live in its group until
-- expires_at_us; a lease is held by owner until its expires_at_us unless
-- renewed (microseconds since the epoch, the machine's clock: every process
-- on the file runs on the one machine). epoch counts the changes of a
-- lease's holder: the epoch a holder took a lease at is its fencing token.
-- Before this version each process held every lease itself and wrote none:
-- a server of an older version on this file still does, and ignores these
-- tables.
-- additive

CREATE TABLE IF NOT EXISTS lease_members (
    lease_group     TEXT    NOT NULL,
    member_id       TEXT    NOT NULL,
    address         TEXT    NOT NULL,
    expires_at_us   INTEGER NOT NULL,
    PRIMARY KEY (lease_group, member_id)
);

CREATE TABLE IF NOT EXISTS leases (
    lease_group     TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    owner           TEXT,
    epoch           INTEGER NOT NULL DEFAULT 0,
    expires_at_us   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (lease_group, name)
);

CREATE INDEX IF NOT EXISTS leases_by_owner ON leases (lease_group, owner);
