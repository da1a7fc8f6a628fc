-- Migration 15: an optional JSON copy of each event's payload
-- (--postgres-json-events), written by the store from the plugins' types so
-- that operators can query events in SQL. NULL when the option is off, for
-- events appended before it was on, and for payloads no plugin declares.
-- A nullable column without a default: no table rewrite, whatever its size.
ALTER TABLE chronicle.events ADD COLUMN payload_json jsonb;
