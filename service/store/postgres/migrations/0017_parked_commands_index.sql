-- Migration 17: the commands a reaction parked are documents of type
-- chronicle.v1.ParkedCommand among its documents; a status call counts them
-- (ProjectionStore.count_parked_commands) over this index of those alone,
-- not over every document of the reaction (its process states may be
-- millions). Partial: the other documents' writes do not maintain it.
-- additive
CREATE INDEX projection_documents_parked_commands ON chronicle.projection_documents (projection)
    WHERE type_name = 'chronicle.v1.ParkedCommand';
