-- Chronicle's PostgreSQL schema, migration 6: audit entries outside command
-- records (refusals before a handler, administrators' actions) say their
-- outcome; every existing one was a refusal.
ALTER TABLE chronicle.refusals ADD COLUMN outcome text NOT NULL DEFAULT 'refused';
