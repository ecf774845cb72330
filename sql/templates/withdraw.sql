-- Take @amount from account @id; aborts if the balance would go negative.
UPDATE accounts SET balance = balance - @amount WHERE id = @id RETURNING id, balance;
