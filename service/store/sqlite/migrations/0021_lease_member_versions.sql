-- Chronicle's SQLite schema, version 20 -> 21: each lease member's
-- Chronicle version and the schema version its code knows, as PostgreSQL's
-- migration 22 (Member.version, and the check before a migration that
-- raises the compatibility floor). Older code's heartbeats leave them ''
-- and 0.
-- additive
ALTER TABLE lease_members ADD COLUMN version TEXT NOT NULL DEFAULT '';
ALTER TABLE lease_members ADD COLUMN schema_version INTEGER NOT NULL DEFAULT 0;
