-- Chronicle's SQLite schema, version 16 -> 17: what a subscription group did
-- not process, counted per segment beside acknowledged (grouping.py,
-- SegmentCheckpoint): events its consumers skipped (a nack with action SKIP,
-- counted once the checkpoint passes them, or a replayed parked event
-- skipped) and parked events an operator dismissed (DismissParked). Each
-- event counts once, in one of acknowledged, skipped, dismissed or the
-- parked rows. Columns with a default: a server of an older version on this
-- file runs on as before, leaving its own skips and dismissals uncounted.
-- additive
ALTER TABLE group_segments ADD COLUMN skipped INTEGER NOT NULL DEFAULT 0;
ALTER TABLE group_segments ADD COLUMN dismissed INTEGER NOT NULL DEFAULT 0;
