-- The demo bank: 100 accounts of 1000.00 each, so the sum of balances is
-- 100000.00 before and after any number of transfers.
CREATE TABLE IF NOT EXISTS accounts (
    id      integer PRIMARY KEY,
    owner   text NOT NULL,
    -- NaN compares greater than every number, so ">= 0" alone lets it in.
    balance numeric(12, 2) NOT NULL CHECK (balance >= 0 AND balance <> 'NaN')
);
INSERT INTO accounts (id, owner, balance)
SELECT g, 'customer ' || g, 1000.00 FROM generate_series(1, 100) g
ON CONFLICT (id) DO NOTHING;

-- The transfer template's guard. STABLE and without column references, so
-- the planner evaluates it once before scanning, whether or not @from
-- exists: a transfer between missing accounts raises instead of moving
-- money out of one account into nowhere.
CREATE OR REPLACE FUNCTION bank_transfer_allowed(p_from integer, p_to integer, p_amount numeric)
RETURNS boolean LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_amount IS NULL OR p_amount = 'NaN' OR p_amount <= 0 OR p_amount = 'Infinity' THEN
        RAISE EXCEPTION 'transfer amount must be positive, not %', p_amount USING ERRCODE = '22023';
    END IF;
    IF p_from = p_to THEN
        RAISE EXCEPTION 'transfer from account % to itself', p_from USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM accounts WHERE id = p_from) THEN
        RAISE EXCEPTION 'no account %', p_from USING ERRCODE = 'P0002';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM accounts WHERE id = p_to) THEN
        RAISE EXCEPTION 'no account %', p_to USING ERRCODE = 'P0002';
    END IF;
    RETURN true;
END
$$;
