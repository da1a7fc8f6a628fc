-- Migration 27: a subscription group's parked event keeps its event type,
-- which an operator triaging parked events filters by (ListParked, chronicle
-- group NAME --parked, the console); when it was parked was already kept
-- (migration 13's parked_at, now set from the parking server's clock).
-- Rows parked before keep NULL and read as unknown; a server of an older
-- version parks without it (NULL again).
-- additive
ALTER TABLE chronicle.group_parked ADD COLUMN event_type text;
