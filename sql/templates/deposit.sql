-- Add @amount to account @id.
UPDATE accounts SET balance = balance + @amount WHERE id = @id RETURNING id, balance;
