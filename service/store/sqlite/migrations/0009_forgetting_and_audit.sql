-- Chronicle's SQLite schema, version 8 -> 9: what forgetting an aggregate
-- reaches beyond its key.

-- The aggregates each read-model document is derived from (its subjects):
-- forgetting one deletes the document, in the forget's transaction.
CREATE TABLE IF NOT EXISTS projection_subjects (
    projection      TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    subject         TEXT    NOT NULL,
    PRIMARY KEY (projection, key, subject)
);
CREATE INDEX IF NOT EXISTS projection_subjects_by_subject ON projection_subjects (subject);

-- The audit's own entries say whether they are a dry run's outcome, from
-- which network address the call came, and how many refusals they stand for
-- (a flood of refusals is sampled, not recorded one by one).
ALTER TABLE refusals ADD COLUMN dry_run INTEGER NOT NULL DEFAULT 0;
ALTER TABLE refusals ADD COLUMN peer TEXT NOT NULL DEFAULT '';
ALTER TABLE refusals ADD COLUMN occurrences INTEGER NOT NULL DEFAULT 1;
