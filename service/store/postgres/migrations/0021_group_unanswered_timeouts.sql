-- Migration 21: each subscription group's max_unanswered_timeouts
-- (grouping.py, GroupSpec): a consumer whose deliveries time out that many
-- times in a row, with no ack or nack from it, is cut and its segments go to
-- the group's other consumers (service/groups.py); 0: never. NULL for
-- groups created before, read as the default (3). A nullable column
-- without a default: no table rewrite; older code ignores it.
-- additive
ALTER TABLE chronicle.subscription_groups ADD COLUMN max_unanswered_timeouts integer;
