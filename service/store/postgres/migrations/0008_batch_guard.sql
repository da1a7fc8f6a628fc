-- Migration 8: a batch append is one statement in its own transaction; when
-- one of its appends would not hold (an aggregate not at the expected
-- version), the statement calls this to abort itself, so that nothing of the
-- batch commits and the appends are retried one by one.

CREATE FUNCTION chronicle.refuse_batch() RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'batch refused: an aggregate is not at its expected version'
        USING ERRCODE = 'CH001';
END
$$;
