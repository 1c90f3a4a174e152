-- Every write transaction counts its commit on the chain-head row it locks. A batch handled
-- on the state its predecessor left (while that predecessor was still committing) checks
-- the count when it takes the lock: any other transaction's commit in between (another
-- process, a timer batch, a share's delivery record) moves it, and the batch is handled
-- again from the database. Every process on a store must count: upgrade them together.
ALTER TABLE ledger_head ADD COLUMN commits BIGINT NOT NULL DEFAULT 0;
