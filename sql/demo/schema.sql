-- The demo bank: 100 accounts of 1000.00 each, so the sum of balances is
-- 100000.00 before and after any number of transfers.
CREATE TABLE IF NOT EXISTS accounts (
    id      integer PRIMARY KEY,
    owner   text NOT NULL,
    balance numeric(12, 2) NOT NULL CHECK (balance >= 0)
);
INSERT INTO accounts (id, owner, balance)
SELECT g, 'customer ' || g, 1000.00 FROM generate_series(1, 100) g
ON CONFLICT (id) DO NOTHING;
