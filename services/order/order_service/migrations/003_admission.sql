-- Global admission at POST /v1/orders measures the work waiting on the payment service: orders
-- with no bill decided yet (billed_at NULL), and how many got one recently (billed_at in a window).
ALTER TABLE orders ADD COLUMN billed_at timestamptz;
UPDATE orders SET billed_at = updated_at WHERE virtual_account_no IS NOT NULL OR status <> 'AWAITING_PAYMENT';
CREATE INDEX orders_unbilled ON orders (created_at) WHERE billed_at IS NULL;
CREATE INDEX orders_billed_at ON orders (billed_at) WHERE billed_at IS NOT NULL;
