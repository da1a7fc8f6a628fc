-- Chronicle's SQLite schema, version 21 -> 22: the events of a subscription
-- group's segment settled (acked, skipped or parked) above its checkpoint,
-- kept when their consumer gives the segment up in order (the checkpoint is
-- the contiguous settled prefix: one older event still unsettled keeps it
-- before them), so the segment's next holder does not deliver them again
-- (grouping.py SettledEvent, GroupStore.commit_segment). Forgotten as the
-- checkpoint passes them. A new table: a server of an older version on this
-- file ignores it (its next holders deliver those events again, as before).
-- additive
CREATE TABLE IF NOT EXISTS group_settled_ahead (
    group_name      TEXT    NOT NULL,
    segment         INTEGER NOT NULL,
    event_id        TEXT    NOT NULL,
    position        INTEGER NOT NULL,
    outcome         TEXT    NOT NULL,
    PRIMARY KEY (group_name, segment, event_id)
);
