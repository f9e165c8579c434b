-- The buyer behind a bill (from order.placed): payment.captured carries it with the quantity, so
-- that minting issues the serials of a capture straight from it (no order.paid hop). NULL for
-- bills issued before this migration: their captures go through order.paid as before.
ALTER TABLE bills ADD COLUMN account_id uuid, ADD COLUMN partner_id text;
