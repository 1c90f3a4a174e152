-- An erasure happens once: erased content stays erased, with its first time and reason.
CREATE OR REPLACE FUNCTION wavelet_ledger_content_erase_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.content IS NOT NULL AND NEW.content IS NULL AND NEW.erased_at IS NOT NULL
       AND NEW.erasure_reason IS NOT NULL AND NEW.seq = OLD.seq THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'ledger content can only be erased, once, not changed: % is refused', TG_OP;
END;
$$;
