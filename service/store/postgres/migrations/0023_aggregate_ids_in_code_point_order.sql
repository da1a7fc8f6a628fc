-- Migration 23: aggregates listed by id prefix (ListAggregates, and the
-- forgetting of a tenant's aggregates by prefix: ForgetAggregates) walk
-- this index from the prefix to its end (sql.list_aggregates). In the "C"
-- collation (code point order, as SQLite and the memory store compare), so
-- that a prefix's ids are one range of it: the database's own collation may
-- be a linguistic one, which interleaves "acme:b" with "acme1a", and its
-- (aggregate_id, version) index cannot be stopped at the prefix's end.
-- Building it reads the events table once (writes wait meanwhile).
-- additive
CREATE INDEX events_aggregate_id_code_points ON chronicle.events (aggregate_id COLLATE "C");
