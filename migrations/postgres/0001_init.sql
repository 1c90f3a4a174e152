-- Wavelet's store on PostgreSQL. Times are milliseconds since the Unix epoch (UTC).

-- Every inbound event, once, by its platform id.
CREATE TABLE inbox (
    platform    TEXT   NOT NULL,
    event_id    TEXT   NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (platform, event_id)
);

-- Every script version a run has used, by content hash.
CREATE TABLE scripts (
    hash       TEXT PRIMARY KEY,
    name       TEXT   NOT NULL,
    source     TEXT   NOT NULL,
    first_seen BIGINT NOT NULL
);

CREATE TABLE runs (
    id          TEXT PRIMARY KEY,
    workflow    TEXT   NOT NULL,
    script_hash TEXT   NOT NULL REFERENCES scripts (hash),
    status      TEXT   NOT NULL,
    starter     TEXT   NOT NULL,
    group_id    TEXT   NOT NULL,
    room        TEXT   NOT NULL,
    history     TEXT   NOT NULL,
    wait        TEXT,
    wait_person TEXT,
    wait_room   TEXT,
    wait_seq    BIGINT,
    error       TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX runs_waiting ON runs (wait_person, wait_room, wait_seq) WHERE wait_person IS NOT NULL;

CREATE TABLE cases (
    id        TEXT PRIMARY KEY,
    run_id    TEXT   NOT NULL REFERENCES runs (id),
    group_id  TEXT   NOT NULL,
    subject   TEXT   NOT NULL,
    category  TEXT   NOT NULL,
    risk      TEXT   NOT NULL,
    status    TEXT   NOT NULL,
    opened_at BIGINT NOT NULL,
    closed_at BIGINT
);

CREATE TABLE timers (
    run_id TEXT   NOT NULL REFERENCES runs (id),
    step   BIGINT NOT NULL,
    due_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE INDEX timers_due ON timers (due_at);

CREATE TABLE outbox (
    id              BIGSERIAL PRIMARY KEY,
    idempotency_key TEXT   NOT NULL UNIQUE,
    run_id          TEXT,
    room            TEXT   NOT NULL,
    person          TEXT,
    body            TEXT   NOT NULL,
    created_at      BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    delivered_at    BIGINT
);
CREATE INDEX outbox_pending ON outbox (next_attempt_at) WHERE delivered_at IS NULL;

CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('run', 0), ('case', 0), ('wait', 0);

-- The ledger: an append-only hash chain. Content sits beside it in ledger_content, so a
-- lawful erasure removes content and leaves the hash.
CREATE TABLE ledger (
    seq          BIGINT PRIMARY KEY,
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
CREATE INDEX ledger_case ON ledger (case_id) WHERE case_id IS NOT NULL;
CREATE INDEX ledger_run ON ledger (run_id) WHERE run_id IS NOT NULL;

CREATE TABLE ledger_content (
    seq            BIGINT PRIMARY KEY REFERENCES ledger (seq),
    content        TEXT,
    erased_at      BIGINT,
    erasure_reason TEXT
);

-- Where the next entry attaches. Appends lock this row, so the database (not a process)
-- serialises them.
CREATE TABLE ledger_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT   NOT NULL
);
INSERT INTO ledger_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- The database refuses to change the chain. ENABLE ALWAYS: the triggers fire even with
-- session_replication_role = replica.
CREATE FUNCTION wavelet_ledger_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the Wavelet ledger is append-only: % on % is refused', TG_OP, TG_TABLE_NAME;
END;
$$;

CREATE TRIGGER ledger_no_update BEFORE UPDATE OR DELETE ON ledger
    FOR EACH ROW EXECUTE FUNCTION wavelet_ledger_is_append_only();
CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON ledger
    FOR EACH STATEMENT EXECUTE FUNCTION wavelet_ledger_is_append_only();
ALTER TABLE ledger ENABLE ALWAYS TRIGGER ledger_no_update;
ALTER TABLE ledger ENABLE ALWAYS TRIGGER ledger_no_truncate;

-- Content may only be erased (set to NULL with a time and reason), never rewritten.
CREATE FUNCTION wavelet_ledger_content_erase_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.content IS NULL AND NEW.erased_at IS NOT NULL
       AND NEW.erasure_reason IS NOT NULL AND NEW.seq = OLD.seq THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'ledger content can only be erased, not changed: % is refused', TG_OP;
END;
$$;

CREATE TRIGGER ledger_content_erase_only BEFORE UPDATE OR DELETE ON ledger_content
    FOR EACH ROW EXECUTE FUNCTION wavelet_ledger_content_erase_only();
CREATE TRIGGER ledger_content_no_truncate BEFORE TRUNCATE ON ledger_content
    FOR EACH STATEMENT EXECUTE FUNCTION wavelet_ledger_is_append_only();
ALTER TABLE ledger_content ENABLE ALWAYS TRIGGER ledger_content_erase_only;
ALTER TABLE ledger_content ENABLE ALWAYS TRIGGER ledger_content_no_truncate;
