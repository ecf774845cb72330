-- Move @amount from account @from to account @to; both balances are returned.
-- It aborts if @from would go negative (check constraint), if either account
-- does not exist or they are the same, or if @amount is not positive.
UPDATE accounts SET balance = balance - @amount
 WHERE id = @from AND bank_transfer_allowed(@from, @to, @amount) RETURNING id, balance;
UPDATE accounts SET balance = balance + @amount WHERE id = @to RETURNING id, balance;
