-- QRIS bills (SNAP QR MPM): a bill with method 'qris' belongs to an acquirer (bank = acquirer_id),
-- has no virtual account (virtual_account_no = ''), and carries our partnerReferenceNo, stored with
-- the bill BEFORE the worker asks the acquirer for the QR (one QR per bill whatever the retries).
ALTER TABLE bills ADD COLUMN method text NOT NULL DEFAULT 'va' CHECK (method IN ('va', 'qris'));
ALTER TABLE bills ADD COLUMN partner_reference_no text UNIQUE;
ALTER TABLE bills ADD COLUMN qr_reference_no text;
ALTER TABLE bills ADD COLUMN qr_content text;
ALTER TABLE bills ADD COLUMN qr_generated_at timestamptz;
ALTER TABLE bills ADD COLUMN qr_attempts int NOT NULL DEFAULT 0;
ALTER TABLE bills ADD COLUMN qr_next_attempt_at timestamptz;
-- Lost notifications: a pending QR is queried (qr-mpm-query) with backoff until it is final.
ALTER TABLE bills ADD COLUMN qr_queries int NOT NULL DEFAULT 0;
ALTER TABLE bills ADD COLUMN qr_next_query_at timestamptz;
CREATE INDEX bills_qr_to_query ON bills (qr_next_query_at) WHERE method = 'qris' AND qr_content IS NOT NULL
    AND status = 'OPEN';
CREATE INDEX bills_qr_to_generate ON bills (created_at) WHERE method = 'qris' AND qr_content IS NULL AND status = 'OPEN';

-- Every QRIS notification the acquirer sent (qr-mpm-notify), once per (acquirer, its reference,
-- status): a repeated notify is recognised and changes nothing.
CREATE TABLE qris_notifications (
    acquirer             text NOT NULL,
    reference_no         text NOT NULL,
    status               text NOT NULL,
    partner_reference_no text NOT NULL,
    bill_id              uuid REFERENCES bills,
    amount               bigint,
    rrn                  text,
    body                 jsonb NOT NULL,
    received_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (acquirer, reference_no, status)
);
