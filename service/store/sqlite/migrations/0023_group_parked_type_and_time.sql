-- Chronicle's SQLite schema, version 22 -> 23: a subscription group's parked
-- event keeps its event type and when it was parked (microseconds since the
-- epoch), which an operator triaging parked events sorts and filters by
-- (ListParked, chronicle group NAME --parked, the console). Rows parked
-- before keep NULL and 0 and read as unknown; a server of an older version
-- on this file parks without them (NULL and 0 again).
-- additive
ALTER TABLE group_parked ADD COLUMN event_type TEXT;
ALTER TABLE group_parked ADD COLUMN parked_at_us INTEGER NOT NULL DEFAULT 0;
