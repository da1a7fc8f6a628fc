-- Migration 24: each lease member's Chronicle version (service.version,
-- "0.2.0 (commit …)") and the schema version its code knows (its newest
-- migration), so that ClusterService names them (Member.version,
-- Member.schema_version) and a replica about to apply a migration that
-- raises the compatibility floor sees the live members it would strand
-- (migrations.py, deployment.md "Upgrading and rolling back"). Older
-- code's heartbeats leave them '' and 0 (a version from before this one).
-- additive
ALTER TABLE chronicle.lease_members
    ADD COLUMN version text NOT NULL DEFAULT '',
    ADD COLUMN schema_version integer NOT NULL DEFAULT 0;
