-- Migration 12: what forgetting an aggregate reaches beyond its key.

-- The aggregates each read-model document is derived from (its subjects):
-- forgetting one deletes the documents that name it, in the forget's
-- transaction. In the document's own row, so that writing a document
-- writes its subjects at no extra cost (an update that leaves them as they
-- were stays a HOT update); found by the GIN index.
ALTER TABLE chronicle.projection_documents ADD COLUMN subjects text[] NOT NULL DEFAULT '{}';
CREATE INDEX projection_documents_by_subject ON chronicle.projection_documents USING gin (subjects);

-- The audit's own entries say whether they are a dry run's outcome, from
-- which network address the call came, and how many refusals they stand for
-- (a flood of refusals is sampled, not recorded one by one).
ALTER TABLE chronicle.refusals
    ADD COLUMN dry_run     boolean NOT NULL DEFAULT false,
    ADD COLUMN peer        text    NOT NULL DEFAULT '',
    ADD COLUMN occurrences bigint  NOT NULL DEFAULT 1;
