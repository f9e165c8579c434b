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
-- Expiry: the QR is cancelled and queried once more; when the acquirer cannot be reached the
-- expiry is tried again at qr_expiry_retry_at.
ALTER TABLE bills ADD COLUMN qr_expiry_retry_at timestamptz;
CREATE INDEX bills_qr_to_query ON bills (qr_next_query_at) WHERE method = 'qris' AND qr_content IS NOT NULL
    AND status = 'OPEN';
CREATE INDEX bills_qr_to_generate ON bills (created_at) WHERE method = 'qris' AND qr_content IS NULL AND status = 'OPEN';

-- Refunds of QRIS payments through qr-mpm-refund: one per recorded refund (refunds.refund_id),
-- partnerRefundNo fixed when recorded so every retry (after a timeout, say) is the same refund to
-- the acquirer; PENDING until it answers 2007800 (DONE, its refundNo), retried with backoff.
CREATE TABLE qris_refunds (
    partner_refund_no    text PRIMARY KEY,
    refund_id            uuid NOT NULL UNIQUE,
    bill_id              uuid NOT NULL REFERENCES bills,
    acquirer             text NOT NULL,
    partner_reference_no text NOT NULL,
    reference_no         text NOT NULL,
    amount               bigint NOT NULL CHECK (amount > 0),
    status               text NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'DONE')),
    refund_no            text,
    attempts             int NOT NULL DEFAULT 0,
    last_error           text,
    next_attempt_at      timestamptz NOT NULL DEFAULT now(),
    recorded_at          timestamptz NOT NULL,
    refunded_at          timestamptz
);
CREATE INDEX qris_refunds_due ON qris_refunds (next_attempt_at) WHERE status = 'PENDING';

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
