-- Migration 10: leases, by which live replicas share out work
-- (service/cluster/leases.py): the partitions of the aggregate hash space
-- (which replica clients should send an aggregate's commands to) and the
-- projections (which replica runs each). A member is live in its group
-- until expires_at; a lease is held by owner until its expires_at, unless
-- renewed. epoch counts the changes of a lease's holder: the epoch a holder
-- took a lease at is its fencing token (a projection's commit checks it).

CREATE TABLE chronicle.lease_members (
    lease_group     text        NOT NULL,
    member_id       text        NOT NULL,
    address         text        NOT NULL,
    joined_at       timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (lease_group, member_id)
);

CREATE TABLE chronicle.leases (
    lease_group     text        NOT NULL,
    name            text        NOT NULL,
    owner           text,
    epoch           bigint      NOT NULL DEFAULT 0,
    expires_at      timestamptz NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (lease_group, name)
);

CREATE INDEX leases_by_owner ON chronicle.leases (lease_group, owner);
