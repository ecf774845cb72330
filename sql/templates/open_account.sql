-- Open account @id for @owner with @balance.
INSERT INTO accounts (id, owner, balance) VALUES (@id, @owner, @balance) RETURNING id, owner, balance;
