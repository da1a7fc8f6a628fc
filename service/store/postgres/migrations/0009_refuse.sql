-- Migration 9: one function for every statement that refuses itself. A
-- store operation is one round trip (its statements commit together at the
-- end, or none does); a statement whose condition does not hold (an
-- aggregate moved on, a claimed value is held by another, a projection's
-- checkpoint moved) calls this to abort the whole operation with a SQLSTATE
-- the store reads back. refuse_batch (migration 8) stays for replicas of the
-- previous version still running during a rolling upgrade.

CREATE FUNCTION chronicle.refuse(code text, message text) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = code, MESSAGE = message;
END
$$;
