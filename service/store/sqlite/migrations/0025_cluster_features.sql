-- Chronicle's SQLite schema, version 24 -> 25: features the servers on the
-- file turned on for good, by name, as PostgreSQL's migration 29
-- (service/store/features.py): "tenant_document_keys", turned on once no
-- live server on the file knows a schema below this one.
-- additive
CREATE TABLE cluster_features (name TEXT PRIMARY KEY);
