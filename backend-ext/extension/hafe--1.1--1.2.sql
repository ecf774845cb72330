\echo Use "ALTER EXTENSION hafe UPDATE TO '1.2'" to load this file. \quit

-- Every claim of a batch's lease after its first owner: who had it (NULL
-- when it had been released), who took it, at which epoch and when, and
-- how many of the previous owner's sessions were terminated to fence it.
-- Operators read it per batch (hafe batches show); gc removes it with its
-- batch.
CREATE TABLE takeovers (
    batch_id             uuid NOT NULL,
    epoch                bigint NOT NULL,
    previous_owner       text,
    previous_incarnation text,
    owner                text NOT NULL,
    incarnation          text NOT NULL,
    fenced_sessions      integer NOT NULL DEFAULT 0,
    taken_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, epoch)
);

CREATE INDEX takeovers_taken_at ON takeovers (taken_at);

-- Operators list batches most recently changed first.
CREATE INDEX batches_updated_at ON batches (updated_at);

-- claim_batch takes the lease of a batch for p_owner and returns the new
-- epoch, or NULL when there is no such batch. It waits for any slot
-- transaction of the previous owner that has written its outcome (the
-- outcome insert share-locks the batch row at the owner's epoch), so once it
-- returns the previous owner can no longer commit for this batch. The claim
-- is recorded in takeovers.
CREATE OR REPLACE FUNCTION claim_batch(p_batch uuid, p_owner text, p_incarnation text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    prev_owner text;
    prev_incarnation text;
    new_epoch bigint;
BEGIN
    SELECT owner, owner_incarnation INTO prev_owner, prev_incarnation
      FROM @extschema@.batches WHERE batch_id = p_batch FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE @extschema@.batches
       SET owner = p_owner, owner_incarnation = p_incarnation, epoch = epoch + 1, updated_at = now()
     WHERE batch_id = p_batch
    RETURNING epoch INTO new_epoch;
    INSERT INTO @extschema@.takeovers (batch_id, epoch, previous_owner, previous_incarnation, owner, incarnation)
    VALUES (p_batch, new_epoch, prev_owner, prev_incarnation, p_owner, p_incarnation);
    RETURN new_epoch;
END
$$;

-- gc deletes finished batches and their outcomes and takeovers, snapshots
-- and members older than p_retention and returns the number of rows
-- removed. Running batches are kept whatever their age: a client may still
-- resume them.
CREATE OR REPLACE FUNCTION gc(p_retention interval) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
    total bigint := 0;
BEGIN
    DELETE FROM @extschema@.outcomes o USING @extschema@.batches b
     WHERE o.batch_id = b.batch_id AND b.state = 'done' AND b.updated_at < now() - p_retention;
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    DELETE FROM @extschema@.takeovers t USING @extschema@.batches b
     WHERE t.batch_id = b.batch_id AND b.state = 'done' AND b.updated_at < now() - p_retention;
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    DELETE FROM @extschema@.batches WHERE state = 'done' AND updated_at < now() - p_retention;
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    DELETE FROM @extschema@.snapshots WHERE updated_at < now() - p_retention;
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    DELETE FROM @extschema@.members WHERE heartbeat_at < now() - p_retention;
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    RETURN total;
END
$$;
