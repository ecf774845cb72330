\echo Use "ALTER EXTENSION hafe UPDATE TO '1.3'" to load this file. \quit

-- Raw SQL runs on sessions that log in as the client role, so the outcome
-- of a raw SQL slot, written inside the slot's transaction (G1), is written
-- by the client role too: through record_outcome, which runs as this
-- schema's owner and writes only outcomes a front-end signed.

-- outcome_key holds the key front-ends sign outcomes with (HMAC-SHA256).
-- Only the owner (and roles it grants SELECT to: the front-ends) reads it.
-- gen_random_uuid() is core PostgreSQL's strong random source (122 random
-- bits each); pgcrypto is not assumed.
CREATE TABLE outcome_key (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    key       bytea NOT NULL CHECK (octet_length(key) = 32),
    created_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON outcome_key FROM PUBLIC;
INSERT INTO outcome_key (key)
SELECT sha256(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()));

-- record_outcome inserts a committed slot's outcome exactly as a
-- front-end's own insert does (the lease check reads the batch's epoch
-- under a share lock; a second outcome for the slot fails on the primary
-- key), after checking p_mac: HMAC-SHA256 with outcome_key over all the
-- other arguments (see backendext.OutcomeMAC). A client that calls it
-- itself has no key, so it writes nothing. The HMAC is spelled out on core
-- sha256(); the MACs are compared through another hash so that the
-- comparison's timing says nothing about the expected value.
CREATE FUNCTION record_outcome(p_batch uuid, p_seq integer, p_status text, p_report text,
    p_epoch bigint, p_owner text, p_attempts integer, p_mac bytea) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k     bytea;
    ipad  bytea;
    opad  bytea;
    msg   bytea;
    want  bytea;
BEGIN
    SELECT key INTO k FROM @extschema@.outcome_key;
    msg := convert_to('hafe outcome v1', 'UTF8')
        || uuid_send(p_batch) || int4send(p_seq) || int8send(p_epoch) || int4send(p_attempts)
        || int4send(octet_length(convert_to(p_status, 'UTF8'))) || convert_to(p_status, 'UTF8')
        || int4send(octet_length(convert_to(p_owner, 'UTF8'))) || convert_to(p_owner, 'UTF8')
        || int4send(octet_length(convert_to(p_report, 'UTF8'))) || convert_to(p_report, 'UTF8');
    IF k IS NULL OR msg IS NULL OR p_mac IS NULL THEN
        RAISE EXCEPTION 'hafe.record_outcome: outcome not signed by a front-end'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    ipad := k || decode(repeat('00', 64 - octet_length(k)), 'hex');
    opad := ipad;
    FOR i IN 0..63 LOOP
        ipad := set_byte(ipad, i, get_byte(ipad, i) # 54);
        opad := set_byte(opad, i, get_byte(opad, i) # 92);
    END LOOP;
    want := sha256(opad || sha256(ipad || msg));
    IF sha256(k || p_mac) IS DISTINCT FROM sha256(k || want) THEN
        RAISE EXCEPTION 'hafe.record_outcome: outcome not signed by a front-end'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO @extschema@.outcomes (batch_id, seq, status, report, xid, epoch, owner, attempts)
    VALUES (p_batch, p_seq, p_status, p_report, pg_current_xact_id(),
        (SELECT b.epoch FROM @extschema@.batches b WHERE b.batch_id = p_batch AND b.epoch = p_epoch FOR SHARE),
        p_owner, p_attempts);
END
$$;
REVOKE ALL ON FUNCTION record_outcome(uuid, integer, text, text, bigint, text, integer, bytea) FROM PUBLIC;
