-- Migration 20: what a subscription group did not process, counted per
-- segment beside acknowledged (grouping.py, SegmentCheckpoint): events its
-- consumers skipped (a nack with action SKIP, counted once the checkpoint
-- passes them, or a replayed parked event skipped) and parked events an
-- operator dismissed (DismissParked). Each event counts once, in one of
-- acknowledged, skipped, dismissed or the parked rows. Columns with a
-- default: no table rewrite, and an older replica's code (which reads the
-- columns it names) runs on as before, leaving its own skips and
-- dismissals uncounted.
-- additive
ALTER TABLE chronicle.group_segments ADD COLUMN skipped bigint NOT NULL DEFAULT 0;
ALTER TABLE chronicle.group_segments ADD COLUMN dismissed bigint NOT NULL DEFAULT 0;
