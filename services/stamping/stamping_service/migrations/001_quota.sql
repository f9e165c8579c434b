-- The quota projection: the stamps each account owns, learnt from minting.serials_issued.v1.
-- UNUSED (owned, free) -> RESERVED (held by a stamping job in progress) -> USED (stamped); a job
-- that fails for good puts its stamp back to UNUSED. Rows arrive once per serial (redelivered
-- issuances are no-ops: ON CONFLICT DO NOTHING on the primary key).
CREATE TABLE stamps (
    sn          text PRIMARY KEY,
    account_id  uuid NOT NULL,
    order_id    uuid NOT NULL,
    token       text NOT NULL,
    status      text NOT NULL DEFAULT 'UNUSED' CHECK (status IN ('UNUSED', 'RESERVED', 'USED')),
    received_at timestamptz NOT NULL DEFAULT now(),
    used_at     timestamptz
);
-- GET /v1/quota counts by status, and reservation picks an account's next UNUSED stamp.
CREATE INDEX stamps_account_status ON stamps (account_id, status);
