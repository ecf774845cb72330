\echo Use "ALTER EXTENSION hafe UPDATE TO '1.1'" to load this file. \quit

-- Front-end membership: who is alive, where to reach it, how loaded it is.
CREATE TABLE members (
    id           text PRIMARY KEY,
    incarnation  text NOT NULL DEFAULT '',
    http_addr    text NOT NULL DEFAULT '',
    mtcp_addr    text NOT NULL DEFAULT '',
    peer_addr    text NOT NULL DEFAULT '',
    load         double precision NOT NULL DEFAULT 0,
    draining     boolean NOT NULL DEFAULT false,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX batches_done_updated ON batches (updated_at) WHERE state = 'done';

-- gc deletes finished batches and their outcomes, snapshots and members
-- older than p_retention and returns the number of rows removed. Running
-- batches are kept whatever their age: a client may still resume them.
CREATE FUNCTION gc(p_retention interval) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
    total bigint := 0;
BEGIN
    DELETE FROM @extschema@.outcomes o USING @extschema@.batches b
     WHERE o.batch_id = b.batch_id AND b.state = 'done' AND b.updated_at < now() - p_retention;
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
