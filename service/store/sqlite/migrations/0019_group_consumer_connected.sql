-- Chronicle's SQLite schema, version 18 -> 19: when each consumer of a
-- subscription group joined it (grouping.py, ConsumerReport.connected_ago;
-- microseconds since the epoch, the machine's clock, as the reports of
-- version 16), kept as its session's first report said it, so that every
-- process on the file shows each consumer's "connected since". NULL for a
-- report written before, or by a server of an older version, which
-- ignores the column.
-- additive
ALTER TABLE group_consumer_reports ADD COLUMN connected_at_us INTEGER;
