-- QRIS orders: how the buyer pays ('va' or 'qris') and, for QRIS, the QR as the acquirer made it
-- (payment.bill_issued.v1 with method 'qris'); virtual_account_no is '' for a QRIS bill.
ALTER TABLE orders ADD COLUMN payment_method text NOT NULL DEFAULT 'va' CHECK (payment_method IN ('va', 'qris'));
ALTER TABLE orders ADD COLUMN qr_content text;
