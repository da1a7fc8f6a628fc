-- Migration 25: aggregates listed by id prefix (ListAggregates, and the
-- forgetting of a tenant's aggregates by prefix: ForgetAggregates) walk
-- this index from the prefix to its end (sql.list_aggregates). In the "C"
-- collation (code point order, as SQLite and the memory store compare), so
-- that a prefix's ids are one range of it: the database's own collation may
-- be a linguistic one, which interleaves "acme:b" with "acme1a", and its
-- (aggregate_id, version) index cannot be stopped at the prefix's end.
-- Built concurrently (index_builds.py): it reads the events table once,
-- while writes go on. A database that applied this migration when it
-- built its indexes inside the transaction (0.2.0) has the same indexes,
-- and never runs it again (the runner applies the versions above the
-- recorded one).
-- additive
-- concurrently
CREATE INDEX CONCURRENTLY IF NOT EXISTS events_aggregate_id_code_points ON chronicle.events (aggregate_id COLLATE "C");

-- The aggregates still to forget under a prefix (their live keys), counted
-- and walked in the same order: only live keys, which a forget takes out.
CREATE INDEX CONCURRENTLY IF NOT EXISTS data_keys_live_code_points ON chronicle.data_keys (aggregate_id COLLATE "C")
    WHERE wrapped_key IS NOT NULL;
