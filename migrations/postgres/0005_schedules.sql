-- Workflows started by the clock ([[schedule]] in the configuration). One row per
-- schedule: when it is next due. Processes claim due rows (FOR UPDATE SKIP LOCKED on
-- PostgreSQL) and move next_at on in the same transaction as the run they start, so a
-- schedule fires once however many processes share the store.
CREATE TABLE schedules (
    id            TEXT PRIMARY KEY,
    cron          TEXT   NOT NULL,
    workflow      TEXT   NOT NULL,
    group_id      TEXT   NOT NULL,
    -- NULL when the expression never matches again.
    next_at       BIGINT,
    last_fired_at BIGINT
);
CREATE INDEX schedules_due ON schedules (next_at) WHERE next_at IS NOT NULL;
