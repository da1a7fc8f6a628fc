-- Migration 4: reading the global log.

-- Subscriptions filtered by aggregate type or event type read these in
-- position order instead of scanning every event.
CREATE INDEX events_by_aggregate_type ON chronicle.events (aggregate_type, position);
CREATE INDEX events_by_event_type ON chronicle.events (event_type, position);

-- Every append tells listeners (other replicas' subscriptions) the last
-- position it wrote; NOTIFY is delivered at commit, and only if it commits.
CREATE FUNCTION chronicle.notify_append() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('chronicle_events', (SELECT max(position) FROM appended)::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER events_notify_append
    AFTER INSERT ON chronicle.events
    REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT EXECUTE FUNCTION chronicle.notify_append();
