-- Migration 26: the events of a subscription group's segment settled
-- (acked, skipped or parked) above its checkpoint, kept when their consumer
-- gives the segment up in order (the checkpoint is the contiguous settled
-- prefix: one older event still unsettled keeps it before them), so the
-- segment's next holder does not deliver them again (grouping.py
-- SettledEvent, GroupStore.commit_segment). Forgotten as the checkpoint
-- passes them, and with their group. A new table: a server of an older
-- version ignores it (its next holders deliver those events again, as before).
-- additive
CREATE TABLE chronicle.group_settled_ahead (
    group_name      text        NOT NULL REFERENCES chronicle.subscription_groups (name) ON DELETE CASCADE,
    segment         integer     NOT NULL,
    event_id        text        NOT NULL,
    position        bigint      NOT NULL,
    outcome         text        NOT NULL,
    PRIMARY KEY (group_name, segment, event_id)
);
