-- Virtual-account bills: one per order, OPEN -> PAID | EXPIRED (EXPIRED -> PAID by a late advice).
CREATE TABLE bills (
    bill_id            uuid PRIMARY KEY,
    order_id           uuid NOT NULL UNIQUE,
    bank               text NOT NULL,
    customer_no        text NOT NULL UNIQUE,
    virtual_account_no text NOT NULL,
    amount             bigint NOT NULL CHECK (amount > 0),
    quantity           int NOT NULL,
    status             text NOT NULL DEFAULT 'OPEN' CHECK (status IN ('OPEN', 'PAID', 'EXPIRED')),
    created_at         timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz NOT NULL,
    paid_at            timestamptz,
    expired_at         timestamptz
);
CREATE INDEX bills_open_by_expiry ON bills (expires_at) WHERE status = 'OPEN';

-- Captured payments: at most one per bill and one per (bank, paymentRequestId).
CREATE TABLE payments (
    payment_id         uuid PRIMARY KEY,
    bill_id            uuid NOT NULL UNIQUE REFERENCES bills,
    order_id           uuid NOT NULL,
    client_id          text NOT NULL,
    payment_request_id text NOT NULL,
    amount             bigint NOT NULL,
    trx_id             text,
    reference_no       text,
    trx_time           timestamptz,
    late               boolean NOT NULL DEFAULT false,
    captured_at        timestamptz NOT NULL,
    UNIQUE (client_id, payment_request_id)
);
CREATE INDEX payments_by_bank_time ON payments (client_id, (coalesce(trx_time, captured_at)));

-- SNAP payment notifications by X-EXTERNAL-ID (unique per bank per Jakarta day) with the answer
-- given, so a replay gets the first outcome.
CREATE TABLE snap_requests (
    client_id          text NOT NULL,
    external_id        text NOT NULL,
    request_date       date NOT NULL,
    payment_request_id text NOT NULL,
    request_hash       text NOT NULL,
    response_code      text,
    response           jsonb,
    received_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_id, external_id, request_date)
);

-- SNAP B2B access tokens, stored as SHA-256 hashes so that every api process accepts them.
CREATE TABLE snap_tokens (
    token_hash text PRIMARY KEY,
    client_id  text NOT NULL,
    expires_at timestamptz NOT NULL,
    issued_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX snap_tokens_by_expiry ON snap_tokens (expires_at);

-- Refunds: one per order, and one per captured payment.
CREATE TABLE refunds (
    refund_id   uuid PRIMARY KEY,
    order_id    uuid NOT NULL UNIQUE,
    payment_id  uuid UNIQUE REFERENCES payments,
    amount      bigint NOT NULL,
    reason      text NOT NULL,
    refunded_at timestamptz NOT NULL
);
