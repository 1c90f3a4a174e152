-- Content rows no longer carry a foreign key to their chain entry. PostgreSQL checked it
-- row by row at every append, and the check locked the entry's row (FOR KEY SHARE), so
-- each entry was written twice and logged twice: a third of what appending cost
-- (BENCHMARKS.md, 2026-12-06). Wavelet writes an entry and its content in one
-- transaction; `wavelet audit verify` names content stored for an entry the chain does
-- not hold. (The chain's triggers refuse TRUNCATE and DELETE on both tables either way.)
ALTER TABLE ledger_content DROP CONSTRAINT IF EXISTS ledger_content_seq_fkey;
