-- REPLACE deletes the old row without firing DELETE triggers, so refuse any insert that
-- would land on an existing entry. And an erasure happens once: erased content stays
-- erased, with its first time and reason.
CREATE TRIGGER ledger_no_replace BEFORE INSERT ON ledger
WHEN EXISTS (SELECT 1 FROM ledger WHERE seq = NEW.seq)
BEGIN
    SELECT RAISE(ABORT, 'the Wavelet ledger is append-only: an entry cannot be replaced');
END;

CREATE TRIGGER ledger_content_no_replace BEFORE INSERT ON ledger_content
WHEN EXISTS (SELECT 1 FROM ledger_content WHERE seq = NEW.seq)
BEGIN
    SELECT RAISE(ABORT, 'ledger content can only be erased, not replaced');
END;

DROP TRIGGER ledger_content_erase_only;
CREATE TRIGGER ledger_content_erase_only BEFORE UPDATE ON ledger_content
WHEN NOT (OLD.content IS NOT NULL AND NEW.content IS NULL AND NEW.erased_at IS NOT NULL
          AND NEW.erasure_reason IS NOT NULL AND NEW.seq = OLD.seq)
BEGIN
    SELECT RAISE(ABORT, 'ledger content can only be erased, once, not changed');
END;
