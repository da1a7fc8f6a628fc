-- Migration 23: a document's due time (microseconds since the Unix epoch),
-- set on a reaction's deadlines (processing/deadlines.py) and NULL on every
-- other document. The runner reads a reaction's due deadlines soonest first,
-- and a status call counts them, over this index of those alone
-- (ProjectionStore.due_documents, due_summary). Partial: the other
-- documents' writes do not maintain it (their due_us stays NULL: a HOT
-- update stays one). A nullable column without a default: no table rewrite;
-- older code ignores it.
-- additive
ALTER TABLE chronicle.projection_documents ADD COLUMN due_us bigint;
CREATE INDEX projection_documents_due ON chronicle.projection_documents (projection, due_us)
    WHERE due_us IS NOT NULL;
