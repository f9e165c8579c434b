-- Partial refunds: a buyer's refund of a FULFILLED order's unused stamps (order.partial_refund_requested),
-- one row per refund of the order service (its refund_id), several per order; the sum per order never
-- exceeds the captured payment. Recorded PAYING, then paid out through the bank adapter by the
-- worker's payout job (PAID_OUT, payment.partial_refund_paid_out). A payout that fails is retried
-- with backoff (attempts, last_error, next_attempt_at); the bank deduplicates on refund_id.
CREATE TABLE partial_refunds (
    refund_id        uuid PRIMARY KEY,
    order_id         uuid NOT NULL,
    payment_id       uuid NOT NULL REFERENCES payments,
    bank             text NOT NULL,
    serials          text[] NOT NULL,
    amount           bigint NOT NULL CHECK (amount > 0),
    status           text NOT NULL DEFAULT 'PAYING' CHECK (status IN ('PAYING', 'PAID_OUT')),
    payout_reference text,
    attempts         int NOT NULL DEFAULT 0,
    last_error       text,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    recorded_at      timestamptz NOT NULL,
    paid_out_at      timestamptz,
    CHECK (status <> 'PAID_OUT' OR payout_reference IS NOT NULL)
);
CREATE INDEX partial_refunds_order ON partial_refunds (order_id);
CREATE INDEX partial_refunds_due ON partial_refunds (next_attempt_at) WHERE status = 'PAYING';
