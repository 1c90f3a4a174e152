-- Escalations: a case notified stage after stage (a policy's levels, repeated, then its
-- final level) until someone acknowledges. `plan` is the policy as it was when the
-- escalation began (JSON stages), so editing the configuration never changes one in flight.
CREATE TABLE escalations (
    id         TEXT PRIMARY KEY,
    case_id    TEXT    NOT NULL,
    policy     TEXT    NOT NULL,
    run_id     TEXT    NOT NULL,
    group_id   TEXT    NOT NULL,
    plan       TEXT    NOT NULL,
    -- The stage notified last (0-based index into plan).
    stage      BIGINT  NOT NULL,
    -- active | acknowledged
    status     TEXT    NOT NULL,
    -- When the next stage is due; NULL once the final level has been notified, or it ended.
    next_at    BIGINT,
    -- People notified so far (JSON array of person ids): who may acknowledge.
    notified   TEXT    NOT NULL,
    started_at BIGINT  NOT NULL,
    acked_by   TEXT,
    acked_at   BIGINT
);
CREATE INDEX escalations_due ON escalations (next_at) WHERE status = 'active' AND next_at IS NOT NULL;
CREATE INDEX escalations_case ON escalations (case_id);

-- Runs waiting for a case's next acknowledgement (`wait_for_ack`), by case.
CREATE TABLE ack_waits (
    case_id TEXT   NOT NULL,
    run_id  TEXT   NOT NULL,
    step    BIGINT NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE INDEX ack_waits_case ON ack_waits (case_id);

INSERT INTO counters (name, value) VALUES ('escalation', 0);

-- Delivery: a process claims rows before sending them, so two processes never send one
-- message at once; a message that keeps failing is parked (failed_at) and surfaced.
ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE outbox ADD COLUMN claimed_until BIGINT;
ALTER TABLE outbox ADD COLUMN failed_at BIGINT;
