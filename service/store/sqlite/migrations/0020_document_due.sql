-- Chronicle's SQLite schema, version 19 -> 20: a document's due time
-- (microseconds since the Unix epoch), set on a reaction's deadlines
-- (processing/deadlines.py) and NULL on every other document. The runner
-- reads a reaction's due deadlines soonest first, and a status call counts
-- them, over this index of those alone (ProjectionStore.due_documents,
-- due_summary). Partial: the other documents' writes do not maintain it. A
-- nullable column without a default: no table rewrite; a server of an older
-- version on this file ignores it.
-- additive
ALTER TABLE projection_documents ADD COLUMN due_us INTEGER;
CREATE INDEX IF NOT EXISTS projection_documents_due ON projection_documents (projection, due_us)
    WHERE due_us IS NOT NULL;
