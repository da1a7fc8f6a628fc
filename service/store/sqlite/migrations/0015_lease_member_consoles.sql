-- Chronicle's SQLite schema, version 14 -> 15: the URL of each lease
-- member's console (scheme://host:port, '' when it serves none), as
-- PostgreSQL's migration 18: a process's console links to the console of
-- the process that runs a projection or reaction. Older code's heartbeats
-- leave it ''.
-- additive
ALTER TABLE lease_members ADD COLUMN console TEXT NOT NULL DEFAULT '';
