-- Migration 22: when each consumer of a subscription group joined it
-- (grouping.py, ConsumerReport.connected_ago), kept as its session's first
-- report said it, by the database's clock, so that every replica shows
-- each consumer's "connected since". NULL for a report written before, or
-- by a server of an older version, which ignores the column. A nullable
-- column without a default: no table rewrite.
-- additive
ALTER TABLE chronicle.group_consumer_reports ADD COLUMN connected_at timestamptz;
