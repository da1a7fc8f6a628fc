-- Chronicle's PostgreSQL schema, migration 14: a command record keeps when
-- the command was made (its client's Command.timestamp, else when the server
-- received it), for the audit. NULL for records written before.
ALTER TABLE chronicle.commands ADD COLUMN issued_at timestamptz;
