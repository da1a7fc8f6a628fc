-- Chronicle's SQLite schema, version 17 -> 18: each subscription group's
-- max_unanswered_timeouts (grouping.py, GroupSpec): a consumer whose
-- deliveries time out that many times in a row, with no ack or nack from it,
-- is cut and its segments go to the group's other consumers
-- (service/groups.py); 0: never. NULL for groups created before, read as the
-- default (3); a server of an older version on this file ignores it.
-- additive
ALTER TABLE subscription_groups ADD COLUMN max_unanswered_timeouts INTEGER;
