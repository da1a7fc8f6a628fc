-- Migration 28: the version of a projection's declaration
-- (plugin.projection(..., version=N)) that its documents were built by,
-- kept with its checkpoint: a runner whose declared version differs does
-- not apply the log on top of documents of another meaning; it stops,
-- PROJECTION_VERSION_CHANGED, until the projection is rebuilt (which
-- records the new version), or rebuilds it itself (rebuild_on_change).
-- A checkpoint stored before (or written by an older server, which does
-- not know the column) counts as version 1, the declaration's default.
-- additive
ALTER TABLE chronicle.projection_checkpoints ADD COLUMN version integer NOT NULL DEFAULT 1;
