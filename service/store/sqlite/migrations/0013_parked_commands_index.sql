-- Chronicle's SQLite schema, version 12 -> 13: the commands a reaction parked
-- are documents of type chronicle.v1.ParkedCommand among its documents; a
-- status call counts them (ProjectionStore.count_parked_commands) over this
-- index of those alone, not over every document of the reaction (its process
-- states may be millions). Partial: the other documents' writes do not
-- maintain it. With the type (though it is always the same): SQLite then
-- counts from the index alone, without reading each parked command's row.
-- additive
CREATE INDEX IF NOT EXISTS projection_documents_parked_commands ON projection_documents (projection, type_name)
    WHERE type_name = 'chronicle.v1.ParkedCommand';
