-- Read account @id.
SELECT id, owner, balance FROM accounts WHERE id = @id;
