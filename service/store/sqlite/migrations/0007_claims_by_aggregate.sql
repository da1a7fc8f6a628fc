-- Chronicle's SQLite schema, version 6 -> 7: forgetting an aggregate
-- releases every claim it holds, found by its holder.
CREATE INDEX IF NOT EXISTS claims_by_aggregate ON claims (aggregate_id);
