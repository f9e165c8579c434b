-- A paid order whose serials cannot be issued yet (too little free stock) WAITS instead of failing
-- or parking: the worker's job issues them, oldest first, when stock is there, or fails them
-- (minting.failed: refund) once refund_at has passed. WAITING -> ISSUED | FAILED, nothing else.
ALTER TABLE issuances DROP CONSTRAINT issuances_status_check;
ALTER TABLE issuances ADD CONSTRAINT issuances_status_check CHECK (status IN ('WAITING', 'ISSUED', 'FAILED'));
ALTER TABLE issuances ADD COLUMN waiting_since timestamptz, ADD COLUMN refund_at timestamptz,
                      ADD COLUMN decided_at timestamptz;
ALTER TABLE issuances ADD CONSTRAINT issuances_waiting_deadline
    CHECK (status <> 'WAITING' OR (waiting_since IS NOT NULL AND refund_at IS NOT NULL));
CREATE INDEX issuances_waiting ON issuances (waiting_since, order_id) WHERE status = 'WAITING';
