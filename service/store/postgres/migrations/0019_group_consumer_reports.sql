-- Migration 19: what each consumer of a subscription group says of itself
-- at each heartbeat (grouping.py, ConsumerReport): the replica it is
-- connected to (member id and API address), its events in flight, when it
-- last acked or nacked. Kept here so that every replica's console and
-- ListGroups show every consumer, not only those connected to it; a
-- consumer's last report (reported_at) also tells one that went silent
-- while its lease still holds its segments. Read only beside a live member
-- of the group's lease group (migration 10); forgotten an hour after the
-- last report, deleted with the group. A server of an older version
-- neither writes nor reads it.
-- additive
CREATE TABLE chronicle.group_consumer_reports (
    group_name      text        NOT NULL,
    member_id       text        NOT NULL,
    replica_id      text        NOT NULL,
    replica_address text        NOT NULL,
    in_flight       integer     NOT NULL,
    answered_at     timestamptz,
    reported_at     timestamptz NOT NULL,
    PRIMARY KEY (group_name, member_id)
);
