-- A stamp its order gave back (order.serials_void_requested) leaves the quota for good: UNUSED ->
-- VOID. A serial the request names that this projection has not received yet is recorded VOID at
-- once (a tombstone, token ''), so that its late minting.serials_issued copy never credits it.
ALTER TABLE stamps DROP CONSTRAINT stamps_status_check;
ALTER TABLE stamps ADD CONSTRAINT stamps_status_check CHECK (status IN ('UNUSED', 'RESERVED', 'USED', 'VOID'));
ALTER TABLE stamps ADD COLUMN voided_at timestamptz;
