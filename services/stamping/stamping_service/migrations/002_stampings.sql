-- Stamping jobs: one row per accepted upload. The serial is RESERVED in the same transaction the
-- row is inserted in (with stamping.job_queued.v1 in the outbox); a job that fails for good
-- releases it, so at most one live (not FAILED) job holds a serial.
CREATE TABLE stampings (
    id              uuid PRIMARY KEY,
    account_id      uuid NOT NULL,
    sn              text NOT NULL REFERENCES stamps (sn),
    status          text NOT NULL DEFAULT 'QUEUED' CHECK (status IN ('QUEUED', 'STAMPING', 'DONE', 'FAILED')),
    page            int NOT NULL,
    x               real NOT NULL,
    y               real NOT NULL,
    size            real NOT NULL,
    reason          text NOT NULL,
    document        bytea NOT NULL,
    document_sha256 text NOT NULL,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX stampings_live_sn ON stampings (sn) WHERE status <> 'FAILED';
CREATE INDEX stampings_account ON stampings (account_id, created_at);
