-- Documents move out of the job rows behind the DocumentStore interface (adapters/documents.py):
-- one row per (stamping, kind). The original is kept until its job ends; the stamped document
-- until expires_at (the retention period), after which GET .../document answers 410.
CREATE TABLE documents (
    stamping_id uuid NOT NULL REFERENCES stampings (id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('original', 'stamped')),
    data        bytea NOT NULL,
    sha256      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    PRIMARY KEY (stamping_id, kind)
);
-- PDFs are compressed already: store them out of line without trying to compress them again.
ALTER TABLE documents ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE INDEX documents_expiry ON documents (expires_at) WHERE expires_at IS NOT NULL;

INSERT INTO documents (stamping_id, kind, data, sha256, created_at)
SELECT id, 'original', document, document_sha256, created_at FROM stampings WHERE status IN ('QUEUED', 'STAMPING');
ALTER TABLE stampings DROP COLUMN document;
ALTER TABLE stampings ADD COLUMN password text;
ALTER TABLE stampings ADD COLUMN stamped_sha256 text;
ALTER TABLE stampings ADD COLUMN stamped_at timestamptz;
ALTER TABLE stampings ADD COLUMN attempts int NOT NULL DEFAULT 0;
-- The sweep that re-queues jobs whose message was lost looks for old unfinished jobs.
CREATE INDEX stampings_unfinished ON stampings (updated_at) WHERE status IN ('QUEUED', 'STAMPING');
