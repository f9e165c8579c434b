-- Receipts of paid orders (GET /v1/orders/{id}/receipt). A number is taken from its year's
-- counter row in the same transaction that records the payment on the order (order.on_payment_captured),
-- so a number exists exactly for the orders that became PAID and none is skipped: a rolled-back
-- payment rolls its number back too. Year: the payment's year in Asia/Jakarta time.
-- receipt_no = 'EM-' || year || '-' || seq padded to 7 digits (order_service.domain.receipt).
CREATE TABLE receipt_counters (
    year    int PRIMARY KEY,
    last_no bigint NOT NULL CHECK (last_no >= 0)
);

CREATE TABLE receipts (
    order_id           uuid PRIMARY KEY REFERENCES orders (id),
    year               int NOT NULL,
    seq                bigint NOT NULL CHECK (seq > 0),
    receipt_no         text NOT NULL UNIQUE,
    paid_at            timestamptz NOT NULL,
    method             text NOT NULL,
    bank               text,
    payment_request_id text,
    reference_no       text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (year, seq)
);

-- A receipt never changes once given (nor disappears while its order exists).
CREATE FUNCTION receipts_are_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'receipt % of order % is final', OLD.receipt_no, OLD.order_id;
END $$;
CREATE TRIGGER receipts_final BEFORE UPDATE OR DELETE ON receipts
    FOR EACH ROW EXECUTE FUNCTION receipts_are_final();

-- Backfill: every order already paid (a PAID transition in its history) gets its number, in the
-- order it was paid within its Jakarta year. The bank's reference was not kept before this
-- migration: those receipts show the virtual account's bank only.
WITH paid AS (
    SELECT o.id, o.bank, h.at AS paid_at,
           extract(year FROM h.at AT TIME ZONE 'Asia/Jakarta')::int AS year
    FROM orders o
    JOIN LATERAL (SELECT min(at) AS at FROM order_history
                  WHERE order_id = o.id AND new_status = 'PAID') h ON h.at IS NOT NULL
), numbered AS (
    SELECT id, bank, paid_at, year, row_number() OVER (PARTITION BY year ORDER BY paid_at, id) AS seq
    FROM paid
)
INSERT INTO receipts (order_id, year, seq, receipt_no, paid_at, method, bank)
SELECT id, year, seq, 'EM-' || year || '-' || lpad(seq::text, greatest(7, length(seq::text)), '0'), paid_at, 'va', bank
FROM numbered;

INSERT INTO receipt_counters (year, last_no)
SELECT year, max(seq) FROM receipts GROUP BY year;
