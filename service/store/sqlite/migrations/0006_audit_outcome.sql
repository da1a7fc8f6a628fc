-- Chronicle's SQLite schema, version 5 -> 6: audit entries outside command
-- records (refusals before a handler, administrators' actions) say their
-- outcome; every existing one was a refusal.
ALTER TABLE refusals ADD COLUMN outcome TEXT NOT NULL DEFAULT 'refused';
