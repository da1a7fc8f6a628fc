-- Chronicle's PostgreSQL schema, migration 7: forgetting an aggregate
-- releases every claim it holds, found by its holder.
CREATE INDEX claims_by_aggregate ON chronicle.claims (aggregate_id);
