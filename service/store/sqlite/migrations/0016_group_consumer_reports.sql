-- Chronicle's SQLite schema, version 15 -> 16: what each consumer of a
-- subscription group says of itself at each heartbeat (grouping.py,
-- ConsumerReport): the server process it is connected to (member id and
-- API address), its events in flight, when it last acked or nacked
-- (microseconds since the epoch, the machine's clock, as the leases of
-- version 14). Kept in the file so that every process on it shows every
-- consumer; a consumer's last report (reported_at_us) also tells one that
-- went silent while its lease still holds its segments. Read only beside a
-- live member of the group's lease group; forgotten an hour after the last
-- report, deleted with the group. A server of an older version neither
-- writes nor reads it.
-- additive

CREATE TABLE IF NOT EXISTS group_consumer_reports (
    group_name      TEXT    NOT NULL,
    member_id       TEXT    NOT NULL,
    replica_id      TEXT    NOT NULL,
    replica_address TEXT    NOT NULL,
    in_flight       INTEGER NOT NULL,
    answered_at_us  INTEGER,
    reported_at_us  INTEGER NOT NULL,
    PRIMARY KEY (group_name, member_id)
);
