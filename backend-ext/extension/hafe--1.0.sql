\echo Use "CREATE EXTENSION hafe" to load this file. \quit

-- A batch is one client request: an ordered list of transactions. The owner
-- holds the lease; epoch grows with every claim so a fenced owner's writes
-- fail their epoch check.
CREATE TABLE batches (
    batch_id     uuid PRIMARY KEY,
    idem_key     text UNIQUE,
    request_hash bytea NOT NULL,
    n_txns       integer NOT NULL CHECK (n_txns >= 0),
    owner        text,
    -- owner_incarnation tells a front-end's runs apart: a front-end that
    -- restarts under the same name does not own its earlier run's batches.
    owner_incarnation text,
    epoch        bigint NOT NULL DEFAULT 1,
    state        text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'done')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- One row per slot (batch_id, seq). A committed slot's row is written inside
-- the slot's own transaction; the primary key makes a second commit fail.
-- report is the exact line sent to clients. No foreign key: the insert
-- already reads (and share-locks) the batch row to check the lease.
CREATE TABLE outcomes (
    batch_id   uuid NOT NULL,
    seq        integer NOT NULL CHECK (seq >= 1),
    status     text NOT NULL CHECK (status IN ('committed', 'aborted')),
    report     text NOT NULL,
    xid        xid8,
    epoch      bigint NOT NULL,
    owner      text NOT NULL,
    attempts   integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, seq)
);

-- MTCP connection snapshots for eager transfer: what a front-end that never
-- saw a connection needs to verify its MIGRATE and reinstate it. (counter,
-- seq) only grows; a stale save is refused.
CREATE TABLE snapshots (
    conn_id    bytea PRIMARY KEY CHECK (length(conn_id) = 16),
    owner      text,
    secret     bytea NOT NULL,
    counter    bigint NOT NULL,
    seq        bigint NOT NULL,
    in_offset  bigint NOT NULL,
    out_offset bigint NOT NULL,
    state      bytea NOT NULL,
    out_tail   bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- claim_batch takes the lease of a batch for p_owner and returns the new
-- epoch. It waits for any slot transaction of the previous owner that has
-- written its outcome (the outcome insert share-locks the batch row at the
-- owner's epoch), so once it returns the previous owner can no longer commit
-- for this batch.
CREATE FUNCTION claim_batch(p_batch uuid, p_owner text, p_incarnation text) RETURNS bigint
LANGUAGE sql AS $$
    UPDATE @extschema@.batches
       SET owner = p_owner, owner_incarnation = p_incarnation, epoch = epoch + 1, updated_at = now()
     WHERE batch_id = p_batch
    RETURNING epoch
$$;

-- fence_sessions terminates the sessions named p_app (one run of a
-- front-end, see backendext.ApplicationName) that are inside a transaction,
-- and returns how many it signalled. A front-end calls it when it takes a
-- batch over from a run that is gone: whatever that run still has open can
-- only hold locks the new owner needs.
CREATE FUNCTION fence_sessions(p_app text) RETURNS integer
LANGUAGE sql AS $$
    SELECT count(*)::integer FROM (
        SELECT pg_terminate_backend(a.pid)
          FROM pg_stat_activity a
         WHERE a.application_name = p_app
           AND p_app LIKE 'hafe/%'
           AND a.xact_start IS NOT NULL
           AND a.pid <> pg_backend_pid()
    ) t
$$;

-- fence_blockers terminates the hafe sessions that block backend p_pid (a
-- claim stuck behind a dead owner's open transaction) and returns how many
-- it signalled. Sessions of other applications are never touched.
CREATE FUNCTION fence_blockers(p_pid integer) RETURNS integer
LANGUAGE sql AS $$
    SELECT count(*)::integer FROM (
        SELECT pg_terminate_backend(a.pid)
          FROM pg_stat_activity a
         WHERE a.pid = ANY (pg_blocking_pids(p_pid))
           AND a.application_name LIKE 'hafe/%'
    ) t
$$;
