-- What a PAID order waits for, beside its status (the public status list is fixed):
-- awaiting_stock_since / stock_refund_at: minting waits for stock for it (minting.stock_awaited);
-- giving_back: serials it could not accept, asked to be voided (order.serials_void_requested)
-- until stamping answers (stamping.serials_voided).
ALTER TABLE orders ADD COLUMN awaiting_stock_since timestamptz, ADD COLUMN stock_refund_at timestamptz,
                   ADD COLUMN giving_back text[] NOT NULL DEFAULT '{}';
-- Order history may record a note that changes no status (PAID -> PAID: awaiting stock, giving back).
