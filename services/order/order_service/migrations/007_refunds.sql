-- A buyer's refund of an order's unused stamps (POST /v1/orders/{id}/refund). The order asks the
-- stamping service to void ``requested`` (it decides, under the locks POST /v1/stampings takes);
-- its answer fills ``voided`` (out of the quota, VOID in the registry) and ``kept`` (in use), and
-- the amount of the voided ones goes to the payment service, which pays it out:
-- REQUESTED -> PAYING -> PAID_OUT, or REQUESTED -> NOTHING when every serial was kept.
CREATE TABLE refunds (
    refund_id       uuid PRIMARY KEY,
    order_id        uuid NOT NULL REFERENCES orders (id),
    requested       text[] NOT NULL,
    voided          text[] NOT NULL DEFAULT '{}',
    kept            text[] NOT NULL DEFAULT '{}',
    amount          bigint NOT NULL DEFAULT 0 CHECK (amount >= 0),
    status          text NOT NULL DEFAULT 'REQUESTED'
                    CHECK (status IN ('REQUESTED', 'PAYING', 'PAID_OUT', 'NOTHING')),
    payout_reference text,
    requested_at    timestamptz NOT NULL DEFAULT now(),
    decided_at      timestamptz,
    paid_out_at     timestamptz
);
CREATE INDEX refunds_order ON refunds (order_id, requested_at);

-- When a serial was stamped, as far as the order service knows (stamping.document_stamped): a
-- refund does not ask for serials known to be used.
ALTER TABLE order_serials ADD COLUMN stamped_at timestamptz;
