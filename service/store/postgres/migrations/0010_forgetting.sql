-- Migration 10: what forgetting an aggregate reaches beyond its key.

-- The aggregates each read-model document is derived from (its subjects):
-- forgetting one deletes the document, in the forget's transaction.
CREATE TABLE chronicle.projection_subjects (
    projection      text        NOT NULL,
    key             text        NOT NULL,
    subject         text        NOT NULL,
    PRIMARY KEY (projection, key, subject)
);
CREATE INDEX projection_subjects_by_subject ON chronicle.projection_subjects (subject);
