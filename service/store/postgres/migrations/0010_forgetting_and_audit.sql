-- Migration 10: what forgetting an aggregate reaches beyond its key.

-- The aggregates each read-model document is derived from (its subjects):
-- forgetting one deletes the document, in the forget's transaction.
CREATE TABLE chronicle.projection_subjects (
    projection      text        NOT NULL,
    key             text        NOT NULL,
    subject         text        NOT NULL,
    PRIMARY KEY (projection, key, subject)
);
CREATE INDEX projection_subjects_by_subject ON chronicle.projection_subjects (subject);

-- The audit's own entries say whether they are a dry run's outcome, from
-- which network address the call came, and how many refusals they stand for
-- (a flood of refusals is sampled, not recorded one by one).
ALTER TABLE chronicle.refusals
    ADD COLUMN dry_run     boolean NOT NULL DEFAULT false,
    ADD COLUMN peer        text    NOT NULL DEFAULT '',
    ADD COLUMN occurrences bigint  NOT NULL DEFAULT 1;
