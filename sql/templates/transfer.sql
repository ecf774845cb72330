-- Move @amount from account @from to account @to; both balances are returned.
-- The balance check constraint aborts the transfer if @from would go negative.
UPDATE accounts SET balance = balance - @amount WHERE id = @from RETURNING id, balance;
UPDATE accounts SET balance = balance + @amount WHERE id = @to RETURNING id, balance;
