\echo Use "ALTER EXTENSION hafe UPDATE TO '1.4'" to load this file. \quit

-- Each front-end publishes with its heartbeat the transactions it executed
-- (since it started) and the MTCP connections it serves, so that any
-- front-end's dashboard shows the whole cluster's throughput.
ALTER TABLE members
    ADD COLUMN committed_total  bigint NOT NULL DEFAULT 0,
    ADD COLUMN aborted_total    bigint NOT NULL DEFAULT 0,
    ADD COLUMN mtcp_connections integer NOT NULL DEFAULT 0;

-- MTCP migrations as the front-end that took the connection saw them, with
-- the phases it measured (µs); the dashboard lists the latest, gc removes
-- those older than the retention.
CREATE TABLE migrations (
    id           bigserial PRIMARY KEY,
    conn_id      text NOT NULL,
    from_addr    text NOT NULL,
    to_addr      text NOT NULL,
    taken_by     text NOT NULL,
    mode         text NOT NULL,
    trigger      text NOT NULL,
    error        text,
    prepare_us   bigint NOT NULL,
    wait_us      bigint NOT NULL,
    reinstate_us bigint NOT NULL,
    state_bytes  integer NOT NULL,
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX migrations_at ON migrations (at);

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
    DELETE FROM @extschema@.migrations WHERE at < now() - p_retention;
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    RETURN total;
END
$$;
