-- A share's copies in the outbox carry the case they disclose about. When such a copy is
-- delivered, the transaction that marks it delivered also appends `share.delivered` to the
-- ledger (case, room, outbox id), so the ledger says where a disclosure actually arrived,
-- room by room, not only that it was decided.
ALTER TABLE outbox ADD COLUMN share_case TEXT;
