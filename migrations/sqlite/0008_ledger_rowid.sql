-- The chain's two tables keyed by SQLite's own row id. `BIGINT PRIMARY KEY` is not an
-- alias of the row id (only `INTEGER PRIMARY KEY` is), so every entry and every content
-- row was written to two B-trees, the table and an index of its key; and content rows
-- carried a foreign key to their entry, looked up at every append. Appending was the
-- largest part of a commit (BENCHMARKS.md, 2026-12-06, later). Wavelet writes an entry and
-- its content in one transaction; `wavelet audit verify` names content stored for an
-- entry the chain does not hold (as on PostgreSQL since its migration 0008).
--
-- The rows are copied as they are (hashes, erasures and all), so the chain verifies as
-- before. Dropping a table drops its triggers, and the implicit delete of DROP TABLE
-- fires none; the guards are made again below, as they stood after 0002. (A `seq` that is
-- not a whole number, possible only in a file edited by hand, can fail this copy; Wavelet
-- then does not start until the file is mended.)

CREATE TABLE ledger_rowid (
    seq          INTEGER PRIMARY KEY,
    at           BIGINT NOT NULL,
    kind         TEXT   NOT NULL,
    case_id      TEXT,
    run_id       TEXT,
    actor        TEXT   NOT NULL,
    script_hash  TEXT,
    content_hash TEXT   NOT NULL,
    prev_hash    TEXT   NOT NULL,
    hash         TEXT   NOT NULL
);
INSERT INTO ledger_rowid (seq, at, kind, case_id, run_id, actor, script_hash, content_hash, prev_hash, hash)
SELECT seq, at, kind, case_id, run_id, actor, script_hash, content_hash, prev_hash, hash FROM ledger ORDER BY seq;

CREATE TABLE ledger_content_rowid (
    seq            INTEGER PRIMARY KEY,
    content        TEXT,
    erased_at      BIGINT,
    erasure_reason TEXT
);
INSERT INTO ledger_content_rowid (seq, content, erased_at, erasure_reason)
SELECT seq, content, erased_at, erasure_reason FROM ledger_content ORDER BY seq;

DROP TABLE ledger_content;
DROP TABLE ledger;
ALTER TABLE ledger_rowid RENAME TO ledger;
ALTER TABLE ledger_content_rowid RENAME TO ledger_content;

CREATE INDEX ledger_case ON ledger (case_id) WHERE case_id IS NOT NULL;
CREATE INDEX ledger_run ON ledger (run_id) WHERE run_id IS NOT NULL;

-- The database refuses to change the chain (defence in depth: a file's owner can still
-- edit it, which is what the hash chain is for).
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'the Wavelet ledger is append-only: UPDATE is refused');
END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'the Wavelet ledger is append-only: DELETE is refused');
END;
-- REPLACE deletes the old row without firing DELETE triggers, so refuse any insert that
-- would land on an existing entry.
CREATE TRIGGER ledger_no_replace BEFORE INSERT ON ledger
WHEN EXISTS (SELECT 1 FROM ledger WHERE seq = NEW.seq)
BEGIN
    SELECT RAISE(ABORT, 'the Wavelet ledger is append-only: an entry cannot be replaced');
END;

-- An erasure happens once: erased content stays erased, with its first time and reason.
CREATE TRIGGER ledger_content_erase_only BEFORE UPDATE ON ledger_content
WHEN NOT (OLD.content IS NOT NULL AND NEW.content IS NULL AND NEW.erased_at IS NOT NULL
          AND NEW.erasure_reason IS NOT NULL AND NEW.seq = OLD.seq)
BEGIN
    SELECT RAISE(ABORT, 'ledger content can only be erased, once, not changed');
END;
CREATE TRIGGER ledger_content_no_delete BEFORE DELETE ON ledger_content
BEGIN
    SELECT RAISE(ABORT, 'ledger content can only be erased, not deleted');
END;
CREATE TRIGGER ledger_content_no_replace BEFORE INSERT ON ledger_content
WHEN EXISTS (SELECT 1 FROM ledger_content WHERE seq = NEW.seq)
BEGIN
    SELECT RAISE(ABORT, 'ledger content can only be erased, not replaced');
END;
