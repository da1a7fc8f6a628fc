-- Migration 13: subscription groups (service/store/grouping.py): each
-- group's settings, one checkpoint per segment (the contiguous
-- acknowledged prefix and how many events it acknowledged), and the events
-- it parked. Consumers hold segments by the leases of migration 10 (lease
-- group 'subscription-group:' || name, one lease per segment), so the
-- consumers of one group may be connected to different replicas.

CREATE TABLE chronicle.subscription_groups (
    name                    text        PRIMARY KEY,
    filter                  jsonb       NOT NULL,
    start_position          bigint      NOT NULL,
    segments                integer     NOT NULL,
    max_attempts            integer     NOT NULL,
    retry_backoff_ms        bigint      NOT NULL,
    max_retry_backoff_ms    bigint      NOT NULL,
    ack_timeout_ms          bigint      NOT NULL,
    created_at              timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE chronicle.group_segments (
    group_name      text        NOT NULL REFERENCES chronicle.subscription_groups (name) ON DELETE CASCADE,
    segment         integer     NOT NULL,
    position        bigint      NOT NULL,
    acknowledged    bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_name, segment)
);

CREATE TABLE chronicle.group_parked (
    group_name      text        NOT NULL REFERENCES chronicle.subscription_groups (name) ON DELETE CASCADE,
    event_id        text        NOT NULL,
    position        bigint      NOT NULL,
    segment         integer     NOT NULL,
    aggregate_id    text        NOT NULL,
    attempts        integer     NOT NULL,
    reason          text        NOT NULL,
    replaying       boolean     NOT NULL DEFAULT false,
    parked_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_name, event_id)
);

CREATE INDEX group_parked_by_position ON chronicle.group_parked (group_name, position);
