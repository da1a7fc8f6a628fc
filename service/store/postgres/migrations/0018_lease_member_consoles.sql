-- Migration 18: the URL of each lease member's console (scheme://host:port,
-- '' when it serves none), so that a replica's console can link to the
-- console of the replica that runs a projection or reaction elsewhere, and
-- ClusterService names it (Member.console_address). A new column with a
-- constant default (no table rewrite): older code's heartbeats leave it ''.
-- additive
ALTER TABLE chronicle.lease_members ADD COLUMN console text NOT NULL DEFAULT '';
