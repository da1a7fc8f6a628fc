-- Chronicle's SQLite schema, version 10 -> 11: a command record keeps when the
-- command was made (its client's Command.timestamp, else when the server
-- received it; microseconds since the epoch), for the audit. NULL for
-- records written before.
ALTER TABLE commands ADD COLUMN issued_at_us INTEGER;
